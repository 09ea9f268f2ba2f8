"""An insider with write access to the audit store, and what `audit verify` makes of each attempt.

Each attack starts from a fresh store of five records on one lineage (the last two crossing, so flagged; one
decision on the first flagged item) and changes it the way an insider could: with write access to the files and
SQLite ledger of a local store, or with the AWS rights of a role that may write the bucket and the ledger table.
``detected`` is what ``verify`` says; ``with heads`` is what ``verify --heads`` says against an export of the chain
heads taken before the attack (``audit heads``), the mitigation the README names for a local store.

    python -m tests.tamper            # the table, local store only
    python -m tests.tamper --s3       # and the S3/DynamoDB store, on a moto server the script starts
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.audit.chain import canonical_json, record_hash
from meter.audit.flagged import decision_document, flag, flagged_item
from meter.policy.compliance import OriginalCompute, classify
from meter.policy.governance import compliance_document, publish

ORIGINAL = OriginalCompute(3 * 10**23, "user", "given")
FLOPS = (2 * 10**22, 2 * 10**22, 2 * 10**22, 4 * 10**22, 5 * 10**22)  # cumulative crosses 1e23 at the 5th


def populate(store) -> list[dict[str, Any]]:
    from tests.test_audit import run_record

    records, prior = [], 0
    for flops in FLOPS:
        run = run_record(flops)
        verdict = classify(flops, ORIGINAL, prior_lineage_flops=prior)
        doc = compliance_document(verdict, lineage="acme/bot", base_model="base", run_id=run["run_id"])
        published = publish(store, run, doc)
        flag(store, published.record, published.uri)  # as `audit publish` and PublishAudit do
        records.append(published.record)
        prior += flops
    flagged = [r for r in records if r["verdict"]["status"] != "downstream_modifier"]
    first = flagged_item(flagged[0], "x")
    item = store.get_document("flagged", first["id"])
    decision = decision_document(item, decision="rejected", approver="Ada", reason="too big",
                                 decided_at="2026-12-01T10:00:00Z", accepted_provider_obligations=False)  # fmt: skip
    store.put_document("decisions", item["id"], decision)
    return records


def rehashed(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    forged = json.loads(json.dumps(record))
    for path, value in changes.items():
        target = forged
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    forged["record_sha256"] = record_hash(forged)
    return forged


# -- the local store: files and an SQLite ledger -----------------------------------------------------------------


def _sql(store, statement: str, *args) -> None:
    with sqlite3.connect(store.root / "ledger.sqlite") as db:
        db.execute(statement, args)


def _write(path: Path, data: bytes) -> None:
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)


def _forge_last(store, records) -> None:
    last = records[-1]
    forged = rehashed(last, run__flops__regulatory=10**20)
    store.path(last["record_sha256"]).chmod(0o644)
    store.path(last["record_sha256"]).unlink()
    _write(store.path(forged["record_sha256"]), canonical_json(forged))
    _sql(store, "UPDATE ledger SET record_sha256 = ?, regulatory_flops = ? WHERE record_sha256 = ?",
         forged["record_sha256"], str(10**20), last["record_sha256"])  # fmt: skip
    # a thorough insider also replaces the flagged item, so the queue shows the forgery
    (store.root / "flagged" / f"{last['record_sha256'][:12]}.json").unlink()
    item = flagged_item(forged, f"{store.uri}/records/{forged['record_sha256']}.json")
    if item is not None:
        store.put_document("flagged", item["id"], item)


def _cut_last(store, records) -> None:
    last = records[-1]["record_sha256"]
    store.path(last).chmod(0o644)
    store.path(last).unlink()
    _sql(store, "DELETE FROM ledger WHERE record_sha256 = ?", last)
    (store.root / "flagged" / f"{last[:12]}.json").unlink()


def _flip_decision(store, records) -> None:
    path = next((store.root / "decisions").glob("*.json"))
    decision = json.loads(path.read_bytes())
    decision["decision"] = "approved"
    from meter.audit.flagged import decision_hash

    decision["decision_sha256"] = decision_hash(decision)
    _write(path, canonical_json(decision))


LOCAL: dict[str, Callable] = {
    "edit a record's FLOPs in its file": lambda s, r: _write(
        s.path(r[1]["record_sha256"]),
        s.path(r[1]["record_sha256"]).read_bytes().replace(b"20000000000000000000000", b"10000000000000000000000"),
    ),
    "ledger: change regulatory_flops (one SQL update)": lambda s, r: _sql(
        s, "UPDATE ledger SET regulatory_flops = '1' WHERE sequence = 5"
    ),
    "ledger: change a record_id": lambda s, r: _sql(s, "UPDATE ledger SET record_id = 'other' WHERE sequence = 2"),
    "ledger: change a previous link": lambda s, r: _sql(
        s, "UPDATE ledger SET previous_record_sha256 = ? WHERE sequence = 3", "0" * 64
    ),
    "ledger: delete the last row": lambda s, r: _sql(s, "DELETE FROM ledger WHERE sequence = 5"),
    "delete the last record, its row and its flagged item": _cut_last,
    "replace the last record by a re-hashed forgery": _forge_last,
    "delete a record file": lambda s, r: (
        s.path(r[2]["record_sha256"]).chmod(0o644),
        s.path(r[2]["record_sha256"]).unlink(),
    ),
    "delete the ledger": lambda s, r: (s.root / "ledger.sqlite").unlink(),
    "delete a pending flagged item": lambda s, r: (s.root / "flagged" / f"{r[4]['record_sha256'][:12]}.json").unlink(),
    "alter a flagged item's verdict": lambda s, r: _write(
        s.root / "flagged" / f"{r[4]['record_sha256'][:12]}.json",
        (s.root / "flagged" / f"{r[4]['record_sha256'][:12]}.json")
        .read_bytes()
        .replace(b"gpai_provider", b"downstream_modifier"),
    ),
    "forge a flagged item for no record": lambda s, r: s.put_document(
        "flagged", "ffffffffffff", {"id": "ffffffffffff", "record_sha256": "f" * 64, "verdict": "approaching"}
    ),
    "flip a decision (re-hashed)": _flip_decision,
    "delete a decision (the item is pending again)": lambda s, r: next((s.root / "decisions").glob("*.json")).unlink(),
}


@dataclass
class Outcome:
    attack: str
    store: str
    detected: str  # verify's line, or "NOT DETECTED"
    with_heads: str


def _verdict(report) -> str:
    return "NOT DETECTED" if report.ok else f"{report.broken}: {report.reason}"


def run_local(tmp: Path) -> list[Outcome]:
    from meter.audit.file_store import FileStore
    from meter.audit.verify import chain_heads

    outcomes = []
    for i, (name, attack) in enumerate(LOCAL.items()):
        store = FileStore(tmp / f"local-{i}")
        records = populate(store)
        assert store.verify().ok
        heads = chain_heads(store)
        attack(store, records)
        store = FileStore(store.root)
        outcomes.append(Outcome(name, "local", _verdict(store.verify()), _verdict(store.verify(heads=heads))))
    return outcomes


# -- the S3/DynamoDB store: what the pipeline's roles may do ------------------------------------------------------


def _ddb_item(store, sequence: int) -> dict[str, Any]:
    return store.ddb.get_item(TableName=store.table, Key={"lineage": {"S": "acme/bot"},
                              "sequence": {"N": str(sequence)}})["Item"]  # fmt: skip


def _s3_put(store, key: str, body: bytes) -> None:
    store.s3.put_object(Bucket=store.bucket, Key=key, Body=body)  # no IfNoneMatch: a new version


def _s3_forge_last(store, records) -> None:
    last = records[-1]
    forged = rehashed(last, run__flops__regulatory=10**20)
    _s3_put(store, store.key(forged["record_sha256"]), canonical_json(forged))
    item = _ddb_item(store, 5)
    item["record_sha256"] = {"S": forged["record_sha256"]}
    item["regulatory_flops"] = {"N": str(10**20)}
    store.ddb.put_item(TableName=store.table, Item=item)


S3: dict[str, Callable] = {
    "overwrite a record (a new object version)": lambda s, r: _s3_put(
        s, s.key(r[1]["record_sha256"]), canonical_json(rehashed(r[1], run__flops__regulatory=1))
    ),
    "delete a record (a delete marker)": lambda s, r: s.s3.delete_object(
        Bucket=s.bucket, Key=s.key(r[1]["record_sha256"])
    ),
    "ledger: PutItem with other regulatory_flops": lambda s, r: s.ddb.put_item(
        TableName=s.table, Item={**_ddb_item(s, 5), "regulatory_flops": {"N": "1"}}
    ),
    "ledger: delete the last item": lambda s, r: s.ddb.delete_item(
        TableName=s.table, Key={"lineage": {"S": "acme/bot"}, "sequence": {"N": "5"}}
    ),
    "replace the last record by a re-hashed forgery": _s3_forge_last,
    "a new version of a decision saying approved": lambda s, r: _s3_put(
        s,
        s._doc_key("decisions", next(iter(d["item_id"] for d in s.documents("decisions")))),
        s._get_bytes(s._doc_key("decisions", next(iter(d["item_id"] for d in s.documents("decisions"))))).replace(
            b'"rejected"', b'"approved"'
        ),
    ),
    "delete a pending flagged item": lambda s, r: s.s3.delete_object(
        Bucket=s.bucket, Key=s._doc_key("flagged", r[4]["record_sha256"][:12])
    ),
}


def run_s3(uri_factory: Callable[[], str], only: str | None = None) -> list[Outcome]:
    from meter.audit.store import open_store
    from meter.audit.verify import chain_heads

    outcomes = []
    for name, attack in S3.items():
        if only is not None and name != only:
            continue
        store = open_store(uri_factory())
        records = populate(store)
        assert store.verify().ok, store.verify().line()
        heads = chain_heads(store)
        attack(store, records)
        outcomes.append(Outcome(name, "s3", _verdict(store.verify()), _verdict(store.verify(heads=heads))))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = ["| store | attack | `audit verify` | `audit verify --heads` |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        lines.append(f"| {o.store} | {o.attack} | {o.detected} | {o.with_heads} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a report, run by hand
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = run_local(Path(tmp))
        if "--s3" in sys.argv:
            os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
            print("(run the S3 rows with pytest tests/test_tamper.py: they need the moto fixtures)", file=sys.stderr)
    print(table(results))
