"""Audit stores behind one interface, chosen by URI. Append-only, content-addressed, chained per lineage.

``file://DIR``                  records as files ``DIR/records/<sha256>.json`` plus an SQLite ledger — the
                                embedded default for one machine (``meter.audit.file_store``).
``s3://BUCKET/PREFIX?table=T``  records in S3 with Object Lock COMPLIANCE retention and SHA-256 checksums, written
                                with ``IfNoneMatch="*"``; a DynamoDB ledger (key: lineage, sequence) written with
                                conditional transactions (``meter.audit.s3_store``). Options: ``region=``,
                                ``retention_days=`` (default 3650: each record carries its own retain-until date;
                                the writer needs s3:PutObjectRetention) or ``retention=bucket`` (records take the
                                bucket's default COMPLIANCE retention, which must be at least ``retention_days``,
                                checked before the first write and by verify; the writer needs no right over
                                retention — what the CDK app deploys).

Publishing a run a second time is a no-op when its content is identical (an idempotent retry) and an error when
it differs (``meter.audit.write_once``). Both stores verify alike (``meter.audit.verify``). boto3 is imported only
by the S3 store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from meter.audit.chain import LedgerEntry, VerifyReport
from meter.audit.write_once import Published, VerdictFor
from meter.errors import MeterError

# The store when none is given: `audit`, `approvals` and `pipeline run --local` share it from the same directory
# with no flags (the local runner's home, pipelines.config.DEFAULT_HOME, is this path's directory);
# FLOPS_METER_STORE or --store point them all elsewhere.
DEFAULT_STORE = "file://./flops-meter-local/audit"


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


def open_store(uri: str | None = None, *, create: bool = True) -> AuditStore | None:
    """file://DIR (or a plain directory path) or s3://BUCKET/PREFIX?table=NAME; default $FLOPS_METER_STORE, else
    the local default. ``create=False``: None for a local store that does not exist yet (reading creates nothing)."""
    uri = uri or os.environ.get("FLOPS_METER_STORE") or DEFAULT_STORE
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        from meter.audit.file_store import FileStore

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
        from meter.audit.s3_store import S3Store

        args = (parsed.netloc, parsed.path.strip("/"), query["table"], query.get("region"))
        if "retention" in query:  # the bucket locks each record; its default retention must be at least this long
            return S3Store(*args, None, required_days=int(days))
        return S3Store(*args, int(days))
    raise MeterError(f"audit store {uri!r}: use file://DIR or s3://BUCKET/PREFIX?table=NAME")


def _is_file(path: Path, uri: str) -> bool:
    try:
        return path.is_file()
    except OSError as e:  # a name too long for the file system
        raise MeterError(f"audit store {uri}: {e.strerror}: give another --store") from None
