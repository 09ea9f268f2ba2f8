"""Timestamps: one spelling for every time the package writes down.

RFC 3339 in UTC with a ``Z``: ``2026-11-23T09:30:00Z``; with ``fraction=True`` to the microsecond,
``2026-11-23T09:30:00.123456Z`` (a record's ``published_at``, which orders the records of one second). Never a
local time, never ``+00:00``: the strings compare in time order and read the same everywhere.
"""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """Now, as an aware datetime in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def utc_timestamp(when: dt.datetime | float | None = None, *, fraction: bool = False) -> str:
    """``when`` (default now) as ``YYYY-MM-DDTHH:MM:SSZ``, or ``…SS.ffffffZ`` with ``fraction``.

    ``when`` is a datetime (an aware one is converted to UTC; a naive one is taken as UTC already) or POSIX
    seconds (``time.time()``)."""
    if when is None:
        when = utc_now()
    elif isinstance(when, (int, float)):
        when = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    elif when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")
