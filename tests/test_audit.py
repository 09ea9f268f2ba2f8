"""Audit records and stores: hash chains, append-only writes, tamper detection, lineage sums.

The S3/DynamoDB store runs against a moto server on 127.0.0.1 (real boto3 over HTTP).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid

import pytest

from meter.audit.chain import canonical_json, draft_record, record_hash, validate
from meter.audit.file_store import FileStore
from meter.audit.store import open_store
from meter.errors import MeterError
from meter.policy.compliance import OriginalCompute, classify

ORIGINAL = OriginalCompute(7.2e23, "reported", "Meta Llama 3 model card")


def run_record(flops: int, run_id: str | None = None) -> dict:
    return {
        "record_type": "flops_meter.run",
        "record_version": 1,
        "run_id": run_id or uuid.uuid4().hex,
        "status": "completed",
        "model": {"name": "meta-llama/Meta-Llama-3-8B", "parameters": 8030261248},
        "method": {"setup": "lora r=16 on q_proj,v_proj", "method": "lora"},
        "tokens": {"tokens": 1000},
        "flops": {"regulatory": flops, "executed": flops + 7},
        "energy": {"available": False, "energy_kwh": None},
        "time": {"started": "2026-11-22T10:00:00Z", "ended": "2026-11-22T11:00:00Z", "wall_seconds": 3600},
    }


def draft(flops: int, lineage: str = "acme/llama3-support-bot", run_id: str | None = None, prior: int = 0) -> dict:
    verdict = classify(flops, ORIGINAL, prior_lineage_flops=prior).to_dict()
    return draft_record(
        run_record(flops, run_id), verdict, lineage_id=lineage, base_model="meta-llama/Meta-Llama-3-8B",
        dataset={"uri": "s3://data/train.jsonl", "size_bytes": 1234, "sha256": "ab" * 32},
    )  # fmt: skip


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(tmp_path / "audit")
    return open_store(request.getfixturevalue("s3_store_uri"))


def test_records_validate_and_hash_canonically() -> None:
    d = draft(10**22)
    from meter.audit.chain import seal

    record = seal(d, sequence=1, previous=None)
    validate(record)
    assert record["record_sha256"] == record_hash(record) and record["schema_version"] == 1
    shuffled = json.loads(json.dumps(record, sort_keys=False))
    assert canonical_json(shuffled) == canonical_json(record)
    with pytest.raises(MeterError, match="schema v1 at verdict/status"):
        validate({**record, "verdict": {**record["verdict"], "status": "fine"}})


def test_chain_ledger_and_sums(store) -> None:
    lineage = f"lineage-{uuid.uuid4().hex[:6]}"
    published = [store.publish(draft(f, lineage)) for f in (10**22, 2 * 10**22, 3 * 10**22)]
    records = [p.record for p in published]
    assert [r["sequence"] for r in records] == [1, 2, 3]
    assert records[0]["previous_record_sha256"] is None
    assert records[1]["previous_record_sha256"] == records[0]["record_sha256"]
    assert records[2]["previous_record_sha256"] == records[1]["record_sha256"]
    assert store.lineage_flops(lineage) == 6 * 10**22
    assert store.lineage_flops("another-lineage") == 0
    assert store.verify(lineage).ok and store.verify().ok
    assert store.get(records[1]["record_sha256"]) == records[1]


def test_append_only_and_idempotent(store) -> None:
    lineage = f"lineage-{uuid.uuid4().hex[:6]}"
    first = draft(10**22, lineage, run_id="run-1")
    assert store.publish(first).created
    again = store.publish(first)  # an identical retry
    assert not again.created and again.record["sequence"] == 1
    with pytest.raises(MeterError, match="already published with different content"):
        store.publish(draft(2 * 10**22, lineage, run_id="run-1"))
    assert len(store.entries(lineage)) == 1


def test_concurrent_publishers_keep_one_chain(store) -> None:
    lineage = f"lineage-{uuid.uuid4().hex[:6]}"
    errors = []

    def publish(i: int) -> None:
        try:
            store.publish(draft(10**21 * (i + 1), lineage))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors  # all twenty succeed: the losers of each round wait (backoff, jitter) and rebuild
    entries = sorted(store.entries(lineage), key=lambda e: e.sequence)
    assert [e.sequence for e in entries] == list(range(1, 21))
    assert store.lineage_flops(lineage) == 210 * 10**21
    # no orphan: every object in the store is a ledger entry (a lost race wrote nothing); the whole store verifies
    assert store.stored_records() == {e.record_sha256 for e in store.entries()}
    assert store.verify().ok, store.verify().line()


def test_file_store_detects_one_altered_byte_and_a_deleted_middle_record(tmp_path) -> None:
    store = FileStore(tmp_path / "audit")
    records = [store.publish(draft(f, "L")).record for f in (10**22, 2 * 10**22, 3 * 10**22)]
    middle = store.path(records[1]["record_sha256"])
    data = bytearray(middle.read_bytes())
    os.chmod(middle, 0o644)
    data[data.index(b"20000000000000000000000")] = ord("3")  # one byte of the regulatory count
    middle.write_bytes(bytes(data))
    report = store.verify("L")
    assert not report.ok and records[1]["record_sha256"][:12] in report.broken and "altered" in report.reason

    fresh = FileStore(tmp_path / "audit2")
    records = [fresh.publish(draft(f, "L")).record for f in (10**22, 2 * 10**22, 3 * 10**22)]
    fresh.path(records[1]["record_sha256"]).unlink()
    with sqlite3.connect(fresh.root / "ledger.sqlite") as db:
        db.execute("DELETE FROM ledger WHERE sequence = 2")
    report = fresh.verify()
    assert not report.ok and report.broken == "L#2" and "missing" in report.reason


def test_s3_store_locks_every_record_and_detects_tampering(store) -> None:
    if store.uri.startswith("file"):
        pytest.skip("S3 only")
    from botocore.exceptions import ClientError

    records = [store.publish(draft(f, "L")).record for f in (10**22, 2 * 10**22, 3 * 10**22)]
    for r in records:
        head = store.s3.head_object(Bucket=store.bucket, Key=store.key(r["record_sha256"]))
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"]
    key = store.key(records[1]["record_sha256"])
    with pytest.raises(ClientError) as refused:  # an overwrite through the API is refused
        store.s3.put_object(Bucket=store.bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    version = store.s3.head_object(Bucket=store.bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError):  # not even a deletion of the locked version
        store.s3.delete_object(Bucket=store.bucket, Key=key, VersionId=version)
    # a new version with one byte changed (allowed by S3, the old version stays locked): verify names it
    body = (
        store.s3.get_object(Bucket=store.bucket, Key=key)["Body"]
        .read()
        .replace(b'"status":"completed"', b'"status":"completeD"')
    )
    store.s3.put_object(Bucket=store.bucket, Key=key, Body=body)
    report = store.verify("L")
    assert not report.ok and records[1]["record_sha256"][:12] in report.broken
    # removing a ledger entry from the middle of the chain
    store.ddb.delete_item(TableName=store.table, Key={"lineage": {"S": "L"}, "sequence": {"N": "2"}})
    report = store.verify("L")
    assert not report.ok and report.broken == "L#2"


def test_bad_store_uris(tmp_path) -> None:
    with pytest.raises(MeterError, match="s3://BUCKET/PREFIX\\?table="):
        open_store("s3://bucket/prefix")
    with pytest.raises(MeterError, match="use file://DIR"):
        open_store("ftp://x")
    with pytest.raises(MeterError, match="retention_days"):
        open_store("s3://b/p?table=t&retention_days=-1")


def test_s3_store_can_rely_on_the_buckets_default_retention(moto_endpoint) -> None:
    """retention=bucket: no lock headers (the writer needs no s3:PutObjectRetention); an unlocked bucket is refused."""
    import boto3

    s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
    locked, unlocked, table = (f"{n}-{uuid.uuid4().hex[:10]}" for n in ("locked", "unlocked", "ledger"))
    where = {"CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}}
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True, **where)
    s3.put_object_lock_configuration(
        Bucket=locked,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}},
        },
    )
    s3.create_bucket(Bucket=unlocked, **where)
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "lineage", "KeyType": "HASH"}, {"AttributeName": "sequence", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "lineage", "AttributeType": "S"},
            {"AttributeName": "sequence", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    store = open_store(f"s3://{locked}/records?table={table}&retention=bucket&retention_days=30")
    record = store.publish(draft(10**22, "L-bucket")).record
    head = s3.head_object(Bucket=locked, Key=store.key(record["record_sha256"]))
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert store.verify().ok
    with pytest.raises(MeterError, match=f"audit bucket {unlocked} has no default Object Lock retention"):
        open_store(f"s3://{unlocked}/records?table={table}&retention=bucket").publish(draft(10**22, "L-other"))
    with pytest.raises(MeterError, match="retention can only be 'bucket'"):
        open_store(f"s3://{locked}/records?table={table}&retention=30")


def test_s3_store_refuses_a_bucket_that_locks_records_too_briefly(moto_endpoint) -> None:
    """retention=bucket: the bucket's default retention must be at least the store's (retention_days, default 3650,
    the AI Act's ten years); a shorter one is refused at the first write and reported broken by verify."""
    import boto3

    s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
    bucket, table = f"brief-{uuid.uuid4().hex[:10]}", f"ledger-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(
        Bucket=bucket, ObjectLockEnabledForBucket=True, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": 1}}})  # fmt: skip
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "lineage", "KeyType": "HASH"}, {"AttributeName": "sequence", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "lineage", "AttributeType": "S"},
            {"AttributeName": "sequence", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    uri = f"s3://{bucket}/records?table={table}&retention=bucket"
    message = (
        f"audit bucket {bucket} locks records for 1 year (365 days) by default, less than the 3650 days this store "
        "requires: raise the bucket's default COMPLIANCE retention to at least 3650 days"
    )
    with pytest.raises(MeterError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        open_store(uri).publish(draft(10**22, "L-brief"))
    assert "\n" not in str(refused.value)
    assert open_store(uri).entries() == []  # refused before the ledger claim
    # a store that asks for one year accepts the bucket; one that asks for ten finds it broken
    assert open_store(f"{uri}&retention_days=365").publish(draft(10**22, "L-brief")).record
    report = open_store(uri).verify()
    assert not report.ok and report.broken == f"s3://{bucket}" and report.reason.startswith(message)


def test_documents_are_written_once(store) -> None:
    """Flagged items and decisions: identical rewrite is a no-op, other content is refused, listing returns them."""
    from meter.audit.write_once import DocumentExists

    name = f"item-{uuid.uuid4().hex[:8]}"
    uri, created = store.put_document("decisions", name, {"decision": "approved", "approver": "A"})
    assert created and uri.endswith(f"decisions/{name}.json")
    assert store.put_document("decisions", name, {"approver": "A", "decision": "approved"}) == (uri, False)
    with pytest.raises(DocumentExists, match="already exists") as refused:
        store.put_document("decisions", name, {"decision": "rejected", "approver": "B"})
    assert refused.value.existing == {"decision": "approved", "approver": "A"}
    assert store.get_document("decisions", name) == {"decision": "approved", "approver": "A"}
    assert store.get_document("decisions", "absent") is None
    assert {"decision": "approved", "approver": "A"} in store.documents("decisions")
    with pytest.raises(MeterError, match="kind must be one of"):
        store.put_document("records", name, {})
    with pytest.raises(MeterError, match="kind must be one of"):
        store.put_document("flagged", "../escape", {})
