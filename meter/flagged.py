"""Flagged items and decisions: what the approval workflow keeps in the audit store, beside the records.

A run whose verdict makes its organisation a provider (``gpai_provider``, ``gpai_sr_provider``) or comes close
(``approaching``) becomes a *flagged item*: a write-once document pointing at its record, its report and, when
registration was blocked, the model artifact that was not registered. A *decision* on an item (approved or
rejected, by a named person, with a reason) is another write-once document, keyed by the item: a second decision
on the same item is refused by the store itself. A decision holds the run record's SHA-256 and its own, so it is
chained to the record and any later change to it is detectable. An item's status is derived: pending until a
decision exists.

Plain dictionaries and hashlib only: this runs in the PublishAudit container and in the notification function.
"""

from __future__ import annotations

import hashlib
from typing import Any

from meter.audit import canonical_json

FLAGGED_STATUSES = ("gpai_provider", "gpai_sr_provider", "approaching")
ITEM_VERSION = DECISION_VERSION = 1


def item_id(record_sha256: str) -> str:
    """The item of a record: the record hash's first 12 hex digits (what the CLI takes)."""
    return record_sha256[:12]


def flagged_item(
    record: dict[str, Any], record_uri: str, *, model_uri: str | None = None, report_uri: str | None = None
) -> dict[str, Any] | None:
    """The flagged item of a published record, or None when its verdict needs no decision.

    Deterministic in its inputs, so PublishAudit and the notification function write the same bytes (the second
    write is a no-op).
    """
    verdict = record["verdict"]
    if verdict["status"] not in FLAGGED_STATUSES:
        return None
    return {
        "item_version": ITEM_VERSION,
        "id": item_id(record["record_sha256"]),
        "verdict": verdict["status"],
        "blocked": bool(verdict["crossed"]),  # registration was refused: approval registers the model
        "lineage": record["lineage"]["id"],
        "base_model": record["lineage"]["base_model"]["id"],
        "run_id": record["record_id"],
        "figures": verdict.get("figures", {}),
        "threshold_rule": verdict.get("threshold_rule"),
        "record_sha256": record["record_sha256"],
        "record_uri": record_uri,
        "report_uri": report_uri or None,
        "model_uri": model_uri or None,
        "flagged_at": record["published_at"],
    }


def decision_hash(decision: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in decision.items() if k != "decision_sha256"})).hexdigest()


def decision_document(
    item: dict[str, Any],
    *,
    decision: str,
    approver: str,
    reason: str,
    decided_at: str,
    accepted_provider_obligations: bool = False,
    model_package: str | None = None,
) -> dict[str, Any]:
    doc = {
        "decision_version": DECISION_VERSION,
        "item_id": item["id"],
        "decision": decision,
        "approver": approver,
        "reason": reason,
        "accepted_provider_obligations": accepted_provider_obligations,
        "verdict": item["verdict"],
        "record_sha256": item["record_sha256"],  # the chain: this decision is about exactly that record
        "model_package": model_package,
        "decided_at": decided_at,
    }
    return {**doc, "decision_sha256": decision_hash(doc)}
