"""The thresholds of the EU AI Act and the Commission's GPAI Guidelines: the one place they are written down.

Sources: Regulation (EU) 2024/1689 (the AI Act) and the Commission Guidelines on the scope of the obligations for
providers of general-purpose AI models, C(2025) 5045 (18 July 2025), re-adopted as C(2025) 7719. Cited by
section and paragraph of C(2025) 5045 (paragraph numbers may differ in the re-adopted version). This is not legal
advice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from meter.errors import MeterError

GPAI_INDICATIVE_FLOPS = 1e23  # Guidelines §2.1: training compute above this and generating language → indicative GPAI
SYSTEMIC_RISK_FLOPS = 1e25  # Art. 51(2): cumulative training compute above this → presumed systemic risk
MODIFICATION_FRACTION = Fraction(1, 3)  # Guidelines §3.2: a modification using MORE than one third → new provider
ESTIMATION_TOLERANCE = 0.30  # Guidelines Annex A.2: estimates must be within 30 % (not the threshold!)
NOTIFICATION_DAYS = 14  # Art. 52(1): "without delay and in any event within two weeks"

NOT_LEGAL_ADVICE = "This is not legal advice."

_GUIDELINES = "Commission Guidelines on GPAI providers, C(2025) 5045 / C(2025) 7719"


@dataclass(frozen=True)
class Threshold:
    """The compute above which a modification makes its author the provider of a GPAI model."""

    basis_flops: float  # the figure whose third is taken: the original's compute, or 1e23 / 1e25 when unknown
    rule: str  # machine-readable: "one_third_of_known", "fallback_gpai", "fallback_systemic_risk"
    citation: str
    original_flops: float | None
    notes: tuple[str, ...] = ()

    @property
    def flops(self) -> float:
        return self.basis_flops / 3

    @property
    def exact(self) -> Fraction:
        return exact(self.basis_flops) * MODIFICATION_FRACTION

    def crossed_by(self, flops: float) -> bool:
        """Strictly greater than one third — compared exactly, without rounding the division."""
        return exact(flops) > self.exact


def exact(x: float) -> Fraction:
    """A figure as the exact rational its author wrote: integers as they are, floats by their shortest decimal.

    9e22 is not exactly 9·10²² in binary; comparing binary values would make "exactly one third of 9e22" cross.
    """
    return Fraction(x) if isinstance(x, int) else Fraction(repr(float(x)))


def check_flops(value: float, name: str) -> float:
    """A compute figure from a user: finite and non-negative, or a one-line error naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MeterError(f"{name} must be a number of FLOP (e.g. 8.4e22), got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise MeterError(f"{name} must be a finite, non-negative number of FLOP (e.g. 8.4e22), got {value!r}")
    return v


def threshold_for(original_flops: float | None, *, original_systemic_risk: bool = False) -> Threshold:
    """The threshold that applies to a modification of a model with the given original training compute.

    Known compute → one third of it, whatever its size. Unknown (and not estimable) → one third of 1e23, or of
    1e25 when the original is a GPAI model with systemic risk.
    """
    if original_flops is not None:
        original = check_flops(original_flops, "original (pretraining) compute")
        if original == 0:
            raise MeterError("original (pretraining) compute must be positive: leave it empty when unknown")
        notes = []
        if original <= GPAI_INDICATIVE_FLOPS:
            notes.append(
                f"The original's compute ({original:.2g} FLOP) is not above {GPAI_INDICATIVE_FLOPS:.0e}: it may not be "
                "a general-purpose AI model at all (Guidelines §2.1, para 17); the one-third comparison is reported "
                "anyway."
            )
        if original > SYSTEMIC_RISK_FLOPS:
            notes.append(
                "The original is presumed to have systemic risk (Art. 51(2)): a modifier that becomes provider is "
                "presumed so too and must notify the Commission within two weeks (Art. 52(1); Guidelines §3.2.2, "
                "para 70)."
            )
        return Threshold(
            basis_flops=original,
            rule="one_third_of_known",
            citation=f"{_GUIDELINES}, §3.2 para 63: more than one third of the original model's training compute",
            original_flops=original,
            notes=tuple(notes),
        )
    if original_systemic_risk:
        return Threshold(
            basis_flops=SYSTEMIC_RISK_FLOPS,
            rule="fallback_systemic_risk",
            citation=f"{_GUIDELINES}, §3.2 para 64: original compute unknown and not estimable, original has systemic "
            "risk: one third of 1e25",
            original_flops=None,
        )
    return Threshold(
        basis_flops=GPAI_INDICATIVE_FLOPS,
        rule="fallback_gpai",
        citation=f"{_GUIDELINES}, §3.2 para 64: original compute unknown and not estimable: one third of 1e23",
        original_flops=None,
    )


RULE_TEXT = {
    "one_third_of_known": "one third of the original's training compute",
    "fallback_gpai": "original's compute unknown and not estimable: one third of 1e23",
    "fallback_systemic_risk": "original's compute unknown and not estimable, original with systemic risk: one third "
    "of 1e25",
}


def rule_text(rule: str | None) -> str:
    """A threshold rule in words, for people (the machine code stays in records and metadata)."""
    return RULE_TEXT.get(str(rule), str(rule))


def two_significant(flops: float) -> str:
    """A compute figure as the notification form asks: two significant figures, e.g. '2.3e+25 FLOP'."""
    return f"{flops:.1e} FLOP"
