"""The verdict: does this modification make its author the provider of a GPAI model? With its basis.

Inputs: this run's regulatory count (and forecast), the original model's compute with where it came from, whether
the original has systemic risk, and the compute already recorded for the same model lineage — all jobs that
produce one released model (SFT, then DPO, resumed jobs …) are one modification (the conservative reading; the
Guidelines do not settle it). Thresholds come from meter.policy.thresholds; nothing here invents a number.

Statuses:
- ``downstream_modifier``  cumulative compute at most the threshold (and below the approaching fraction);
- ``approaching``          at or above ``approaching_fraction`` of the threshold (default 80 %), or forecast to cross;
- ``gpai_provider``        cumulative compute strictly more than one third of the original's (Guidelines §3.2);
- ``gpai_sr_provider``     the same, where the original has systemic risk (§3.2.2, para 70), or where the modified
                           model's cumulative training compute — the original's plus the lineage's, since weights
                           used for initialisation count (Annex A.1, paras 118 and 121) — exceeds 1e25 (Art. 51(2)):
                           the Commission must be notified within two weeks, or as soon as it becomes known that the
                           threshold will be met (Art. 52(1)): a forecast crossing counts.

This is not legal advice.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from meter.errors import MeterError
from meter.policy.original import OriginalCompute
from meter.policy.thresholds import (
    NOT_LEGAL_ADVICE,
    NOTIFICATION_DAYS,
    SYSTEMIC_RISK_FLOPS,
    check_flops,
    exact,
    threshold_for,
    two_significant,
)
from meter.timestamps import utc_now, utc_timestamp

Status = Literal["downstream_modifier", "approaching", "gpai_provider", "gpai_sr_provider"]

DUTIES_PROVIDER = (
    "Technical documentation of the modification (Art. 53(1)(a), Annex XI), limited to the modification (recital 109)",
    "Information and documentation for downstream providers (Art. 53(1)(b), Annex XII), for the modification",
    "A policy to comply with Union copyright law (Art. 53(1)(c))",
    "A public summary of the content used for the modification, i.e. the fine-tuning data (Art. 53(1)(d))",
    "If established outside the Union: appoint an authorised representative in the Union before placing the model "
    "on the market (Art. 54; Guidelines para 69)",
)
DUTIES_SYSTEMIC_RISK = (
    "Notify the Commission without delay and in any event within two weeks (Art. 52(1))",
    "Model evaluation including adversarial testing, systemic-risk assessment and mitigation (Art. 55(1)(a)-(b))",
    "Serious-incident tracking and reporting (Art. 55(1)(c)) and adequate cybersecurity (Art. 55(1)(d))",
)


@dataclass(frozen=True)
class Verdict:
    status: Status
    crossed: bool
    regulatory_flops: int  # this run
    prior_lineage_flops: int  # earlier runs of the same lineage
    cumulative_flops: int
    threshold_flops: float
    threshold_rule: str
    threshold_citation: str
    original: OriginalCompute
    ratio: float
    headroom_flops: float
    headroom_tokens: float | None
    approaching_fraction: float
    forecast_flops: float | None
    forecast_crosses: bool
    notification_required: bool
    notification_deadline: str | None
    notes: tuple[str, ...]
    duties: tuple[str, ...]
    decided_at: str
    figures: dict[str, str] = field(default_factory=dict)
    # original + lineage: the cumulative training compute of the modified model (Annex A.1, paras 118, 121)
    model_cumulative_flops: float | None = None
    threshold_exact: Fraction | None = None  # the threshold as the exact rational it is compared as

    @property
    def threshold_integer(self) -> int:
        """The largest whole number of FLOP that does not cross (crossing is strictly more than the threshold)."""
        return (
            math.floor(self.threshold_exact) if self.threshold_exact is not None else math.floor(self.threshold_flops)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "crossed": self.crossed,
            "regulatory_flops": self.regulatory_flops,
            "prior_lineage_flops": self.prior_lineage_flops,
            "cumulative_flops": self.cumulative_flops,
            "threshold_flops": self.threshold_flops,
            "threshold_rule": self.threshold_rule,
            "threshold_citation": self.threshold_citation,
            "original": self.original.to_dict(),
            "model_cumulative_flops": self.model_cumulative_flops,
            "threshold_integer": self.threshold_integer,
            "ratio": self.ratio,
            "headroom_flops": self.headroom_flops,
            "headroom_tokens": self.headroom_tokens,
            "approaching_fraction": self.approaching_fraction,
            "forecast_flops": self.forecast_flops,
            "forecast_crosses": self.forecast_crosses,
            "notification_required": self.notification_required,
            "notification_deadline": self.notification_deadline,
            "notes": list(self.notes),
            "duties": list(self.duties),
            "figures": self.figures,
            "decided_at": self.decided_at,
            "disclaimer": NOT_LEGAL_ADVICE,
        }


def classify(
    regulatory_flops: int,
    original: OriginalCompute,
    *,
    prior_lineage_flops: int = 0,
    forecast_flops: float | None = None,
    flops_per_token: float | None = None,
    approaching_fraction: float = 0.8,
    now: dt.datetime | None = None,
) -> Verdict:
    """The verdict for a run, counted together with the earlier runs of its lineage."""
    for name, value in (("regulatory_flops", regulatory_flops), ("prior_lineage_flops", prior_lineage_flops)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MeterError(f"{name} must be a non-negative integer number of FLOP, got {value!r}")
    if not 0 < approaching_fraction <= 1:
        raise MeterError(f"approaching_fraction must be in (0, 1], got {approaching_fraction!r}")
    if forecast_flops is not None:
        forecast_flops = check_flops(forecast_flops, "forecast_flops")
    now = now or utc_now()

    threshold = threshold_for(original.flops, original_systemic_risk=original.is_systemic_risk)
    cumulative = prior_lineage_flops + regulatory_flops
    crossed = threshold.crossed_by(cumulative)  # strictly more than one third, exactly
    forecast_total = None if forecast_flops is None else prior_lineage_flops + forecast_flops
    forecast_crosses = forecast_total is not None and threshold.crossed_by(forecast_total)
    near = Fraction(cumulative) >= threshold.exact * Fraction(repr(approaching_fraction))
    # the modified model's cumulative compute includes the original's (Annex A.1, paras 118, 121)
    model_total = None if original.flops is None else exact(original.flops) + cumulative
    model_forecast = None if original.flops is None or forecast_total is None else (
        exact(original.flops) + exact(forecast_total))  # fmt: skip
    presumed = model_total is not None and model_total > exact(SYSTEMIC_RISK_FLOPS)
    presumed_forecast = model_forecast is not None and model_forecast > exact(SYSTEMIC_RISK_FLOPS)
    systemic = original.is_systemic_risk or presumed

    if crossed:
        status: Status = "gpai_sr_provider" if systemic else "gpai_provider"
    elif near or forecast_crosses:
        status = "approaching"
    else:
        status = "downstream_modifier"

    notes = list(threshold.notes)  # in words: an original at or below 1e23 "may not be a GPAI model at all"
    if original.basis == "unknown":
        notes.append(
            "The original's training compute is unknown: the fallback threshold applies only if it cannot be "
            "estimated either (Guidelines §3.2); an estimate of it would give the one-third threshold instead."
        )
    if prior_lineage_flops:
        notes.append(
            f"Counted with {two_significant(prior_lineage_flops)} already recorded for this model lineage: all "
            "jobs producing one released model are treated as one modification (conservative reading)."
        )
    if forecast_crosses and not crossed:
        notes.append(
            "The run is forecast to cross the threshold: Art. 52(1) runs from when it becomes known that the "
            "threshold will be met."
        )
    if presumed and crossed and not original.is_systemic_risk:
        notes.append(
            f"The modified model's cumulative training compute, the original's {two_significant(original.flops)} "
            f"plus this lineage's {two_significant(cumulative)}, exceeds 1e25 FLOP: it is presumed to have systemic "
            "risk (Art. 51(2); weights used for initialisation count, Guidelines Annex A.1 paras 118 and 121)."
        )
    forecast_systemic = original.is_systemic_risk or presumed_forecast
    if forecast_crosses and not crossed and forecast_systemic and not original.is_systemic_risk:
        notes.append(
            "At the forecast, the modified model's cumulative training compute (original plus lineage) exceeds "
            "1e25 FLOP: it becomes known that the systemic-risk threshold will be met (Art. 52(1))."
        )
    notification = (systemic and crossed) or (forecast_systemic and forecast_crosses)
    deadline = (now + dt.timedelta(days=NOTIFICATION_DAYS)).date().isoformat() if notification else None
    duties: tuple[str, ...] = ()
    if crossed:
        duties = DUTIES_PROVIDER + (DUTIES_SYSTEMIC_RISK if systemic else ())
    per_token = flops_per_token if flops_per_token and flops_per_token > 0 else None
    headroom = threshold.flops - cumulative
    return Verdict(
        status=status,
        crossed=crossed,
        regulatory_flops=regulatory_flops,
        prior_lineage_flops=prior_lineage_flops,
        cumulative_flops=cumulative,
        threshold_flops=threshold.flops,
        threshold_rule=threshold.rule,
        threshold_citation=threshold.citation,
        original=original,
        ratio=cumulative / threshold.flops,
        headroom_flops=headroom,
        headroom_tokens=None if per_token is None else max(headroom, 0.0) / per_token,
        approaching_fraction=approaching_fraction,
        forecast_flops=forecast_total,
        forecast_crosses=forecast_crosses,
        notification_required=notification,
        notification_deadline=deadline,
        notes=tuple(notes),
        duties=duties,
        decided_at=utc_timestamp(now),
        model_cumulative_flops=None if model_total is None else float(model_total),
        threshold_exact=threshold.exact,
        figures={
            "this_run": two_significant(regulatory_flops),
            "cumulative": two_significant(cumulative),
            "threshold": two_significant(threshold.flops),
            **({"original": two_significant(original.flops)} if original.flops is not None else {}),
        },
    )
