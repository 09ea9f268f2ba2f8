"""Reading a JSON object from a file a user named, with the one-line errors the CLI and the steps promise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meter.errors import MeterError


def read_json_object(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; a MeterError naming ``what`` when it is missing, invalid or not an object."""
    p = Path(path)
    if not p.is_file():
        raise MeterError(f"{what} not found: {p}" + (f" ({hint})" if hint else ""))
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MeterError(f"{what} {p} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(doc, dict):
        raise MeterError(f"{what} {p} must hold a JSON object")
    return doc
