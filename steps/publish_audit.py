"""PublishAudit — always: the run and its verdict become a record in the audit store (append-only, chained).

Inputs (processing): ``run/`` (flops_meter.json or the training job's output.tar.gz), ``compliance/``
(compliance.json), optionally
``dataset/`` (its files are hashed). Output: ``audit/audit.json`` with ``record_uri``, ``record_sha256`` and
``flagged_item`` (the id of the approval item when the verdict needs a decision, else empty), ``model_card``
(the model package model card, JSON text, that RegisterModel attaches), and the sealed verdict the registration
gate reads (``status``, ``crossed``, ``threshold_rule``, ``figures``, ``metadata``): recomputed at publication,
atomically with the append, so two jobs of one lineage classified at once cannot both pass.
"""

from __future__ import annotations

import json

from meter import digests
from meter.audit.flagged import flag
from meter.audit.store import open_store
from meter.policy.governance import publish, verdict_metadata
from steps.common import one_file, read_run_record, run_step
from steps.contract import PUBLISH
from steps.model_card import model_card


def dataset_identity(uri: str) -> dict:
    """The dataset's URI with the size and SHA-256 of the dataset input's files, when the step was given them: the
    scheme of meter.digests, so one file hashes as ``audit publish --dataset-file`` and ``sha256sum`` hash it."""
    directory = PUBLISH.input("dataset")
    return {"uri": uri or None, **(digests.dataset_identity(directory) if directory.is_dir() else {})}


def main() -> int:
    args = PUBLISH.parse()  # the arguments are declared in steps/contract.py

    run = read_run_record(PUBLISH.input("run"))
    compliance = json.loads(
        one_file(PUBLISH.input("compliance"), ("compliance.json", "*.json"), "compliance.json").read_text()
    )
    store = open_store(args.store_uri or None)
    # the code's identity: the bundle's content address (the factory passes it), the image, a commit when given
    code = {
        "git_commit": args.git_commit or None,
        "container_image": args.container_image or None,
        "bundle_sha256": args.bundle_sha256 or None,
    }
    published = publish(
        store, run, compliance, revision=args.revision or None, dataset=dataset_identity(args.dataset_uri), code=code
    )
    record = published.record
    # a verdict that needs a person's decision becomes a flagged item for the approval workflow
    item = flag(
        store,
        record,
        published.uri,
        model_uri=args.model_uri,
        report_uri=args.report_uri,
        model_package_group=args.model_package_group,
        inference_image=args.inference_image,
    )
    doc = {
        "record_uri": published.uri,
        "record_sha256": record["record_sha256"],
        "created": published.created,
        "lineage": record["lineage"]["id"],
        "sequence": record["sequence"],
        "status": record["verdict"]["status"],
        # the sealed verdict, which the registration gate reads: recomputed at publication when the lineage's
        # total had moved since ClassifyCompliance (another job of the lineage published in between)
        "crossed": record["verdict"]["crossed"],
        "threshold_rule": record["verdict"]["threshold_rule"],
        "figures": record["verdict"]["figures"],
        "metadata": verdict_metadata(record["verdict"]),
        "flagged_item": item["id"] if item else "",
        "model_card": model_card(record, args.model_uri or None),  # attached to the registered model package
    }
    path = PUBLISH.write_report(doc)  # validated against steps/schemas/audit.v1.json first
    print(f"publish_audit: {'published' if published.created else 'already published'} {published.uri}; wrote {path}")
    return 0


if __name__ == "__main__":
    run_step(main)
