"""Verifying a store: every chain, the store against its ledger, an export of the heads kept outside the store,
and the flagged items and decisions of the approval workflow. One procedure for every store: a store gives its
ledger entries, its stored records, its documents and a way to fetch a record's bytes.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meter.audit.chain import LedgerEntry, VerifyReport, verify_chain
from meter.audit.flagged import FLAGGED_STATUSES, check_decision, item_id
from meter.timestamps import utc_timestamp

if TYPE_CHECKING:
    from meter.audit.store import AuditStore

Fetch = Callable[[LedgerEntry], bytes | None]  # the stored bytes of an entry's record, None when missing


def verify_all(
    store: AuditStore, lineage: str | None, fetch: Fetch, heads: dict[str, Any] | None = None
) -> VerifyReport:
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
    decisions, flagged = _anchored(store.documents("flagged"), store.documents("decisions"))
    return {"record_type": "flops_meter.heads", "store": store.uri, "exported_at": utc_timestamp(), "heads": heads,
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
