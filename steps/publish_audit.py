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

import argparse
import hashlib
import json

from meter.audit.flagged import flag, model_card
from meter.audit.stores import open_store
from meter.policy.governance import publish, verdict_metadata
from steps.common import one_file, processing_input, processing_output, read_run_record, run_step, write_json


def dataset_identity(uri: str) -> dict:
    """Size and a SHA-256 over the dataset input's files (name and content), when the step was given them."""
    directory = processing_input("dataset")
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []
    identity = {"uri": uri or None}
    if files:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        identity.update(size_bytes=sum(p.stat().st_size for p in files), sha256=digest.hexdigest())
    return identity


def main() -> int:
    p = argparse.ArgumentParser(prog="publish_audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--store-uri", default="", help="file://DIR or s3://BUCKET/PREFIX?table=NAME")
    p.add_argument("--dataset-uri", default="")
    p.add_argument("--revision", default="")
    p.add_argument("--git-commit", default="")
    p.add_argument("--container-image", default="")
    p.add_argument("--model-uri", default="", help="the trained model artifact (named by a flagged item)")
    p.add_argument("--report-uri", default="", help="where the compliance report is (named by a flagged item)")
    p.add_argument("--model-package-group", default="", help="where an approval registers the model")
    p.add_argument("--inference-image", default="", help="the serving image an approval registers the model with")
    args = p.parse_args()

    run = read_run_record(processing_input("run"))
    compliance = json.loads(
        one_file(processing_input("compliance"), ("compliance.json", "*.json"), "compliance.json").read_text()
    )
    store = open_store(args.store_uri or None)
    code = {"git_commit": args.git_commit or None, "container_image": args.container_image or None}
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
    path = write_json(processing_output("audit") / "audit.json", doc)
    print(f"publish_audit: {'published' if published.created else 'already published'} {published.uri}; wrote {path}")
    return 0


if __name__ == "__main__":
    run_step(main)
