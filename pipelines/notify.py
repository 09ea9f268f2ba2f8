"""The approval workflow's Lambda function: EventBridge events in, flagged items and approvers' messages out.

    step status change   RegistrationBlocked failed: the run's flagged item (written by PublishAudit; built from the
                         record if it is missing) and a message with the verdict, the figures, the links and the
                         commands that decide on it. PlanCrossesThreshold failed: a message (nothing was trained).
    model package state  a package of the governed group was registered or changed status: a message with its
                         verdict; for an ``approaching`` package waiting for approval, the commands that decide.
    {"flops_meter": "verify"}  the daily schedule: ``audit verify`` of the whole store; its result as the metric
                         FlopsMeter/AuditVerifyFailed (0 or 1), and a message to the approvers when it fails.

Environment: AUDIT_STORE_URI (the audit store, as `--store` takes it), TOPIC_ARN (the approvers' topic).
Standard library, boto3, ``meter`` and ``pipelines`` (pure Python at import): what the Lambda runtime has plus
the function's asset (both packages' sources).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from meter.audit.flagged import FLAGGED_STATUSES, flag, item_id
from meter.policy.thresholds import rule_text
from pipelines.governed import PLAN_CROSSES, REGISTRATION_BLOCKED

STEP_STATUS = "SageMaker Model Building Pipeline Execution Step Status Change"
PACKAGE_STATE = "SageMaker Model Package State Change"
VERIFY_EVENT = {"flops_meter": "verify"}
METRIC_NAMESPACE, METRIC = "FlopsMeter", "AuditVerifyFailed"
_RECORD = re.compile(r"Audit record: (\S+) \(sha256 ([0-9a-f]{64})\)")  # in RegistrationBlocked's message
SUBJECT_LIMIT = 100  # SNS e-mail subjects


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    import boto3

    from meter.audit.aws import boto_config
    from meter.audit.store import open_store

    store_uri, topic = os.environ["AUDIT_STORE_URI"], os.environ["TOPIC_ARN"]
    store = open_store(store_uri)
    detail, kind = event.get("detail") or {}, event.get("detail-type")
    if event == VERIFY_EVENT:
        return scheduled_verify(store, store_uri, topic)
    if kind == STEP_STATUS:
        message = on_step(detail, store, store_uri)
    elif kind == PACKAGE_STATE:
        sagemaker = boto3.client("sagemaker", config=boto_config())
        message = on_package(detail, sagemaker, store, store_uri)
    else:
        return {"published": False, "reason": f"not an event of this workflow: {kind!r}"}
    if message is None:
        return {"published": False, "reason": "nothing for the approvers"}
    subject, body, item = message
    sns = boto3.client("sns", config=boto_config())
    sns.publish(TopicArn=topic, Subject=subject[:SUBJECT_LIMIT], Message=body)
    return {"published": True, "subject": subject, "item": item}


def scheduled_verify(store, store_uri: str, topic: str) -> dict[str, Any]:
    """The daily check: everything `audit verify` checks; the metric is what the stack's alarm watches (no
    data, as when this function fails, alarms too)."""
    import boto3

    from meter.audit.aws import boto_config

    if not store.entries() and not store.stored_records():  # a new stack: nothing published yet (S3 locks records,
        return {"verified": True, "line": "nothing published yet"}  # so an emptied store cannot look like this)
    report = store.verify()
    boto3.client("cloudwatch", config=boto_config()).put_metric_data(
        Namespace=METRIC_NAMESPACE,
        MetricData=[{"MetricName": METRIC, "Value": 0 if report.ok else 1, "Unit": "Count"}],
    )
    if not report.ok:
        body = "\n".join([
            "The daily audit verification failed: the audit store does not hold what was published.",
            report.line(),
            "",
            f"Check it yourself: flops-meter audit verify --store '{store_uri}'",
        ])  # fmt: skip
        boto3.client("sns", config=boto_config()).publish(
            TopicArn=topic, Subject="flops-meter: audit verification FAILED", Message=body
        )
    return {"verified": report.ok, "line": report.line()}


def on_step(detail: dict[str, Any], store, store_uri: str) -> tuple[str, str, str | None] | None:
    step, execution = detail.get("stepName"), detail.get("pipelineExecutionArn", "?")
    reason = detail.get("failureReason") or ""
    if detail.get("currentStepStatus") != "Failed":
        return None
    if step == PLAN_CROSSES:
        body = "\n".join([
            "A fine-tuning run was stopped by the pre-flight gate, before any training: its planned compute",
            "crosses the provider threshold. Nothing was trained, nothing needs a decision.",
            "",
            reason,
            "",
            f"Execution: {execution}",
        ])  # fmt: skip
        return "flops-meter: fine-tuning plan stopped before training", body, None
    if step != REGISTRATION_BLOCKED:
        return None
    match = _RECORD.search(reason)
    if not match:
        raise ValueError(f"{REGISTRATION_BLOCKED} failure names no audit record: {reason[:200]!r}")
    record_uri, sha = match.groups()
    item = store.get_document("flagged", item_id(sha))
    if item is None:  # PublishAudit of an older version wrote none: build it from the record
        item = flag(store, store.get(sha), record_uri)
    lines = [
        "A fine-tuning run crossed the compute threshold and its registration was blocked.",
        "",
        *_summary(item),
        f"Execution: {execution}",
        "",
        *_commands(item, store_uri),
    ]
    return f"flops-meter: registration blocked, {item['verdict']} ({item['id']})", "\n".join(lines), item["id"]


def on_package(detail: dict[str, Any], sagemaker, store, store_uri: str) -> tuple[str, str, str | None] | None:
    arn = detail.get("ModelPackageArn")
    if not arn:
        return None
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    metadata = described.get("CustomerMetadataProperties") or {}
    status = described.get("ModelApprovalStatus") or detail.get("ModelApprovalStatus") or "?"
    verdict = metadata.get("flops_meter:status")
    if verdict is None:
        return None  # not registered by the governed pipeline or an approval
    lines = [f"Model package {arn} is {status}."]
    if metadata.get("flops_meter:decision"):
        lines.append(f"Decision: {metadata['flops_meter:decision']} by {metadata.get('flops_meter:approver', '?')},")
        lines.append(f"  recorded at {metadata.get('flops_meter:decision_uri', '?')}")
    sha = metadata.get("flops_meter:record_sha256", "")
    item = store.get_document("flagged", item_id(sha)) if verdict in FLAGGED_STATUSES and sha else None
    if item is not None:
        lines += ["", *_summary(item)]
        if status == "PendingManualApproval":
            lines += ["", *_commands(item, store_uri)]
        elif not metadata.get("flops_meter:decision"):  # set in the console: no one is on record for it
            lines += ["", "No decision is recorded for this change. Record who decided and why (the package's "
                      "status then follows the recorded decision):", *_commands(item, store_uri)[2:]]  # fmt: skip
    else:
        flops, threshold = metadata.get("flops_meter:cumulative_flops"), metadata.get("flops_meter:threshold_flops")
        lines.append(f"Verdict: {verdict} (lineage compute {_flops(flops)} of threshold {_flops(threshold)} FLOP).")
    subject = f"flops-meter: model package {described.get('ModelPackageVersion', '')} {status} ({verdict})"
    return subject, "\n".join(lines), item["id"] if item else None


def _flops(text: str | None) -> str:
    try:
        return f"{float(text):.2e}"
    except (TypeError, ValueError):
        return "?"


def _summary(item: dict[str, Any]) -> list[str]:
    figures = item.get("figures") or {}
    return [
        f"Model: fine-tuned from {item['base_model']} (lineage {item['lineage']}, run {item['run_id']})",
        f"Verdict: {item['verdict']}: lineage compute {figures.get('cumulative', '?')}, threshold "
        f"{figures.get('threshold', '?')} ({rule_text(item.get('threshold_rule'))}); "
        f"this run {figures.get('this_run', '?')}",
        f"Audit record: {item['record_uri']} (sha256 {item['record_sha256']})",
        f"Report: {item.get('report_uri') or '-'}",
        f"Model artifact: {item.get('model_uri') or '-'}",
    ]


def _commands(item: dict[str, Any], store_uri: str) -> list[str]:
    store = f"--store '{store_uri}'"
    accept = " --accept-provider-obligations" if item["blocked"] else ""
    return [
        "To decide (pip install 'flops-meter[pipeline]'):",
        f"  flops-meter approvals show {item['id']} {store}",
        f"  flops-meter approvals approve {item['id']} --approver NAME --reason TEXT{accept} {store}",
        f"  flops-meter approvals reject {item['id']} --approver NAME --reason TEXT {store}",
    ]


if __name__ == "__main__":  # local try-out: python -m pipelines.notify event.json
    import sys
    from pathlib import Path

    print(json.dumps(handler(json.loads(Path(sys.argv[1]).read_text())), indent=2))
