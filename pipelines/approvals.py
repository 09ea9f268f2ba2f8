"""`flops-meter approvals …`: a named person decides on a flagged model, and the registry follows the decision.

    list      flagged items with their status (pending, approved, rejected)
    show      one item: verdict, figures, record, report, model, decision
    approve   a blocked model (crossed the threshold; needs --accept-provider-obligations) is registered, Approved;
              an approaching model's registered package is set to Approved
    reject    the decision is recorded; a blocked model stays unregistered, an approaching model's package is
              set to Rejected

The decision is written to the audit store first, write-once: that claims the item, so a second decision (or a
race between two approvers) is refused by the store. The registry is updated after; if that fails, running the
same command again completes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from meter.audit.flagged import decision_document
from meter.errors import MeterError
from meter.timestamps import utc_timestamp
from pipelines.registries import Registry, description_text, metadata_value, model_package_request, verdict_metadata

STATUSES = ("pending", "approved", "rejected")
_REF = re.compile(r"^[0-9a-f]{4,64}$")


@dataclass
class Item:
    doc: dict[str, Any]
    decision: dict[str, Any] | None

    @property
    def id(self) -> str:
        return self.doc["id"]

    @property
    def status(self) -> str:
        return self.decision["decision"] if self.decision else "pending"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, **{k: v for k, v in self.doc.items() if k != "id"},
                "decision": self.decision}  # fmt: skip


# what this module reads of each document with [...]: a document without one of them was not written by the meter
_ITEM_FIELDS = {"id": "string", "record_sha256": "string", "record_uri": "string", "verdict": "string",
                "blocked": "boolean", "lineage": "string", "base_model": "string", "figures": "object"}  # fmt: skip
_DECISION_FIELDS = {"item_id": "string", "decision": "string", "approver": "string", "reason": "string",
                    "decided_at": "string"}  # fmt: skip


def _checked(docs: list[dict[str, Any]], fields: dict[str, str], what: str, store) -> list[dict[str, Any]]:
    from meter.jsonfile import check_shape

    for doc in docs:
        name = doc.get("id") or doc.get("item_id")
        where = f"a {what} in {store.uri}" + (f" ({name})" if isinstance(name, str) else "")
        missing = [k for k in fields if k not in doc and k != "figures"]  # figures: older items lack them
        if missing:
            raise MeterError(f"{where} has no {', '.join(missing)}: altered or forged (see flops-meter audit verify)")
        check_shape(doc, fields, where)
    return docs


def load_items(store) -> list[Item]:
    decided = _checked(store.documents("decisions"), _DECISION_FIELDS, "decision", store)
    decisions = {d["item_id"]: d for d in decided}
    flagged = _checked(store.documents("flagged"), _ITEM_FIELDS, "flagged item", store)
    items = [Item(doc, decisions.get(doc["id"])) for doc in flagged]
    return sorted(items, key=lambda i: (i.doc.get("flagged_at") or "", i.id))


def find_item(store, ref: str) -> Item:
    """An item by its id, a unique prefix of it, or its record's SHA-256 (or a prefix of that)."""
    ref = ref.strip().lower()
    if not _REF.match(ref):
        raise MeterError(f"item {ref!r}: give the id from `flops-meter approvals list` (hex digits)")
    matches = [i for i in load_items(store) if i.doc["record_sha256"].startswith(ref)]
    if len(matches) != 1:
        problem = "is ambiguous" if matches else "not found"
        raise MeterError(f"item {ref!r} {problem} in {store.uri}: see `flops-meter approvals list`")
    return matches[0]


def _required(value: str | None, flag: str) -> str:
    text = (value or "").strip()
    if not text:
        raise MeterError(f"{flag} is empty: a decision names who took it and why")
    return text


@dataclass
class Outcome:
    item: Item
    decision: dict[str, Any]
    decision_uri: str
    package: str | None  # the package registered or updated
    action: str  # what the registry did: registered, approved, rejected, nothing
    completed_earlier: bool = False  # the decision was already recorded; this run completed its registry update


def decide(
    store,
    registry: Registry,
    ref: str,
    *,
    decision: str,
    approver: str | None,
    reason: str | None,
    accept_provider_obligations: bool = False,
    decided_at: str | None = None,
) -> Outcome:
    if decision not in ("approved", "rejected"):
        raise MeterError(f"decision {decision!r}: approved or rejected")
    approver, reason = _required(approver, "--approver"), _required(reason, "--reason")
    item = find_item(store, ref)
    doc = item.doc
    if item.decision is not None:
        return _complete(store, registry, item, decision)
    if decision == "approved" and doc["blocked"] and not accept_provider_obligations:
        raise MeterError(
            f"item {item.id} crossed the threshold ({doc['verdict']}): approving registers a model whose provider "
            "obligations your organisation takes on (AI Act Art. 53; Art. 55 with systemic risk). Repeat with "
            "--accept-provider-obligations to accept them"
        )
    record = store.get(doc["record_sha256"])  # the decision is about this record: it must be there
    found = None
    if doc["blocked"]:
        if decision == "approved":
            _check_registrable(doc)
    else:  # approaching: the pipeline registered it, PendingManualApproval
        found = _registered_package(registry, item)
    document = decision_document(
        doc,
        decision=decision,
        approver=approver,
        reason=reason,
        decided_at=decided_at or utc_timestamp(),
        accepted_provider_obligations=accept_provider_obligations,
        model_package=found["arn"] if found else None,
    )
    from meter.audit.write_once import DocumentExists

    try:
        uri, _ = store.put_document("decisions", item.id, document)
    except DocumentExists as e:  # another approver was faster
        raise MeterError(_already(item.id, e.existing)) from None
    return _apply(registry, Item(doc, document), uri, record, found)


