"""Reading and writing the files a user names, with the one-line errors the CLI and the steps promise.

Every file a command reads goes through here: a missing or unreadable file, a name the file system refuses, bytes
that are not UTF-8, JSON that does not parse (or holds NaN, infinity, a number too large, a lone surrogate, or nests
too deeply) and a document of the wrong shape each give a MeterError naming the file. ``check_shape`` checks the
fields a reader relies on, so that a list where an object belongs is an error naming the field, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meter.errors import MeterError


def os_problem(error: OSError, path: str | Path, what: str, doing: str = "read") -> MeterError:
    """A MeterError for an OSError on ``path``: what the system said and what to do about it."""
    reason = error.strerror or str(error)
    advice = {
        "IsADirectoryError": "give a file, not a directory",
        "NotADirectoryError": "a part of the path is a file, not a directory",
        "FileNotFoundError": "check the path" + (": its directory must exist" if doing == "write" else ""),
        "PermissionError": "check its permissions",
    }.get(type(error).__name__, "check the path")
    if error.errno == errno.ENAMETOOLONG:
        advice = "use a shorter path"
    return MeterError(f"cannot {doing} {what} {path}: {reason} ({advice})")


def read_bytes(path: str | Path, what: str, hint: str = "") -> bytes:
    """The bytes of a file a user named; a MeterError naming ``what`` when it is missing or unreadable."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise MeterError(f"{what} not found: {p}" + (f" ({hint})" if hint else "")) from None
    except OSError as e:
        raise os_problem(e, p, what) from None


def read_text(path: str | Path, what: str, hint: str = "") -> str:
    """A UTF-8 text file a user named (a YAML config, say)."""
    data = read_bytes(path, what, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MeterError(f"{what} {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(data: bytes | str, where: str) -> Any:
    """Parse JSON strictly: UTF-8, no NaN or infinity, numbers in range, no lone surrogates, bounded nesting."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise MeterError(f"{where} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    try:
        doc = json.loads(data, parse_float=_finite, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise MeterError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} (truncated or not JSON?)") from None
    except RecursionError:
        raise MeterError(f"{where} is not usable JSON: it nests too deeply") from None
    except ValueError as e:  # NaN, infinity, an integer of thousands of digits (Python's own limit: 4300)
        raise MeterError(f"{where} is not usable JSON: {str(e).split(';')[0]}") from None
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MeterError(f"{where} holds a string that is not valid Unicode (a lone surrogate escape)") from None
    return doc


def read_json_object(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; a MeterError naming ``what`` when it is missing, invalid or not an object."""
    p = Path(path)
    try:
        if p.is_dir():
            raise MeterError(f"{what} {p} is a directory: give the file" + (f" ({hint})" if hint else ""))
    except OSError as e:  # a name too long for the file system
        raise os_problem(e, p, what) from None
    doc = loads(read_bytes(p, what, hint), f"{what} {p}")
    if not isinstance(doc, dict):
        raise MeterError(f"{what} {p} must hold a JSON object, not a {_kind(doc)}")
    return doc


def write_text(path: str | Path, text: str, what: str) -> None:
    """Write a file a user named (``--out``); a MeterError naming ``what`` and the path when it cannot be."""
    p = Path(path)
    try:
        p.write_text(text)
    except OSError as e:
        raise os_problem(e, p, what, "write") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` so that a reader sees the old content or the new, never half of it
    (a temporary file beside it, then a rename): a record or a run's state that a crash may interrupt.

    A path that exists and is not a regular file (/dev/null, /dev/stdout, a pipe) is written to, never renamed
    over. The directory must exist. An OSError is the caller's: the meter logs it, a command reports it."""
    p = Path(path)
    if p.exists() and not p.is_file():
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):  # the error that matters is the one above
            tmp.unlink(missing_ok=True)
        raise


_KINDS = {dict: "JSON object", list: "JSON array", str: "string", bool: "boolean", int: "integer", float: "number",
          type(None): "null"}  # fmt: skip


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


# what check_shape accepts for each expected kind
_EXPECT = {
    "object": (Mapping, "a JSON object"),
    "array": (list, "a JSON array"),
    "string": (str, "a string"),
    "number": ((int, float), "a number"),
    "integer": (int, "an integer"),
    "boolean": (bool, "true or false"),
}


def check_shape(doc: Mapping[str, Any], fields: Mapping[str, str], where: str) -> None:
    """Each dotted field of ``doc`` that is present (and not null) has the expected kind; "integer+" and
    "number+" also ask for a non-negative value. The first field that does not is a MeterError naming it.

    ``fields`` maps dotted paths to kinds: ``{"flops": "object", "flops.regulatory": "integer+"}``; a parent that is
    missing or null skips its children (a reader's own defaults apply)."""
    for name, kind in fields.items():
        value: Any = doc
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
            if value is None:
                break
        if value is None:
            continue
        base, non_negative = kind.rstrip("+"), kind.endswith("+")
        types, text = _EXPECT[base]
        ok = isinstance(value, types) and (base == "boolean" or not isinstance(value, bool))
        if ok and non_negative and value < 0:
            ok, text = False, f"{text} ≥ 0"
        if not ok:
            shown = repr(value) if not isinstance(value, (dict, list)) else f"a {_kind(value)}"
            raise MeterError(f"{where}: {name} must be {text}, got {shown}")
