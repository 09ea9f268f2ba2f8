"""Booleans spelled as text: an environment variable, a pipeline parameter (which arrives as a string), a
hyperparameter. One parser, so that every place accepts the same words and refuses the rest alike.
"""

from __future__ import annotations

from meter.errors import MeterError

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: object, *, default: bool | None = None, strict: bool = False, what: str = "") -> bool:
    """``value`` as a boolean: a bool as it is; a string, in any case and around spaces, from TRUE_WORDS or
    FALSE_WORDS, or with ``strict`` only ``true`` and ``false`` (SageMaker's Boolean pipeline parameter).

    None or an empty string is ``default``; without a default, and for any other word, a MeterError (a ValueError)
    naming ``what`` and the words expected."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if not text and default is not None:
        return default
    true, false = (("true",), ("false",)) if strict else (TRUE_WORDS, FALSE_WORDS)
    if text in true:
        return True
    if text in false:
        return False
    expected = "true or false" if strict else f"true or false ({'/'.join(TRUE_WORDS)}, {'/'.join(FALSE_WORDS)})"
    raise MeterError(f"{what + ': ' if what else ''}expected {expected}, got {value!r}")
