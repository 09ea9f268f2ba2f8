"""Audit stores behind one interface, chosen by URI. Append-only, content-addressed, chained per lineage.

``file://DIR``                  records as files ``DIR/records/<sha256>.json`` plus an SQLite ledger — the
                                embedded default for one machine.
``s3://BUCKET/PREFIX?table=T``  records in S3 with Object Lock COMPLIANCE retention and SHA-256 checksums, written
                                with ``IfNoneMatch="*"``; a DynamoDB ledger (key: lineage, sequence) written with
                                conditional transactions. Options: ``region=``, ``retention_days=`` (default 3650:
                                each record carries its own retain-until date; the writer needs
                                s3:PutObjectRetention) or ``retention=bucket`` (records take the bucket's default
                                COMPLIANCE retention, which must be at least ``retention_days``, checked before the
                                first write and by verify; the writer needs no right over retention — what the CDK
                                app deploys).

Publishing a run a second time is a no-op when its content is identical (an idempotent retry) and an error when
it differs. Concurrent publishers of one lineage race for the next sequence number; the loser rebuilds its
record on the new head and retries, so the chain stays consistent. boto3 is imported only by the S3 store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from meter.audit.chain import (
    LedgerEntry,
    VerifyReport,
    canonical_json,
    content_hash,
    hashes_to,
    seal,
    verify_chain,
)
from meter.errors import MeterError

# One local home for `pipeline run --local`, `audit` and `approvals`, so they work one after another from the same
# directory with no flags; FLOPS_METER_STORE or --store point them all elsewhere.
DEFAULT_HOME = "flops-meter-local"
DEFAULT_STORE = f"file://./{DEFAULT_HOME}/audit"
_RETRIES = 30  # appends to one lineage race for its next sequence number: the loser waits (backoff, jitter)


@dataclass(frozen=True)
class Published:
    record: dict[str, Any]
    uri: str
    created: bool  # False: an identical record was already there


class AuditStore(Protocol):
    uri: str

    def publish(self, draft: dict[str, Any], verdict_for: VerdictFor | None = None) -> Published: ...
    def lineage_flops(self, lineage: str) -> int: ...
    def entries(self, lineage: str | None = None) -> list[LedgerEntry]: ...
    def get(self, sha: str) -> dict[str, Any]: ...
    def verify(self, lineage: str | None = None, heads: dict[str, Any] | None = None) -> VerifyReport: ...
    def stored_records(self) -> set[str]: ...
    def storage_problem(self) -> tuple[str, str] | None: ...
    def put_document(self, kind: str, name: str, doc: dict[str, Any]) -> tuple[str, bool]: ...
    def get_document(self, kind: str, name: str) -> dict[str, Any] | None: ...
    def documents(self, kind: str) -> list[dict[str, Any]]: ...


class DocumentExists(MeterError):
    """A write-once document is already there with other content (e.g. a second decision on one item)."""

    def __init__(self, uri: str, existing: dict[str, Any]):
        super().__init__(f"{uri} already exists with other content: documents are written once")
        self.uri, self.existing = uri, existing


DOCUMENT_KINDS = ("flagged", "decisions")  # approval workflow: flagged items and the decisions taken on them
_DOCUMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _document_path(kind: str, name: str) -> str:
    if kind not in DOCUMENT_KINDS or not _DOCUMENT_NAME.match(name):
        raise MeterError(f"document {kind}/{name}: kind must be one of {DOCUMENT_KINDS}, name letters and digits")
    return f"{kind}/{name}.json"


# Every AWS client of the package takes its timeouts and retries from boto_config(). S3 and DynamoDB answer the
# package's small requests (a record of a few KB, a ledger page, a listing) in tens of milliseconds and their slow
# tail in a second or two; the read timeout bounds the wait for the *next bytes* of an answer, not a whole
# transfer. 8 s is four times that tail, and a timed-out attempt is retried: 3 attempts in all (standard mode,
# backoff of at most 50 ms · 2^n) keep an endpoint that accepts connections but never answers under 3 × 8 s ≈ 25 s,
# where botocore's default read timeout (60 s) times the 6 attempts configured before hung `audit verify` for 6
# minutes. A connection takes milliseconds in a region; 5 s allows a slow proxy or VPC endpoint.
AWS_CONNECT_TIMEOUT_S = 5
AWS_READ_TIMEOUT_S = 8
AWS_ATTEMPTS = 3  # in all, the first included (botocore's total_max_attempts; its max_attempts counts retries)


def boto_config():
    """The botocore Config of every client: the timeouts above, standard retries, AWS_MAX_ATTEMPTS when set."""
    from botocore.config import Config

    given = os.environ.get("AWS_MAX_ATTEMPTS", "")
    attempts = int(given) if given.isdigit() else AWS_ATTEMPTS
    return Config(
        connect_timeout=AWS_CONNECT_TIMEOUT_S,
        read_timeout=AWS_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
    )


# ClientError codes that say the place is wrong, not the request: what to do about each
_AWS_FIXES = {
    "NoSuchBucket": "the bucket does not exist: check its name and the region",
    "ResourceNotFoundException": "the table does not exist: check its name and the region",
    "AccessDenied": "the credentials lack the permission: check the role's policy",
    "AccessDeniedException": "the credentials lack the permission: check the role's policy",
    "AllAccessDisabled": "the credentials lack the permission: check the role's policy",
    "InvalidAccessKeyId": "the credentials were rejected: refresh them",
    "UnrecognizedClientException": "the credentials were rejected: refresh them",
    "InvalidClientTokenId": "the credentials were rejected: refresh them",
    "SignatureDoesNotMatch": "the credentials were rejected: refresh them",
    "ExpiredToken": "the credentials expired: refresh them",
    "ExpiredTokenException": "the credentials expired: refresh them",
    "PermanentRedirect": "the bucket is in another region: give that region",
    "AuthorizationHeaderMalformed": "the bucket is in another region: give that region",
}


def aws_error(error: Exception, where: str, region_fix: str = "set AWS_REGION") -> MeterError | None:
    """The one line for an AWS failure a user fixes outside the code (region, credentials, endpoint, a missing
    bucket or table, access), naming ``where`` and the fix; None for any other error (a caller's own codes)."""
    try:
        from botocore import exceptions as bx
    except ImportError:
        return None
    if isinstance(error, bx.ClientError):
        info = error.response.get("Error", {})
        code, message = str(info.get("Code", "")), " ".join(str(info.get("Message") or "").split())
        fix = _AWS_FIXES.get(code)
        if fix is None:
            return None
        return MeterError(f"{where}: {error.operation_name}: {code}: {message} ({fix})")
    endpoint = getattr(error, "kwargs", {}).get("endpoint_url", "the endpoint")
    if isinstance(error, bx.NoRegionError):
        text = f"no AWS region: {region_fix} (or AWS_DEFAULT_REGION, or a region in ~/.aws/config)"
    elif isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        text = "no AWS credentials: configure them (aws configure, AWS_PROFILE, or an instance role)"
    elif isinstance(error, bx.ReadTimeoutError):
        text = (
            f"unreachable: no answer from {endpoint} within {AWS_READ_TIMEOUT_S} s: it accepts connections but does "
            "not respond (check AWS_ENDPOINT_URL, a proxy, or the network)"
        )
    elif isinstance(error, bx.ConnectTimeoutError | bx.EndpointConnectionError):
        text = f"unreachable: cannot connect to {endpoint} (check the region, AWS_ENDPOINT_URL and the network)"
    elif isinstance(error, bx.BotoCoreError):
        text = " ".join(str(error).split())
    else:
        return None
    return MeterError(f"{where}: {text}")


def _parse_document(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        doc = None
    if not isinstance(doc, dict):
        raise MeterError(f"{where} is not a JSON document: it was altered or truncated")
    return doc


def open_store(uri: str | None = None, *, create: bool = True) -> AuditStore | None:
    """file://DIR (or a plain directory path) or s3://BUCKET/PREFIX?table=NAME; default $FLOPS_METER_STORE, else
    the local default. ``create=False``: None for a local store that does not exist yet (reading creates nothing)."""
    uri = uri or os.environ.get("FLOPS_METER_STORE") or DEFAULT_STORE
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(((parsed.netloc + parsed.path) if parsed.scheme == "file" else uri) or ".")
        if not create and not _is_file(path / "ledger.sqlite", uri):
            return None
        return FileStore(path)
    if parsed.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if not parsed.netloc or "table" not in query:
            raise MeterError(f"audit store {uri!r}: use s3://BUCKET/PREFIX?table=LEDGER_TABLE")
        days = query.get("retention_days", "3650")
        if not days.isdigit() or int(days) <= 0:
            raise MeterError(f"audit store {uri!r}: retention_days must be a positive integer")
        if query.get("retention", "bucket") != "bucket":
            raise MeterError(f"audit store {uri!r}: retention can only be 'bucket' (the bucket's default retention)")
        args = (parsed.netloc, parsed.path.strip("/"), query["table"], query.get("region"))
        if "retention" in query:  # the bucket locks each record; its default retention must be at least this long
            return S3Store(*args, None, required_days=int(days))
        return S3Store(*args, int(days))
    raise MeterError(f"audit store {uri!r}: use file://DIR or s3://BUCKET/PREFIX?table=NAME")


def _verify_all(store: AuditStore, lineage: str | None, fetch, heads: dict[str, Any] | None = None) -> VerifyReport:
    """Every chain (hashes, links, the ledger's fields), the store against its ledger, the exported heads, the
    flagged items and the decisions. The first problem found is reported."""
    entries = store.entries(lineage)
    if lineage is not None and not entries:
        return VerifyReport(False, 0, lineage, "no record of this lineage in the store")
    stored = store.stored_records() if lineage is None else set()
    if not entries and not stored:
        return VerifyReport(False, 0, store.uri, "the store holds no record: a wrong --store, or the store was emptied")
    records: dict[str, dict[str, Any]] = {}  # each record read once: the chains, then the items and decisions

    def fetching(entry: LedgerEntry) -> bytes | None:
        data = fetch(entry)
        if data is not None:
            with contextlib.suppress(ValueError, RecursionError):  # verify_chain reports what is wrong with it
                records[entry.record_sha256] = json.loads(data)
        return data

    checked = 0
    for name in sorted({e.lineage for e in entries}):
        report = verify_chain([e for e in entries if e.lineage == name], fetching)
        if not report.ok:
            return VerifyReport(False, checked + report.checked, report.broken, report.reason)
        checked += report.checked
    known = {e.record_sha256 for e in entries}
    twice = sorted(run for run, n in Counter(e.record_id for e in entries).items() if n > 1)
    if twice:  # its publication claim was removed and the run published again
        return VerifyReport(False, checked, f"run {twice[0]}", "published twice (a record#<run> claim was removed)")
    # a record in the store that the ledger does not list: its ledger entry was removed (a truncated chain, a
    # replaced end, a run published twice)
    for sha in sorted(stored - known):
        return VerifyReport(False, checked, sha[:12], "a record in the store is not in the ledger (its entry removed)")
    problem = store.storage_problem()
    if problem:
        return VerifyReport(False, checked, *problem)
    items, decisions = store.documents("flagged"), store.documents("decisions")
    problem = _against_heads(entries, items, decisions, heads) if heads is not None else None
    if problem:
        return VerifyReport(False, checked, *problem)
    problem = _verify_flagged(records, lineage, entries, items)
    if problem:
        return VerifyReport(False, checked, *problem)
    return _verify_decisions(records, lineage, items, decisions, checked)


def _anchored(items: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> tuple[dict, dict]:
    """What a heads export anchors besides the chains: each decision's hash, each flagged item's record."""
    return (
        {d.get("item_id"): d.get("decision_sha256") for d in decisions},
        {i.get("id"): i.get("record_sha256") for i in items},
    )


def chain_heads(store: AuditStore) -> dict[str, Any]:
    """The head of every chain, to keep outside the store (print it, mail it, put it in another account):
    ``audit verify --heads`` then detects a chain cut or rewritten after this export."""
    heads: dict[str, dict[str, Any]] = {}
    for e in store.entries():
        if e.lineage not in heads or e.sequence > heads[e.lineage]["sequence"]:
            heads[e.lineage] = {"sequence": e.sequence, "record_sha256": e.record_sha256}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    decisions, flagged = _anchored(store.documents("flagged"), store.documents("decisions"))
    return {"record_type": "flops_meter.heads", "store": store.uri, "exported_at": now, "heads": heads,
            "decisions": decisions, "flagged": flagged}  # fmt: skip


def _against_heads(
    entries: list[LedgerEntry], items: list[dict[str, Any]], decided: list[dict[str, Any]], exported: dict[str, Any]
) -> tuple[str, str] | None:
    """What an export of the heads anchors: each chain up to its exported head, each decision and flagged item."""
    at = {(e.lineage, e.sequence): e.record_sha256 for e in entries}
    when = exported.get("exported_at")
    for lineage, head in sorted((exported.get("heads") or {}).items()):
        if at.get((lineage, head.get("sequence"))) != head.get("record_sha256"):
            return f"{lineage}#{head.get('sequence')}", (
                f"the chain no longer holds the head exported at {when} "
                f"({str(head.get('record_sha256'))[:12]}): cut or rewritten since"
            )
    decisions, flagged = _anchored(items, decided)
    for item, sha in sorted((exported.get("decisions") or {}).items()):
        if decisions.get(item) != sha:
            return f"decision on item {item}", f"not the decision exported at {when}: deleted or replaced since"
    for item, sha in sorted((exported.get("flagged") or {}).items()):
        if flagged.get(item) != sha:
            return f"flagged item {item}", f"not the item exported at {when}: deleted or replaced since"
    return None


def _verify_flagged(
    records: dict[str, dict[str, Any]], lineage: str | None, entries: list[LedgerEntry], flagged: list[dict[str, Any]]
) -> tuple[str, str] | None:
    """Each flagged item says what its record says; each record whose verdict needs a decision has its item."""
    from meter.audit.flagged import FLAGGED_STATUSES, item_id

    items = {i.get("id"): i for i in flagged}
    for e in sorted(entries, key=lambda e: (e.lineage, e.sequence)):
        status = records[e.record_sha256]["verdict"]["status"]
        item = items.pop(item_id(e.record_sha256), None)
        if item is None:
            if status in FLAGGED_STATUSES:
                return f"record {e.record_sha256[:12]}", (
                    f"its verdict {status} needs a decision, but its flagged item is missing (deleted?)"
                )
            continue
        if item.get("record_sha256") != e.record_sha256 or item.get("verdict") != status:
            return f"flagged item {item.get('id')}", "it does not say what its record says (altered)"
    if lineage is None:
        for name in sorted(items, key=str):
            return f"flagged item {name}", "it names no record of the ledger (forged)"
    return None


def _verify_decisions(
    records: dict[str, dict[str, Any]],
    lineage: str | None,
    flagged: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
    checked: int,
) -> VerifyReport:
    """Every approval decision: its own hash, its flagged item, and the record (in a verified chain) it decides on."""
    from meter.audit.flagged import check_decision

    items = {i["id"]: i for i in flagged}
    count = 0
    for decision in decisions:
        item = items.get(decision.get("item_id"))
        if lineage is not None and (item or {}).get("lineage") != lineage:
            continue
        record = records.get(decision.get("record_sha256"))
        reason = check_decision(decision, item, record)
        if reason:
            return VerifyReport(False, checked, f"decision on item {decision.get('item_id')}", reason, count)
        count += 1
    return VerifyReport(True, checked, decisions=count)


# decides the verdict to seal from the lineage's total before this record, read atomically with the append
VerdictFor = Callable[[int], dict[str, Any]]


def _duplicate(existing: dict[str, Any], draft: dict[str, Any], uri: str) -> Published:
    if content_hash(existing) != content_hash(draft):
        raise MeterError(
            f"record {draft['record_id']} is already published with different content ({existing['record_sha256']}):"
            " records are append-only; publish the corrected run under a new run id"
        )
    return Published(existing, uri, created=False)


# --------------------------------------------------------------------------------------------------------------


def _is_file(path: Path, uri: str) -> bool:
    try:
        return path.is_file()
    except OSError as e:  # a name too long for the file system
        raise MeterError(f"audit store {uri}: {e.strerror}: give another --store") from None


def _ledger_errors(method):
    """A damaged or foreign ledger file (sqlite3.DatabaseError) as one line naming it."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise self._ledger_problem(e) from None

    return wrapped


class FileStore:
    """Record files plus an SQLite ledger; SQLite's write lock serialises publishers on one machine."""

    @_ledger_errors
    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = f"file://{self.root}"
        self.records = self.root / "records"
        try:
            self.records.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MeterError(f"audit store {self.uri}: cannot create {self.records}: {e.strerror}") from None
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS ledger (lineage TEXT NOT NULL, sequence INTEGER NOT NULL, "
                "record_sha256 TEXT NOT NULL UNIQUE, previous_record_sha256 TEXT, record_id TEXT NOT NULL UNIQUE, "
                "regulatory_flops TEXT NOT NULL, published_at TEXT NOT NULL, PRIMARY KEY (lineage, sequence))"
            )

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "ledger.sqlite", timeout=30, isolation_level=None)
        return db

    def _ledger_problem(self, error: sqlite3.DatabaseError) -> MeterError:
        ledger = self.root / "ledger.sqlite"
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return MeterError(f"audit ledger {ledger} is locked by another process: try again when it is done")
        return MeterError(
            f"audit ledger {ledger} cannot be used: {error} (damaged, or not an SQLite database: restore it from a "
            "backup, or give another --store)"
        )

    def path(self, sha: str) -> Path:
        return self.records / f"{sha}.json"

    @_ledger_errors
    def publish(self, draft: dict[str, Any], verdict_for: VerdictFor | None = None) -> Published:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")  # one publisher at a time: the head cannot move under us
            row = db.execute("SELECT record_sha256 FROM ledger WHERE record_id = ?", (draft["record_id"],)).fetchone()
            if row:
                db.execute("ROLLBACK")
                return _duplicate(self.get(row[0]), draft, f"{self.uri}/records/{row[0]}.json")
            lineage = draft["lineage"]["id"]
            head = db.execute(
                "SELECT sequence, record_sha256 FROM ledger WHERE lineage = ? ORDER BY sequence DESC LIMIT 1",
                (lineage,),
            ).fetchone()
            if verdict_for is not None:  # the lineage total under the lock: no other publisher can append now
                rows = db.execute("SELECT regulatory_flops FROM ledger WHERE lineage = ?", (lineage,)).fetchall()
                draft = {**draft, "verdict": verdict_for(sum(int(r[0]) for r in rows))}
            record = seal(draft, sequence=(head[0] + 1) if head else 1, previous=head[1] if head else None)
            sha = record["record_sha256"]
            self._write_once(self.path(sha), canonical_json(record))
            db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                (lineage, record["sequence"], sha, record["previous_record_sha256"], record["record_id"],
                 str(record["run"]["flops"]["regulatory"]), record["published_at"]),
            )  # fmt: skip
            db.execute("COMMIT")
            return Published(record, f"{self.uri}/records/{sha}.json", created=True)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @staticmethod
    def _create(path: Path, data: bytes) -> bytes | None:
        """Exclusive create (of two concurrent writers, one wins): None when written, else what is there."""
        try:
            with open(path, "xb") as f:
                f.write(data)
            os.chmod(path, 0o444)
            return None
        except FileExistsError:
            return path.read_bytes()

    def _write_once(self, path: Path, data: bytes) -> None:
        existing = self._create(path, data)
        if existing is not None and existing != data:
            raise MeterError(f"{path} exists with different content: the store has been altered")

    def put_document(self, kind: str, name: str, doc: dict[str, Any]) -> tuple[str, bool]:
        """Write once: (uri, True) when written, (uri, False) when identical content was there."""
        rel = _document_path(kind, name)
        path, uri, data = self.root / rel, f"{self.uri}/{rel}", canonical_json(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = self._create(path, data)
        if existing is not None and existing != data:
            raise DocumentExists(uri, json.loads(existing))
        return uri, existing is None

    def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.root / _document_path(kind, name)
        return _parse_document(path.read_bytes(), str(path)) if path.is_file() else None

    def documents(self, kind: str) -> list[dict[str, Any]]:
        _document_path(kind, "x")
        return [_parse_document(p.read_bytes(), str(p)) for p in sorted((self.root / kind).glob("*.json"))]

    @_ledger_errors
    def lineage_flops(self, lineage: str) -> int:
        with self._db() as db:
            rows = db.execute("SELECT regulatory_flops FROM ledger WHERE lineage = ?", (lineage,)).fetchall()
        return sum(int(r[0]) for r in rows)

    @_ledger_errors
    def entries(self, lineage: str | None = None) -> list[LedgerEntry]:
        query = (
            "SELECT lineage, sequence, record_sha256, previous_record_sha256, record_id, regulatory_flops FROM ledger"
        )
        with self._db() as db:
            rows = db.execute(
                query + (" WHERE lineage = ?" if lineage else ""), (lineage,) if lineage else ()
            ).fetchall()
        return [LedgerEntry(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in rows]

    def get(self, sha: str) -> dict[str, Any]:
        path = self.path(sha)
        if not path.is_file():
            raise MeterError(f"no record {sha} in {self.uri}")
        return _parse_document(path.read_bytes(), str(path))

    def verify(self, lineage: str | None = None, heads: dict[str, Any] | None = None) -> VerifyReport:
        def fetch(entry: LedgerEntry) -> bytes | None:
            path = self.path(entry.record_sha256)
            return path.read_bytes() if path.is_file() else None

        return _verify_all(self, lineage, fetch, heads)

    def stored_records(self) -> set[str]:
        return {p.stem for p in self.records.glob("*.json")}

    def storage_problem(self) -> tuple[str, str] | None:
        return None  # files: nothing more to ask of them (see the README: what a local store can and cannot show)


# --------------------------------------------------------------------------------------------------------------


_REGION_FIX = "add &region=REGION to the store URI, or set AWS_REGION"


class S3Store:
    """S3 Object Lock (COMPLIANCE) for the records, DynamoDB for the ledger. Needs boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        table: str,
        region: str | None,
        retention_days: int | None,
        *,
        required_days: int = 3650,
    ):
        try:
            import boto3
        except ImportError:
            raise MeterError("the S3 audit store needs boto3: pip install 'flops-meter[pipeline]'") from None
        self.bucket, self.prefix, self.table, self.retention_days = bucket, prefix, table, retention_days
        self.required_days = required_days  # retention_days=None: the least default retention the bucket may have
        self.uri = f"s3://{bucket}/{prefix}?table={table}"
        self._bucket_lock_checked = False
        self._session = boto3.session.Session(region_name=region)  # the clients are made on first use

    @functools.cached_property
    def s3(self):
        return self._client("s3")

    @functools.cached_property
    def ddb(self):
        return self._client("dynamodb")

    def _client(self, service: str):
        from botocore.exceptions import BotoCoreError

        try:
            return self._session.client(service, config=boto_config())
        except BotoCoreError as e:
            raise (aws_error(e, f"audit store {self.uri}", _REGION_FIX) or e) from None

    def key(self, sha: str) -> str:
        return f"{self.prefix}/records/{sha}.json" if self.prefix else f"records/{sha}.json"

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as e:
            problem = aws_error(e, f"audit store {self.uri}", _REGION_FIX)
            if problem is None:  # a code the caller handles (NoSuchKey, a lost race, …)
                raise
            raise problem from None

    def publish(self, draft: dict[str, Any], verdict_for: VerdictFor | None = None) -> Published:
        from botocore.exceptions import ClientError

        existing = self._by_record_id(draft["record_id"])
        if existing is not None:
            return _duplicate(self._completed(existing), draft, f"s3://{self.bucket}/{self.key(existing)}")
        if self.retention_days is None:
            self._check_bucket_lock()  # before the ledger claim: a record the bucket would not lock is never claimed
        lineage = draft["lineage"]["id"]
        for attempt in range(_RETRIES):
            if verdict_for is None:
                head = self._head(lineage)
            else:  # head and total from one consistent read; an append after it fails the sequence claim below
                chain = sorted(self.entries(lineage), key=lambda e: e.sequence)
                head = (chain[-1].sequence, chain[-1].record_sha256) if chain else (0, None)
                draft = {**draft, "verdict": verdict_for(sum(e.regulatory_flops for e in chain))}
            record = seal(draft, sequence=head[0] + 1, previous=head[1])
            sha, body = record["record_sha256"], canonical_json(record)
            try:
                # the claim first, the locked object after: a lost race leaves no orphan object behind; the
                # ledger entry carries the record, so a publisher stopped in between is completed by a retry
                self._call(self.ddb.transact_write_items, TransactItems=self._ledger_items(record, body))
            except ClientError as e:
                if e.response["Error"]["Code"] not in (
                    "TransactionCanceledException",
                    "ConditionalCheckFailedException",
                ):
                    raise MeterError(f"audit ledger {self.table}: {e.response['Error']['Message']}") from None
                existing = self._by_record_id(draft["record_id"])
                if existing is not None:  # a concurrent retry of the same run won
                    return _duplicate(self._completed(existing), draft, f"s3://{self.bucket}/{self.key(existing)}")
                # another run took this sequence number: rebuild on the new head after a random wait (full jitter:
                # concurrent losers spread out instead of colliding again)
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                continue
            self._put_object(sha, body)
            return Published(record, f"s3://{self.bucket}/{self.key(sha)}", created=True)
        raise MeterError(f"audit ledger {self.table}: could not append to lineage {lineage} after {_RETRIES} tries")

    def _completed(self, sha: str) -> dict[str, Any]:
        """A published record; when its object is missing (its publisher stopped between the ledger claim and the
        write), written now from the copy its ledger entry holds, once that copy matches its hash."""
        data = self._get_bytes(self.key(sha))
        if data is None:
            data = self._ledger_copy(sha)
            if data is None or not hashes_to(json.loads(data), sha):
                raise MeterError(f"no record {sha} in {self.uri}, and no intact copy in its ledger entry")
            self._put_object(sha, data)
        return json.loads(data)

    def _ledger_copy(self, sha: str) -> bytes | None:
        claim = self._call(
            self.ddb.get_item, TableName=self.table, ConsistentRead=True,
            Key={"lineage": {"S": f"sha#{sha}"}, "sequence": {"N": "0"}},
        ).get("Item")  # fmt: skip
        return claim["record"]["B"] if claim and "record" in claim else None

    def _ledger_items(self, record: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
        lineage, seq, sha = record["lineage"]["id"], record["sequence"], record["record_sha256"]
        entry = {
            "lineage": {"S": lineage},
            "sequence": {"N": str(seq)},
            "record_sha256": {"S": sha},
            "record_id": {"S": record["record_id"]},
            "regulatory_flops": {"N": str(int(record["run"]["flops"]["regulatory"]))},  # integer strings only
            "published_at": {"S": record["published_at"]},
            "key": {"S": self.key(sha)},
        }
        if record["previous_record_sha256"]:
            entry["previous_record_sha256"] = {"S": record["previous_record_sha256"]}
        claim = {"lineage": {"S": f"record#{record['record_id']}"}, "sequence": {"N": "0"}, "record_sha256": {"S": sha}}
        # the record itself, so that a retry can write the object a stopped publisher did not
        copy = {"lineage": {"S": f"sha#{sha}"}, "sequence": {"N": "0"}, "record": {"B": body}}
        condition = "attribute_not_exists(lineage)"
        return [
            {"Put": {"TableName": self.table, "Item": item, "ConditionExpression": condition}}
            for item in (entry, claim, copy)
        ]

    def _create(self, key: str, body: bytes) -> bytes | None:
        """Create the object (IfNoneMatch) with the store's retention: None when written, else what is there."""
        from botocore.exceptions import ClientError

        if self.retention_days is None:
            self._check_bucket_lock()
            lock = {}
        else:
            until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.retention_days)
            lock = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}
        try:
            self._call(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                IfNoneMatch="*",
                **lock,
            )
            return None
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code in ("PreconditionFailed", "412"):
                return self._get_bytes(key) or b""
            raise MeterError(f"audit bucket {self.bucket}: {code}: {e.response['Error'].get('Message', '')}") from None

    def _put_object(self, sha: str, body: bytes) -> None:
        existing = self._create(self.key(sha), body)
        if existing is not None and existing != body:  # content-addressed: what is there must be equal
            raise MeterError(f"s3://{self.bucket}/{self.key(sha)} exists with different content")

    def _doc_key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{_document_path(kind, name)}" if self.prefix else _document_path(kind, name)

    def put_document(self, kind: str, name: str, doc: dict[str, Any]) -> tuple[str, bool]:
        """Write once (IfNoneMatch, under the store's Object Lock retention like the records)."""
        key, body = self._doc_key(kind, name), canonical_json(doc)
        uri = f"s3://{self.bucket}/{key}"
        existing = self._create(key, body)
        if existing is not None and existing != body:
            raise DocumentExists(uri, json.loads(existing or b"{}"))
        return uri, existing is None

    def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        data = self._get_bytes(self._doc_key(kind, name))
        return json.loads(data) if data is not None else None

    def documents(self, kind: str) -> list[dict[str, Any]]:
        prefix = self._doc_key(kind, "x")[: -len("x.json")]
        keys = [o["Key"] for o in self._keys(prefix) if o["Key"].endswith(".json")]
        return [_parse_document(self._get_bytes(k) or b"", f"s3://{self.bucket}/{k}") for k in sorted(keys)]

    def _check_bucket_lock(self) -> None:
        """retention=bucket: refuse to write a record that the bucket would not lock, or not for long enough."""
        from botocore.exceptions import ClientError

        if self._bucket_lock_checked:
            return
        try:
            config = self._call(self.s3.get_object_lock_configuration, Bucket=self.bucket)["ObjectLockConfiguration"]
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code != "ObjectLockConfigurationNotFoundError":
                message = e.response["Error"].get("Message", "")
                raise MeterError(f"audit bucket {self.bucket}: {code}: {message}") from None
            config = {}
        default = config.get("Rule", {}).get("DefaultRetention", {})
        mode = default.get("Mode")
        if config.get("ObjectLockEnabled") != "Enabled" or mode != "COMPLIANCE":
            raise MeterError(
                f"audit bucket {self.bucket} has no default Object Lock retention in COMPLIANCE mode (found "
                f"{mode or 'none'}): records would not be locked; set one on the bucket, or use retention_days=N"
            )
        # S3 gives Days or Years; a year counts as 365 days (it is never shorter)
        days = default.get("Days") or 365 * default.get("Years", 0)
        if days < self.required_days:
            years = default.get("Years")
            found = f"{years} year{'s' * (years != 1)} ({days} days)" if years else f"{days} days"
            raise MeterError(
                f"audit bucket {self.bucket} locks records for {found} by default, less than the {self.required_days} "
                f"days this store requires: raise the bucket's default COMPLIANCE retention to at least "
                f"{self.required_days} days (records written before keep their shorter retention)"
            )
        self._bucket_lock_checked = True

    def _head(self, lineage: str) -> tuple[int, str | None]:
        out = self._call(
            self.ddb.query,
            TableName=self.table,
            KeyConditionExpression="lineage = :l",
            ExpressionAttributeValues={":l": {"S": lineage}},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = out.get("Items", [])
        return (int(items[0]["sequence"]["N"]), items[0]["record_sha256"]["S"]) if items else (0, None)

    def _by_record_id(self, record_id: str) -> str | None:
        out = self._call(
            self.ddb.get_item,
            TableName=self.table,
            Key={"lineage": {"S": f"record#{record_id}"}, "sequence": {"N": "0"}},
            ConsistentRead=True,
        )
        item = out.get("Item")
        return item["record_sha256"]["S"] if item else None

    def _get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self._call(self.s3.get_object, Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def _query_all(self, **kwargs) -> list[dict[str, Any]]:
        items, start = [], None
        while True:
            page = self._call(self.ddb.query if "KeyConditionExpression" in kwargs else self.ddb.scan,
                              **kwargs, **({"ExclusiveStartKey": start} if start else {}))  # fmt: skip
            items += page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                return items

    def entries(self, lineage: str | None = None) -> list[LedgerEntry]:
        if lineage is not None:
            items = self._query_all(
                TableName=self.table,
                KeyConditionExpression="lineage = :l",
                ExpressionAttributeValues={":l": {"S": lineage}},
                ConsistentRead=True,
            )
        else:
            items = [i for i in self._query_all(TableName=self.table, ConsistentRead=True) if i["sequence"]["N"] != "0"]
        return [
            LedgerEntry(
                i["lineage"]["S"],
                int(i["sequence"]["N"]),
                i["record_sha256"]["S"],
                i.get("previous_record_sha256", {}).get("S"),
                i["record_id"]["S"],
                int(i["regulatory_flops"]["N"]),
            )
            for i in items
        ]

    def lineage_flops(self, lineage: str) -> int:
        return sum(e.regulatory_flops for e in self.entries(lineage))

    def get(self, sha: str) -> dict[str, Any]:
        data = self._get_bytes(self.key(sha))
        if data is None:
            raise MeterError(f"no record {sha} in {self.uri}")
        return _parse_document(data, f"s3://{self.bucket}/{self.key(sha)}")

    def verify(self, lineage: str | None = None, heads: dict[str, Any] | None = None) -> VerifyReport:
        return _verify_all(self, lineage, lambda e: self._get_bytes(self.key(e.record_sha256)), heads)

    def _keys(self, prefix: str, versions: bool = False) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        kind = "list_object_versions" if versions else "list_objects_v2"
        try:
            pages = self._call(lambda: list(self.s3.get_paginator(kind).paginate(Bucket=self.bucket, Prefix=prefix)))
        except ClientError as e:
            error = e.response["Error"]
            raise MeterError(f"audit store {self.uri}: {error.get('Code')}: {error.get('Message', '')}") from None
        if not versions:
            return [o for page in pages for o in page.get("Contents", [])]
        return [
            {**o, "DeleteMarker": kind == "DeleteMarkers"}
            for page in pages
            for kind in ("Versions", "DeleteMarkers")
            for o in page.get(kind, [])
        ]

    def stored_records(self) -> set[str]:
        prefix = self.key("x")[: -len("x.json")]
        return {o["Key"][len(prefix) : -len(".json")] for o in self._keys(prefix) if o["Key"].endswith(".json")}

    def storage_problem(self) -> tuple[str, str] | None:
        """Write-once documents have exactly one version (a second one, or a delete marker, is tampering that
        Object Lock kept but that would hide the original), and the bucket still locks in COMPLIANCE mode."""
        seen: dict[str, int] = {}
        for version in self._keys(f"{self.prefix}/" if self.prefix else "", versions=True):
            key = version["Key"]
            if version["DeleteMarker"]:
                return f"s3://{self.bucket}/{key}", "a delete marker hides a write-once document (tampering)"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                return f"s3://{self.bucket}/{key}", "a write-once document has more than one version (overwritten)"
        if self.retention_days is None:  # records take the bucket's default retention: it must still be there
            self._bucket_lock_checked = False
            try:
                self._check_bucket_lock()
            except MeterError as e:
                return f"s3://{self.bucket}", str(e)
        return None
