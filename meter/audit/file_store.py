"""The local audit store, ``file://DIR``: records as read-only files ``DIR/records/<sha256>.json``, flagged items
and decisions as ``DIR/<kind>/<name>.json``, and an SQLite ledger ``DIR/ledger.sqlite`` (key: lineage, sequence)
whose write lock serialises the publishers of one machine. The embedded default.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from meter.audit.chain import LedgerEntry, VerifyReport, canonical_json, seal
from meter.audit.verify import verify_all
from meter.audit.write_once import (
    DocumentExists,
    Published,
    VerdictFor,
    document_path,
    duplicate,
    parse_document,
)
from meter.errors import MeterError


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
                return duplicate(self.get(row[0]), draft, f"{self.uri}/records/{row[0]}.json")
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
        rel = document_path(kind, name)
        path, uri, data = self.root / rel, f"{self.uri}/{rel}", canonical_json(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = self._create(path, data)
        if existing is not None and existing != data:
            raise DocumentExists(uri, json.loads(existing))
        return uri, existing is None

    def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.root / document_path(kind, name)
        return parse_document(path.read_bytes(), str(path)) if path.is_file() else None

    def documents(self, kind: str) -> list[dict[str, Any]]:
        document_path(kind, "x")
        return [parse_document(p.read_bytes(), str(p)) for p in sorted((self.root / kind).glob("*.json"))]

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
        return parse_document(path.read_bytes(), str(path))

    def verify(self, lineage: str | None = None, heads: dict[str, Any] | None = None) -> VerifyReport:
        def fetch(entry: LedgerEntry) -> bytes | None:
            path = self.path(entry.record_sha256)
            return path.read_bytes() if path.is_file() else None

        return verify_all(self, lineage, fetch, heads)

    def stored_records(self) -> set[str]:
        return {p.stem for p in self.records.glob("*.json")}

    def storage_problem(self) -> tuple[str, str] | None:
        return None  # files: nothing more to ask of them (see the README: what a local store can and cannot show)
