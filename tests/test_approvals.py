"""The approval workflow: flagged runs of the local pipeline decided on with `flops-meter approvals`.

Real pipeline runs (tiny model, local stores) produce the flagged items; the decisions go through the CLI; the
registry is the local runner's, and SageMaker's (moto) for the S3 store.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from meter.audit.flagged import decision_hash, flagged_item, item_id
from meter.cli import main

NO_SDK = importlib.util.find_spec("sagemaker") is None
pytestmark = pytest.mark.skipif(NO_SDK, reason="needs the SageMaker SDK (pip install 'flops-meter[pipeline]')")
CROSSING = {"PretrainFlops": "1e9", "AllowPlannedCrossing": "true"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One home: an approaching run (registered, pending) and two blocked runs (crossed, not registered)."""
    pytest.importorskip("transformers")
    from pipelines.local.governed import run_governed, stage_governed

    home = tmp_path_factory.mktemp("approvals")
    definition = stage_governed(home)
    executions = [
        run_governed(home, {"ApproachingFraction": "1e-14"}, definition=definition, quiet=True, echo=lambda _: None),
        run_governed(home, CROSSING, definition=definition, quiet=True, echo=lambda _: None),
        run_governed(home, CROSSING, definition=definition, quiet=True, echo=lambda _: None),
    ]
    assert [e.exit_code for e in executions] == [0, 1, 1]
    ids = [e.states["PublishAudit"].property_files["AuditReport"]["flagged_item"] for e in executions]
    assert all(ids)
    return home, ids, executions


def cli(args: list[str], home: Path, capsys) -> tuple[int, str, str]:
    code = main([*args, "--store", f"file://{home / 'audit'}"])
    out, err = capsys.readouterr()
    return code, out, err


def decide_args(verb: str, item: str, home: Path, *extra: str) -> list[str]:
    return ["approvals", verb, item, "--home", str(home), *extra]


def packages(home: Path) -> list[dict]:
    from pipelines.local import LocalRegistry

    return LocalRegistry(home / "registry.db").packages()


def test_flagged_runs_are_listed_pending(runs, capsys) -> None:
    home, (approaching, blocked, _), _ = runs
    code, out, _ = cli(["approvals", "list", "--json"], home, capsys)
    assert code == 0
    listed = {i["id"]: i for i in json.loads(out)}
    assert set(listed) == set(runs[1])
    assert {i["status"] for i in listed.values()} == {"pending"}
    assert listed[approaching]["verdict"] == "approaching" and listed[approaching]["blocked"] is False
    assert listed[blocked]["verdict"] == "gpai_provider" and listed[blocked]["blocked"] is True
    assert listed[blocked]["model_package_group"] == "flops-meter-models"
    assert listed[blocked]["inference_image"] and listed[blocked]["model_uri"].endswith("model.tar.gz")
    code, out, _ = cli(["approvals", "list"], home, capsys)
    assert code == 0 and blocked in out and "gpai_provider" in out and "decide with" in out
    code, out, _ = cli(["approvals", "show", blocked], home, capsys)
    assert code == 0 and "registration blocked" in out and "compliance.json" in out
    assert "--accept-provider-obligations" in out and f"flops-meter report {blocked}" in out


def test_the_pipeline_attaches_a_model_card_to_what_it_registers(runs) -> None:
    home, _, executions = runs
    [registered] = packages(home)  # the approaching run: the blocked runs were not registered
    card = json.loads(registered["model_card"])
    details = card["additional_information"]["custom_details"]
    record = executions[0].states["PublishAudit"].property_files["AuditReport"]["record_sha256"]
    assert details["flops_meter_status"] == "approaching" and details["flops_meter_record_sha256"] == record
    assert card["model_overview"]["model_artifact"] == [registered["model_data_url"]]
    from sagemaker.core.shapes.model_card_shapes import ModelCardContent

    ModelCardContent.model_validate(card)  # the SDK's own model card shapes accept it


