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

from meter.audit.chain import canonical_json

FLAGGED_STATUSES = ("gpai_provider", "gpai_sr_provider", "approaching")
ITEM_VERSION = DECISION_VERSION = 1


def item_id(record_sha256: str) -> str:
    """The item of a record: the record hash's first 12 hex digits (what the CLI takes)."""
    return record_sha256[:12]


def flagged_item(
    record: dict[str, Any],
    record_uri: str,
    *,
    model_uri: str | None = None,
    report_uri: str | None = None,
    model_package_group: str | None = None,
    inference_image: str | None = None,
) -> dict[str, Any] | None:
    """The flagged item of a published record, or None when its verdict needs no decision.

    Deterministic in its inputs, so a retried PublishAudit writes the same bytes (the second write is a no-op).
    The model package group and serving image are what an approval registers the model with.
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
        "model_package_group": model_package_group or None,
        "inference_image": inference_image or None,
        "flagged_at": record["published_at"],
    }


def flag(store, record: dict[str, Any], record_uri: str, **where: str | None) -> dict[str, Any] | None:
    """Put a published record's flagged item in the approvals queue (write-once; a retry writes the same bytes),
    or nothing when its verdict needs no decision. ``where``: model, report, group and image (see flagged_item)."""
    item = flagged_item(record, record_uri, **where)
    if item is not None:
        store.put_document("flagged", item["id"], item)
    return item


def item_hash(item: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(item)).hexdigest()


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
    """A decision on an item. ``model_package``: the registered package an approval approves (``approaching``);
    for a blocked model it is None, the package is created after the decision and names it in its metadata."""
    doc = {
        "decision_version": DECISION_VERSION,
        "item_id": item["id"],
        "decision": decision,
        "approver": approver,
        "reason": reason,
        "accepted_provider_obligations": accepted_provider_obligations,
        "verdict": item["verdict"],
        "record_sha256": item["record_sha256"],  # the chain: this decision is about exactly that record
        "item_sha256": item_hash(item),  # ... and that item (its model artifact, report, group)
        "model_package": model_package,
        "model_package_group": item.get("model_package_group"),
        "decided_at": decided_at,
    }
    return {**doc, "decision_sha256": decision_hash(doc)}


def check_decision(decision: dict[str, Any], item: dict[str, Any] | None, record: dict[str, Any] | None) -> str | None:
    """Why a stored decision does not hold (altered, or not about its item's record), or None when it does."""
    if decision.get("decision_sha256") != decision_hash(decision):
        return "content does not match its SHA-256 (altered)"
    if item is None:
        return f"its flagged item {decision.get('item_id')} is missing"
    if decision.get("record_sha256") != item.get("record_sha256") or decision.get("item_id") != item.get("id"):
        return "it names another record than its flagged item"
    if decision.get("item_sha256") != item_hash(item):
        return f"its flagged item {item.get('id')} changed after the decision (altered)"
    if record is None or record.get("record_sha256") != decision["record_sha256"]:
        return f"the record it decides on ({decision['record_sha256'][:12]}) is not in the store"
    if item.get("verdict") != record["verdict"]["status"] or decision.get("verdict") != item.get("verdict"):
        return "its verdict differs from the record's"
    return None
