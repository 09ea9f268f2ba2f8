"""ClassifyCompliance — the run's verdict, counted with its lineage's recorded compute.

Inputs (processing): ``run/`` (flops_meter.json, or the training job's output.tar.gz holding it).
Output: ``compliance/compliance.json``
— a PropertyFile with at least ``crossed``, ``status``, ``regulatory_flops``, ``threshold_flops``.
"""

from __future__ import annotations

import argparse

from meter.policy.governance import compliance_document, run_verdict
from meter.policy.original import resolve_original
from steps.common import flag, processing_input, processing_output, read_run_record, run_step, write_json


def main() -> int:
    p = argparse.ArgumentParser(prog="classify_compliance", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-model-id", default="")
    p.add_argument("--pretrain-flops", default="")
    p.add_argument("--original-systemic-risk", default="false")
    p.add_argument("--lineage", default="")
    p.add_argument("--store-uri", default="")
    p.add_argument("--approaching-fraction", type=float, default=0.8)
    args = p.parse_args()

    run = read_run_record(processing_input("run"))
    base = args.base_model_id or (run.get("model") or {}).get("name") or "unknown"
    lineage = args.lineage or base
    store = None
    if args.store_uri:
        from meter.audit.stores import open_store

        store = open_store(args.store_uri)
    original = resolve_original(
        base, args.pretrain_flops, systemic_risk=flag(args.original_systemic_risk) or None, label="PretrainFlops"
    )
    verdict = run_verdict(run, original, lineage=lineage, store=store, approaching_fraction=args.approaching_fraction)
    doc = compliance_document(verdict, lineage=lineage, base_model=base, run_id=run.get("run_id"))
    path = write_json(processing_output("compliance") / "compliance.json", doc)
    print(
        f"classify_compliance: {verdict.status} (crossed={verdict.crossed}): lineage {lineage} "
        f"{verdict.figures['cumulative']} vs {verdict.figures['threshold']}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    run_step(main)