def test_approving_a_blocked_model_needs_the_flag_then_registers_it(runs, capsys, moto_endpoint, monkeypatch) -> None:
    home, (_, blocked, _), executions = runs
    before = packages(home)
    without = decide_args("approve", blocked, home, "--approver", "Ada Lovelace", "--reason", "ok")
    code, _, err = cli(without, home, capsys)
    assert code == 2 and "--accept-provider-obligations" in err and "Art. 53" in err
    assert packages(home) == before and not (home / "audit" / "decisions").exists()  # nothing decided, nothing done

    # the registry cannot be reached (a SageMaker endpoint nobody listens on): the decision is recorded, not lost
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    approve = ["--approver", "Ada Lovelace", "--reason", "provider duties accepted by the board on 2026-11-20"]
    code, _, err = cli(
        decide_args("approve", blocked, home, *approve, "--accept-provider-obligations", "--registry", "sagemaker"),
        home,
        capsys,
    )
    assert code == 2 and "unreachable" in err and "\n" not in err.strip()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    # the same command against the local registry completes it
    code, out, _ = cli(decide_args("approve", blocked, home, *approve, "--accept-provider-obligations"), home, capsys)
    assert code == 0 and "completing the decision" in out and "(Approved)" in out
    [new] = [p for p in packages(home) if p not in before]
    assert new["approval_status"] == "Approved" and new["execution_id"] == "approval"
    model = executions[1].states["TrainWithMeter"].properties["ModelArtifacts.S3ModelArtifacts"]
    assert new["model_data_url"] == model
    decision = json.loads((home / "audit" / "decisions" / f"{blocked}.json").read_text())
    assert decision["approver"] == "Ada Lovelace" and decision["accepted_provider_obligations"] is True
    assert new["metadata"]["flops_meter:decision_sha256"] == decision["decision_sha256"] == decision_hash(decision)
    assert new["metadata"]["flops_meter:decision_uri"].endswith(f"decisions/{blocked}.json")
    assert new["metadata"]["flops_meter:record_sha256"] == decision["record_sha256"]
    assert "provider duties accepted" in new["description"]
    assert json.loads(new["model_card"])["additional_information"]["custom_details"]["flops_meter_crossed"] == "true"

    code, out, _ = cli(["audit", "verify"], home, capsys)
    assert code == 0 and "3 record(s) and 1 decision(s)" in out
    code, out, _ = cli(["approvals", "list", "--status", "approved", "--json"], home, capsys)
    assert [i["id"] for i in json.loads(out)] == [blocked]

    # a second decision on the same item is refused, whatever it says
    for verb in ("approve", "reject"):
        code, _, err = cli(decide_args(verb, blocked, home, "--approver", "Bob", "--reason", "again"), home, capsys)
        assert code == 2 and "already approved by Ada Lovelace" in err
    assert len(packages(home)) == len(before) + 1


def test_rejecting_a_blocked_model_leaves_it_unregistered(runs, capsys) -> None:
    home, (_, _, second), _ = runs
    before = packages(home)
    code, out, _ = cli(decide_args("reject", second, home, "--approver", "Grace", "--reason", "too big"), home, capsys)
    assert code == 0 and "stays unregistered" in out
    assert packages(home) == before
    code, out, _ = cli(["approvals", "show", second, "--json"], home, capsys)
    shown = json.loads(out)
    assert shown["status"] == "rejected" and shown["decision"]["reason"] == "too big"
    assert main(["audit", "verify", "--store", f"file://{home / 'audit'}"]) == 0


