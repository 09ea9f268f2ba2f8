"""The write-once rules both stores keep: what a publication returns, when a second publication of a run is a retry
and when it is an error, how documents (flagged items, decisions) are named, and that a stored document that does
not parse was altered.

Below the stores and ``meter.audit.store`` (which chooses a store and so imports them): both stores import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meter.audit.chain import content_hash
from meter.errors import MeterError

# decides the verdict to seal from the lineage's total before this record, read atomically with the append
VerdictFor = Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class Published:
    record: dict[str, Any]
    uri: str
    created: bool  # False: an identical record was already there


class DocumentExists(MeterError):
    """A write-once document is already there with other content (e.g. a second decision on one item)."""

    def __init__(self, uri: str, existing: dict[str, Any]):
        super().__init__(f"{uri} already exists with other content: documents are written once")
        self.uri, self.existing = uri, existing


DOCUMENT_KINDS = ("flagged", "decisions")  # approval workflow: flagged items and the decisions taken on them
_DOCUMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def document_path(kind: str, name: str) -> str:
    """``kind/name.json``, relative to a store's root; a MeterError for an unknown kind or an unsafe name."""
    if kind not in DOCUMENT_KINDS or not _DOCUMENT_NAME.match(name):
        raise MeterError(f"document {kind}/{name}: kind must be one of {DOCUMENT_KINDS}, name letters and digits")
    return f"{kind}/{name}.json"


def parse_document(data: bytes, where: str) -> dict[str, Any]:
    """A stored JSON object; anything else means it was altered or truncated."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        doc = None
    if not isinstance(doc, dict):
        raise MeterError(f"{where} is not a JSON document: it was altered or truncated")
    return doc


def duplicate(existing: dict[str, Any], draft: dict[str, Any], uri: str) -> Published:
    """A run published again: a no-op when it says the same (an idempotent retry), an error when it differs."""
    if content_hash(existing) != content_hash(draft):
        raise MeterError(
            f"record {draft['record_id']} is already published with different content ({existing['record_sha256']}):"
            " records are append-only; publish the corrected run under a new run id"
        )
    return Published(existing, uri, created=False)
