"""The audit record: one run, its verdict, its place in the hash chain of its model lineage.

A record is content-addressed: ``record_sha256`` is the SHA-256 of its canonical JSON (sorted keys, no spaces,
UTF-8, no NaN) without that field. Records of one lineage form a chain through ``previous_record_sha256`` and a
``sequence`` number, so that changing one byte of any record, or removing one from the middle, is detectable.
The schema is ``meter/schemas/audit_record.v1.json`` — the one definition of the record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from meter.errors import MeterError
from meter.timestamps import utc_timestamp

SCHEMA_VERSION = 1
CHAIN_FIELDS = ("sequence", "previous_record_sha256", "published_at", "record_sha256")

METHODOLOGY = (
    "Architecture-based method of the Commission Guidelines (Annex A): the FLOPs of every matrix product of the "
    "forward and backward passes, computed from the model's configuration (not from parameter storage) and from "
    "the exact tokens of every training batch as they ran (non-padding tokens; causal attention counted as the "
    "query-key pairs it needs; gradients only where a trainable parameter needs them). Recomputation of "
    "activations (gradient checkpointing) is excluded, as the Guidelines require; it is reported separately in "
    "the executed count with padding and kernel attention. All precisions count alike; a multiply-add is 2 FLOP."
)
UNCERTAINTY = (
    "The count is exact at the level of matrix multiplications: it equals torch.utils.flop_counter.FlopCounterMode "
    "on the project's test models (measured relative error 0). Element-wise operations (norms, activations, "
    "softmax, bias additions) are not counted; they are well below 1 % of a transformer's compute. The Guidelines "
    "allow an estimate within 30 % (Annex A.2)."
)


def canonical_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as e:
        raise MeterError(f"a record must not contain NaN or infinity: {e}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(record: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in record.items() if k != "record_sha256"}))


def hashes_to(record: Any, sha: str | None) -> bool:
    """Whether a record is the one published under ``sha``: its content hashes to it, and it says so itself."""
    return isinstance(record, dict) and record_hash(record) == sha and record.get("record_sha256") == sha


def content_hash(record: dict[str, Any]) -> str:
    """The hash of what a run says, without its place in the chain: equal for an idempotent retry."""
    return sha256_hex(canonical_json({k: v for k, v in record.items() if k not in CHAIN_FIELDS}))


@cache
def schema() -> dict[str, Any]:
    return json.loads((resources.files("meter") / "schemas" / "audit_record.v1.json").read_text())


def validate(record: dict[str, Any]) -> None:
    """Raise MeterError naming the first place a record departs from the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    error = next(iter(sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(record)"
        raise MeterError(f"audit record does not match schema v{SCHEMA_VERSION} at {where}: {error.message}")


def draft_record(
    run: dict[str, Any],
    verdict: dict[str, Any],
    *,
    lineage_id: str,
    base_model: str,
    base_revision: str | None = None,
    parent_records: list[str] | None = None,
    dataset: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record without its chain fields; a store completes it (sequence, previous, published_at, hash)."""
    from meter import __version__

    if run.get("record_type") != "flops_meter.run" or "run_id" not in run:
        raise MeterError("not a meter run record: expected flops_meter.json as written by the meter")
    ds = {"uri": None, "size_bytes": None, "sha256": None, "etag": None, **(dataset or {})}
    return {
        "schema_version": SCHEMA_VERSION,
        "record_type": "flops_meter.audit",
        "record_id": run["run_id"],
        "lineage": {
            "id": lineage_id,
            "base_model": {"id": base_model, "revision": base_revision},
            "parent_records": list(parent_records or []),
        },
        "run": run,
        "verdict": verdict,
        "dataset": ds,
        "code": {"package_version": __version__, "git_commit": None, "container_image": None, **(code or {})},
        "methodology": METHODOLOGY,
        "uncertainty": {"allowed_relative_error": 0.3, "measured_relative_error": 0.0, "statement": UNCERTAINTY},
    }


def seal(draft: dict[str, Any], *, sequence: int, previous: str | None, now: dt.datetime | None = None) -> dict:
    """Place a draft in its chain and compute its hash; validates against the schema."""
    record = {
        **{k: v for k, v in draft.items() if k not in CHAIN_FIELDS},
        "sequence": sequence,
        "previous_record_sha256": previous,
        "published_at": utc_timestamp(now, fraction=True),  # to the microsecond: it orders records of one second
    }
    record["record_sha256"] = record_hash(record)
    validate(record)
    return record


@dataclass(frozen=True)
class LedgerEntry:
    lineage: str
    sequence: int
    record_sha256: str
    previous_record_sha256: str | None
    record_id: str
    regulatory_flops: int


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    broken: str | None = None  # the first broken record (its sha, or its lineage and sequence)
    reason: str | None = None
    decisions: int = 0  # approval decisions checked (hash, item, and the record they decide on)

    def line(self) -> str:
        if self.ok:
            decided = f" and {self.decisions} decision(s)" if self.decisions else ""
            return f"audit verify: {self.checked} record(s){decided}, every hash and chain link intact"
        return f"audit verify: BROKEN at {self.broken}: {self.reason}"


def _ledger_differs(entry: LedgerEntry, record: dict[str, Any]) -> str | None:
    flops = ((record.get("run") or {}).get("flops") or {}).get("regulatory")
    for field, ledger, sealed in (
        ("regulatory_flops", entry.regulatory_flops, int(flops) if isinstance(flops, (int, float)) else flops),
        ("record_id", entry.record_id, record.get("record_id")),
        ("lineage", entry.lineage, (record.get("lineage") or {}).get("id")),
        ("previous_record_sha256", entry.previous_record_sha256, record.get("previous_record_sha256")),
    ):
        if ledger != sealed:
            return f"{field} {ledger!r} differs from the record's {sealed!r}"
    return None


def verify_chain(entries: list[LedgerEntry], fetch) -> VerifyReport:
    """Recompute every hash and link of one lineage. ``fetch(entry)`` returns the stored bytes or None."""
    previous: str | None = None
    for index, entry in enumerate(sorted(entries, key=lambda e: e.sequence), start=1):
        name = f"{entry.lineage}#{entry.sequence} ({entry.record_sha256[:12]})"
        if entry.sequence != index:
            return VerifyReport(False, index - 1, f"{entry.lineage}#{index}", "a record is missing from the chain")
        data = fetch(entry)
        if data is None:
            return VerifyReport(False, index - 1, name, "record object missing from the store")
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
            return VerifyReport(False, index - 1, name, "record is not valid JSON (altered)")
        if not hashes_to(record, entry.record_sha256):
            return VerifyReport(False, index - 1, name, "content does not match its SHA-256 (altered)")
        if record.get("previous_record_sha256") != previous or record.get("sequence") != entry.sequence:
            return VerifyReport(False, index - 1, name, "chain link broken: previous record differs")
        # the ledger is what sums and verdicts are read from: each of its fields must be the record's
        differs = _ledger_differs(entry, record)
        if differs:
            return VerifyReport(False, index - 1, name, f"the ledger's {differs} (the ledger was altered)")
        previous = entry.record_sha256
    return VerifyReport(True, len(entries))
