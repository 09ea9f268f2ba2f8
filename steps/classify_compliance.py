"""ClassifyCompliance — the run's verdict, counted with its lineage's recorded compute.

Inputs (processing): ``run/`` (flops_meter.json, or the training job's output.tar.gz holding it).
Output: ``compliance/compliance.json``
— a PropertyFile with at least ``crossed``, ``status``, ``regulatory_flops``, ``threshold_flops``.
"""

from __future__ import annotations

from meter.booleans import parse_bool
from meter.policy.governance import base_and_lineage, compliance_document, run_verdict
from meter.policy.original import resolve_original
from steps.common import read_run_record, run_step
from steps.contract import CLASSIFY


def main() -> int:
    args = CLASSIFY.parse()  # the arguments are declared in steps/contract.py

    run = read_run_record(CLASSIFY.input("run"))
    base, lineage = base_and_lineage(args.base_model_id, args.lineage, run)
    store = None
    if args.store_uri:
        from meter.audit.store import open_store

        store = open_store(args.store_uri)
    original = resolve_original(
        base,
        args.pretrain_flops,
        systemic_risk=parse_bool(args.original_systemic_risk, default=False) or None,
        label="PretrainFlops",
    )
    verdict = run_verdict(run, original, lineage=lineage, store=store, approaching_fraction=args.approaching_fraction)
    doc = compliance_document(verdict, lineage=lineage, base_model=base, run_id=run.get("run_id"))
    path = CLASSIFY.write_report(doc)  # validated against steps/schemas/compliance.v1.json first
    print(
        f"classify_compliance: {verdict.status} (crossed={verdict.crossed}): lineage {lineage} "
        f"{verdict.figures['cumulative']} vs {verdict.figures['threshold']}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    run_step(main)