def _registered_package(registry: Registry, item: Item) -> dict[str, Any]:
    found = registry.package_of(item.doc)
    if found is None:
        raise MeterError(
            f"item {item.id}: no model package in {registry.where} carries record {item.doc['record_sha256'][:12]} "
            "(was the run registered there? --registry and --home choose the registry)"
        )
    return found


def _check_registrable(doc: dict[str, Any]) -> None:
    missing = [k for k in ("model_uri", "model_package_group", "inference_image") if not doc.get(k)]
    if missing:
        raise MeterError(
            f"item {doc['id']} does not name its {', '.join(missing)} (an older PublishAudit flagged it): it cannot "
            "be registered from here; register the model by hand (nothing was recorded)"
        )


def _already(item_id: str, decision: dict[str, Any]) -> str:
    return (
        f"item {item_id} was already {decision['decision']} by {decision['approver']} at {decision['decided_at']}: "
        "decisions are final (a new run is a new item)"
    )


def _complete(store, registry: Registry, item: Item, decision: str) -> Outcome:
    """A decision exists: refuse a second one, or finish the registry update an interrupted command left."""
    doc, recorded = item.doc, item.decision
    if recorded["decision"] != decision or (doc["blocked"] and decision == "rejected"):
        raise MeterError(_already(item.id, recorded))  # another verb, or nothing to finish: it stays unregistered
    if doc["blocked"]:
        found = registry.package_of(doc)
        done = found is not None  # the approval's registration is there
    else:
        found = _registered_package(registry, item)
        done = found["status"] == ("Approved" if decision == "approved" else "Rejected")
    if done:
        raise MeterError(_already(item.id, recorded))
    record = store.get(doc["record_sha256"])
    uri = store.put_document("decisions", item.id, recorded)[0]  # identical: returns where it is
    return _apply(registry, item, uri, record, found, completed_earlier=True)


def _decision_metadata(decision: dict[str, Any], decision_uri: str) -> dict[str, str]:
    return {
        "flops_meter:decision": decision["decision"],
        "flops_meter:decision_uri": decision_uri,
        "flops_meter:decision_sha256": decision["decision_sha256"],
        "flops_meter:approver": metadata_value(decision["approver"]),
    }


def _description(decision: dict[str, Any]) -> str:
    return description_text(f"{decision['decision']} by {decision['approver']}: {decision['reason']}")


def _apply(
    registry: Registry,
    item: Item,
    uri: str,
    record: dict[str, Any],
    found: dict[str, Any] | None,
    completed_earlier: bool = False,
) -> Outcome:
    """The registry follows the recorded decision; ``found``: the approaching model's registered package."""
    doc, decision = item.doc, item.decision
    metadata = _decision_metadata(decision, uri)
    if doc["blocked"]:
        if decision["decision"] == "rejected":
            return Outcome(item, decision, uri, None, "nothing", completed_earlier)
        arn = registry.register(registration_request(doc, record, decision, metadata))
        return Outcome(item, decision, uri, arn, "registered", completed_earlier)
    status = "Approved" if decision["decision"] == "approved" else "Rejected"
    registry.set_status(found["arn"], status, _description(decision), metadata)
    return Outcome(item, decision, uri, found["arn"], status.lower(), completed_earlier)


def registration_request(
    doc: dict[str, Any], record: dict[str, Any], decision: dict[str, Any], metadata: dict[str, str]
) -> dict[str, Any]:
    """CreateModelPackage for an approved blocked model: what RegisterModel would have sent, Approved."""
    from steps.model_card import model_card

    verdict = record["verdict"]
    return model_package_request(
        group=doc["model_package_group"],
        image=doc["inference_image"],
        model_data_url=doc["model_uri"],
        status="Approved",
        description=description_text(f"Crossed the compute threshold ({doc['verdict']}); {_description(decision)}"),
        metadata={
            **verdict_metadata(
                regulatory=str(record["run"]["flops"]["regulatory"]),
                cumulative=str(verdict["cumulative_flops"]),
                threshold=str(verdict["threshold_flops"]),
                rule=str(verdict.get("threshold_rule")),
                status=verdict["status"],
                record_uri=doc["record_uri"],
                record_sha256=doc["record_sha256"],
            ),
            **metadata,
        },
        model_card=model_card(record, doc["model_uri"]),
    )


# -- the command -----------------------------------------------------------------------------------------------------