def test_approving_an_approaching_model_approves_its_package(runs, capsys) -> None:
    home, (approaching, *_), _ = runs
    [pending] = [p for p in packages(home) if p["approval_status"] == "PendingManualApproval"]
    args = decide_args("approve", approaching, home, "--approver", "Ada", "--reason", "checked", "--json")
    code, out, _ = cli(args, home, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["registry_action"] == "approved" and result["model_package"] == pending["arn"]
    [updated] = [p for p in packages(home) if p["arn"] == pending["arn"]]
    assert updated["approval_status"] == "Approved"
    assert updated["metadata"]["flops_meter:decision"] == "approved"
    assert updated["metadata"]["flops_meter:regulatory_flops"] == pending["metadata"]["flops_meter:regulatory_flops"]


def test_bad_decisions_get_one_line_errors(runs, capsys) -> None:
    home, ids, _ = runs
    cases = [
        (["--approver", "  ", "--reason", "x"], ids[1], "--approver is empty"),
        (["--approver", "Ada", "--reason", ""], ids[1], "--reason is empty"),
        (["--approver", "Ada", "--reason", "x"], "ffffffffffff", "not found"),
        (["--approver", "Ada", "--reason", "x"], "not-an-id", "give the id"),
    ]
    for extra, item, message in cases:
        code, _, err = cli(decide_args("approve", item, home, *extra), home, capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert main(["approvals", "show", "abcd", "--store", f"file://{home / 'audit'}"]) == 2
    assert "not found" in capsys.readouterr().err


def test_an_altered_decision_breaks_audit_verify(tmp_path, runs, capsys) -> None:
    import shutil

    home = runs[0]
    audit = tmp_path / "audit"
    shutil.copytree(home / "audit", audit)
    [path, *_] = sorted((audit / "decisions").glob("*.json"))
    decision = json.loads(path.read_text())
    os.chmod(path, 0o644)
    path.write_text(json.dumps({**decision, "approver": "Mallory"}))
    assert main(["audit", "verify", "--store", f"file://{audit}"]) == 1
    assert "BROKEN at decision on item" in capsys.readouterr().out
    path.write_text(json.dumps(decision))  # restored; now the item it decided on changes
    item_path = audit / "flagged" / path.name
    os.chmod(item_path, 0o644)
    item_path.write_text(json.dumps({**json.loads(item_path.read_text()), "model_uri": "s3://elsewhere/m.tar.gz"}))
    assert main(["audit", "verify", "--store", f"file://{audit}"]) == 1
    assert "changed after the decision" in capsys.readouterr().out


def test_an_unreachable_store_is_one_line(monkeypatch, capsys) -> None:
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert main(["approvals", "list", "--store", "s3://nowhere/records?table=ledger"]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and err.count("\n") == 1


def test_sagemaker_registry_and_s3_store(s3_store_uri, capsys) -> None:
    """The same decisions against SageMaker's Model Registry (moto) and the S3/DynamoDB store."""
    import boto3

    from meter.audit.store import open_store
    from meter.policy.compliance import OriginalCompute, classify
    from meter.policy.governance import compliance_document, publish
    from tests.test_audit import run_record

    store = open_store(s3_store_uri)
    sm = boto3.client("sagemaker")
    group = f"group-{os.urandom(4).hex()}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    original = OriginalCompute(3e23, "user", "given as PretrainFlops")
    items = {}
    for flops, name in ((9 * 10**22, "approaching"), (2 * 10**23, "blocked")):
        run = run_record(flops)
        verdict = classify(flops, original)
        doc = compliance_document(verdict, lineage=f"{group}-{name}", base_model="base", run_id=run["run_id"])
        published = publish(store, run, doc)
        item = flagged_item(
            published.record,
            published.uri,
            model_uri=f"s3://artifacts/{name}/model.tar.gz",
            report_uri=f"s3://artifacts/{name}/compliance.json",
            model_package_group=group,
            inference_image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/serve:1",
        )
        store.put_document("flagged", item["id"], item)
        items[name] = item
    assert items["approaching"]["verdict"] == "approaching" and items["blocked"]["verdict"] == "gpai_provider"
    pending = sm.create_model_package(  # what the pipeline's RegisterModel did for the approaching run
        ModelPackageGroupName=group,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": items["approaching"]["inference_image"], "ModelDataUrl": "s3://a/m.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties={"flops_meter:record_sha256": items["approaching"]["record_sha256"]},
    )["ModelPackageArn"]

    def decide(verb: str, item: dict, *extra: str, approver: str = "Ada", reason: str = "reviewed") -> int:
        return main(["approvals", verb, item["id"], "--approver", approver, "--reason", reason, *extra,
                     "--store", s3_store_uri])  # fmt: skip

    # an approver's name and a reason outside the API's patterns (apostrophe, comma, parentheses, a line break)
    approver, reason = "O'Brien, Mary (DPO)", "reviewed by the board;\nminutes 2026-11-20"
    assert decide("approve", items["approaching"], approver=approver, reason=reason) == 0
    described = sm.describe_model_package(ModelPackageName=pending)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["CustomerMetadataProperties"]["flops_meter:approver"] == "O=27Brien=2C Mary =28DPO=29"
    assert "\n" not in described["ApprovalDescription"] and approver in described["ApprovalDescription"]
    assert described["CustomerMetadataProperties"]["flops_meter:record_sha256"] == items["approaching"]["record_sha256"]
    assert described["CustomerMetadataProperties"]["flops_meter:decision"] == "approved"

    assert decide("approve", items["blocked"]) == 2
    assert "--accept-provider-obligations" in capsys.readouterr().err
    assert decide("approve", items["blocked"], "--accept-provider-obligations", approver=approver, reason=reason) == 0
    summaries = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert len(summaries) == 2
    [registered] = [s["ModelPackageArn"] for s in summaries if s["ModelPackageArn"] != pending]
    described = sm.describe_model_package(ModelPackageName=registered)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["CustomerMetadataProperties"]["flops_meter:record_sha256"] == items["blocked"]["record_sha256"]
    assert described["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == items["blocked"]["model_uri"]
    assert decide("reject", items["blocked"]) == 2
    assert "already approved" in capsys.readouterr().err
    report = store.verify()
    assert report.ok and report.decisions == 2
    assert item_id(items["blocked"]["record_sha256"]) == items["blocked"]["id"]


# -- the approval function (Lambda) ----------------------------------------------------------------------------------

STEP = "SageMaker Model Building Pipeline Execution Step Status Change"
PACKAGE = "SageMaker Model Package State Change"
ACCOUNT, REGION = "123456789012", "eu-west-1"
PIPELINE = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/flops-meter-governed"
EXECUTION = f"{PIPELINE}/execution/abc123def456"


def event(kind: str, detail: dict) -> dict:
    """An EventBridge event as SageMaker sends it (envelope and detail fields)."""
    return {"version": "0", "id": os.urandom(8).hex(), "detail-type": kind, "source": "aws.sagemaker",
            "account": ACCOUNT, "time": "2026-11-22T10:00:00Z", "region": REGION,
            "resources": [PIPELINE, EXECUTION] if kind == STEP else [detail.get("ModelPackageArn", "")],
            "detail": detail}  # fmt: skip


def step_event(step: str, reason: str) -> dict:
    return event(STEP, {
        "metadata": {}, "stepStartTime": "2026-11-22T09:59:00Z", "stepEndTime": "2026-11-22T10:00:00Z",
        "stepName": step, "stepType": "Fail", "previousStepStatus": "Executing", "currentStepStatus": "Failed",
        "failureReason": reason, "pipelineArn": PIPELINE, "pipelineExecutionArn": EXECUTION,
    })  # fmt: skip


@pytest.fixture
def notified(s3_store_uri, monkeypatch):
    """The function's environment: the S3 store, a topic, and a queue subscribed to it (to read what it sent)."""
    import boto3

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"approvers-{os.urandom(4).hex()}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"inbox-{os.urandom(4).hex()}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("AUDIT_STORE_URI", s3_store_uri)
    monkeypatch.setenv("TOPIC_ARN", topic)

    def inbox() -> list[dict]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for m in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in got]

    return s3_store_uri, inbox


def crossed_record(store, lineage: str, flops: int = 2 * 10**23):
    from meter.policy.compliance import OriginalCompute, classify
    from meter.policy.governance import compliance_document, publish
    from tests.test_audit import run_record

    run = run_record(flops)
    verdict = classify(flops, OriginalCompute(3e23, "user", "given as PretrainFlops"))
    return publish(store, run, compliance_document(verdict, lineage=lineage, base_model="base", run_id=run["run_id"]))


def test_the_function_writes_the_flagged_item_and_notifies_on_a_blocked_run(runs, notified) -> None:
    from meter.audit.store import open_store
    from pipelines.notify import handler

    store_uri, inbox = notified
    store = open_store(store_uri)
    published = crossed_record(store, f"lineage-{os.urandom(3).hex()}")
    sha = published.record["record_sha256"]
    # the pipeline's own RegistrationBlocked message (from the local run), naming this record
    local = runs[2][1]
    local_sha = local.states["PublishAudit"].property_files["AuditReport"]["record_sha256"]
    local_uri = local.states["PublishAudit"].property_files["AuditReport"]["record_uri"]
    reason = local.failure.replace(local_uri, published.uri).replace(local_sha, sha)
    assert store.get_document("flagged", sha[:12]) is None  # PublishAudit wrote none here: the function builds it

    result = handler(step_event("RegistrationBlocked", reason))
    assert result["published"] and result["item"] == sha[:12]
    item = store.get_document("flagged", sha[:12])
    assert item["record_sha256"] == sha and item["verdict"] == "gpai_provider" and item["blocked"] is True
    [message] = inbox()
    assert message["Subject"] == f"flops-meter: registration blocked, gpai_provider ({sha[:12]})"
    body = message["Message"]
    assert published.uri in body and EXECUTION in body and item["figures"]["cumulative"] in body
    command = f"flops-meter approvals approve {sha[:12]} --approver NAME --reason TEXT --accept-provider-obligations"
    assert command in body
    assert f"--store '{store_uri}'" in body

    handler(step_event("RegistrationBlocked", reason))  # a redelivered event: the same item, one more message
    assert store.documents("flagged") == [item] and len(inbox()) == 1


def test_the_function_notifies_a_stopped_plan_and_registered_packages(notified) -> None:
    import boto3

    from meter.audit.flagged import flagged_item
    from meter.audit.store import open_store
    from pipelines.notify import handler

    store_uri, inbox = notified
    result = handler(step_event("PlanCrossesThreshold", "Pre-flight gate: the planned compute (4.0e+23 FLOP) ..."))
    assert result["published"] and result["item"] is None
    [message] = inbox()
    assert "before training" in message["Subject"] and "Pre-flight gate" in message["Message"]

    store = open_store(store_uri)
    sm = boto3.client("sagemaker")
    group = f"group-{os.urandom(4).hex()}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    published = crossed_record(store, group, flops=9 * 10**22)  # approaching
    item = flagged_item(published.record, published.uri, model_package_group=group)
    store.put_document("flagged", item["id"], item)
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/serve:1"
    spec = {
        "Containers": [{"Image": image, "ModelDataUrl": "s3://a/m.tar.gz"}],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
    }
    packages = {}
    for name, metadata in (
        ("approaching", {"flops_meter:status": "approaching", "flops_meter:record_sha256": item["record_sha256"]}),
        ("below", {"flops_meter:status": "downstream_modifier", "flops_meter:cumulative_flops": "5465143296",
                   "flops_meter:threshold_flops": "3.333333333333333e+22"}),
        ("foreign", {"team": "search"}),
    ):  # fmt: skip
        packages[name] = sm.create_model_package(
            ModelPackageGroupName=group, ModelApprovalStatus="PendingManualApproval",
            InferenceSpecification=spec, CustomerMetadataProperties=metadata,
        )["ModelPackageArn"]  # fmt: skip

    def package_event(arn: str) -> dict:
        d = sm.describe_model_package(ModelPackageName=arn)
        return event(PACKAGE, {"ModelPackageGroupName": group, "ModelPackageVersion": d["ModelPackageVersion"],
                               "ModelPackageArn": arn, "ModelPackageStatus": "Completed",
                               "ModelApprovalStatus": d["ModelApprovalStatus"]})  # fmt: skip

    assert handler(package_event(packages["approaching"]))["item"] == item["id"]
    [message] = inbox()
    assert "PendingManualApproval (approaching)" in message["Subject"]
    assert f"flops-meter approvals approve {item['id']} --approver NAME --reason TEXT --store" in message["Message"]
    assert "--accept-provider-obligations" not in message["Message"]
    sm.update_model_package(
        ModelPackageArn=packages["approaching"],
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties=metadata_of(sm, packages["approaching"]),
    )  # in the console
    handler(package_event(packages["approaching"]))
    [message] = inbox()
    assert "Approved (approaching)" in message["Subject"] and "No decision is recorded" in message["Message"]
    assert f"flops-meter approvals approve {item['id']} --approver NAME" in message["Message"]
    assert handler(package_event(packages["below"]))["published"]
    [message] = inbox()
    assert "5.47e+09 of threshold 3.33e+22 FLOP" in message["Message"] and "approvals" not in message["Message"]
    assert handler(package_event(packages["foreign"]))["published"] is False
    assert handler(event("Something Else", {}))["published"] is False
    assert inbox() == []


def metadata_of(sm, arn: str) -> dict:
    return sm.describe_model_package(ModelPackageName=arn).get("CustomerMetadataProperties") or {}


def test_the_daily_verification_alarms_the_approvers_when_the_store_was_altered(notified) -> None:
    """The stack's schedule sends {"flops_meter": "verify"}: the metric it puts, and a message when it fails."""
    import boto3

    from meter.audit.store import open_store
    from pipelines.notify import handler

    uri, inbox = notified
    store = open_store(uri)
    assert handler({"flops_meter": "verify"}) == {"verified": True, "line": "nothing published yet"}
    published = crossed_record(store, "lineage-daily")
    item = flagged_item(published.record, published.uri)
    store.put_document("flagged", item["id"], item)
    assert handler({"flops_meter": "verify"})["verified"] is True and inbox() == []
    # an insider lowers the ledger's FLOPs of the run (one PutItem the audit role may make)
    entry = store.ddb.get_item(TableName=store.table, Key={"lineage": {"S": "lineage-daily"}, "sequence": {"N": "1"}})
    store.ddb.put_item(TableName=store.table, Item={**entry["Item"], "regulatory_flops": {"N": "1"}})
    result = handler({"flops_meter": "verify"})
    assert result["verified"] is False and "regulatory_flops" in result["line"]
    (message,) = inbox()
    assert message["Subject"] == "flops-meter: audit verification FAILED"
    assert "flops-meter audit verify" in message["Message"]
    metrics = boto3.client("cloudwatch").list_metrics(Namespace="FlopsMeter", MetricName="AuditVerifyFailed")
    assert metrics["Metrics"]
