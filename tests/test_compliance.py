"""Verdicts against every scenario of REGULATION.md, each row citing its rule; and properties that must hold."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.errors import MeterError
from meter.policy.compliance import OriginalCompute, classify

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)
LLAMA2_7B = OriginalCompute(8.4e22, "reported", "Meta Llama 2 model card; Epoch AI")
LLAMA31_405B = OriginalCompute(3.8e25, "reported", "Llama 3 paper")
LLAMA3_8B = OriginalCompute(7.2e23, "reported", "Meta Llama 3 model card")
UNKNOWN = OriginalCompute(None, "unknown")
UNKNOWN_SR = OriginalCompute(None, "unknown", systemic_risk=True)

SCENARIOS = [
    # (rule cited, original, this run, prior lineage compute, expected status, expected threshold)
    (
        "§3.2 known: Llama-2-7B's third is 2.8e22, not the 3.3e22 fallback",
        LLAMA2_7B,
        29 * 10**21,
        0,
        "gpai_provider",
        2.8e22,
    ),
    ("§3.2 known, below: 2.7e22 < 2.8e22", LLAMA2_7B, 27 * 10**21, 0, "approaching", 2.8e22),
    (
        "§3.2 known > 1e25: Llama-3.1-405B's third is 1.27e25, not 3.3e24",
        LLAMA31_405B,
        4 * 10**24,
        0,
        "downstream_modifier",
        3.8e25 / 3,
    ),
    (
        "§3.2.2 systemic-risk original crossed: presumed systemic risk",
        LLAMA31_405B,
        13 * 10**24,
        0,
        "gpai_sr_provider",
        3.8e25 / 3,
    ),
    ("§3.2 fallback: unknown, not systemic-risk: 1e23/3", UNKNOWN, 34 * 10**21, 0, "gpai_provider", 1e23 / 3),
    ("§3.2 fallback: unknown, below", UNKNOWN, 10**21, 0, "downstream_modifier", 1e23 / 3),
    ("§3.2.2 fallback: unknown, systemic-risk: 1e25/3", UNKNOWN_SR, 34 * 10**21, 0, "downstream_modifier", 1e25 / 3),
    ("§3.2.2 fallback: unknown, systemic-risk, crossed", UNKNOWN_SR, 4 * 10**24, 0, "gpai_sr_provider", 1e25 / 3),
    ("§3.2 exactly one third is not more than one third", LLAMA3_8B, 24 * 10**22, 0, "approaching", 2.4e23),
    ("§3.2 one FLOP more than one third crosses", LLAMA3_8B, 24 * 10**22 + 1, 0, "gpai_provider", 2.4e23),
    ("Annex A.2: 30 % is the error margin, not the threshold", LLAMA3_8B, 22 * 10**22, 0, "approaching", 2.4e23),
    ("lineage: SFT then DPO on one model add up", LLAMA3_8B, 10**23, 15 * 10**22, "gpai_provider", 2.4e23),
    ("lineage: the sum below stays below", LLAMA3_8B, 10**22, 10**22, "downstream_modifier", 2.4e23),
]


@pytest.mark.parametrize("rule, original, flops, prior, status, threshold", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_regulation_scenarios(rule, original, flops, prior, status, threshold) -> None:
    v = classify(flops, original, prior_lineage_flops=prior, now=NOW)
    assert v.status == status, rule
    assert v.threshold_flops == pytest.approx(threshold), rule
    assert v.crossed == status.startswith("gpai"), rule
    assert v.cumulative_flops == flops + prior
    assert v.to_dict()["disclaimer"] == "This is not legal advice."
    assert v.threshold_citation.startswith("Commission Guidelines")


def test_original_may_not_be_gpai_is_noted_and_compared_anyway() -> None:
    v = classify(10**21, LLAMA2_7B, now=NOW)
    assert "may not be a general-purpose AI model" in v.notes[0] and v.threshold_rule == "one_third_of_known"
    assert not any("may not be" in n for n in classify(10**21, LLAMA3_8B, now=NOW).notes)
    assert not any("_" in n.split()[0] for n in v.notes)  # words, never a machine code


def test_notification_and_duties() -> None:
    sr = classify(13 * 10**24, LLAMA31_405B, now=NOW)
    assert sr.notification_required and sr.notification_deadline == "2026-12-06"  # two weeks
    assert any("Art. 52(1)" in d for d in sr.duties) and any("recital 109" in d for d in sr.duties)
    provider = classify(29 * 10**21, LLAMA2_7B, now=NOW)
    assert not provider.notification_required and provider.duties and not any("Art. 55" in d for d in provider.duties)
    assert classify(10**21, LLAMA2_7B, now=NOW).duties == ()


def test_forecast_to_cross_is_approaching_and_starts_the_clock_for_systemic_originals() -> None:
    v = classify(10**24, LLAMA31_405B, forecast_flops=2e25, now=NOW)
    assert v.status == "approaching" and v.forecast_crosses and not v.crossed
    assert v.notification_required and v.notification_deadline == "2026-12-06"
    assert any("becomes known" in n for n in v.notes)


def test_figures_have_two_significant_figures_and_headroom_in_tokens() -> None:
    v = classify(23 * 10**21, LLAMA2_7B, flops_per_token=1e10, now=NOW)
    assert v.figures["this_run"] == "2.3e+22 FLOP" and v.figures["threshold"] == "2.8e+22 FLOP"
    assert v.headroom_tokens == pytest.approx((2.8e22 - 2.3e22) / 1e10)


@pytest.mark.parametrize(
    "kwargs",
    [dict(regulatory_flops=-1), dict(regulatory_flops=1.5), dict(regulatory_flops=1, approaching_fraction=0)],
)
def test_bad_inputs(kwargs) -> None:
    flops = kwargs.pop("regulatory_flops")
    with pytest.raises(MeterError):
        classify(flops, LLAMA2_7B, **kwargs)
    with pytest.raises(MeterError):
        OriginalCompute(float("nan"), "user")
    with pytest.raises(MeterError):
        OriginalCompute(None, "user")


ORDER = {"downstream_modifier": 0, "approaching": 1, "gpai_provider": 2, "gpai_sr_provider": 2}
originals = st.sampled_from([LLAMA2_7B, LLAMA31_405B, LLAMA3_8B, UNKNOWN, UNKNOWN_SR])
flops = st.integers(min_value=0, max_value=10**26)


@given(originals, flops, flops, flops)
def test_verdict_is_monotone_in_compute(original, a, b, prior) -> None:
    low, high = sorted((a, b))
    assert (
        ORDER[classify(low, original, prior_lineage_flops=prior, now=NOW).status]
        <= ORDER[classify(high, original, prior_lineage_flops=prior, now=NOW).status]
    )


@given(originals, flops, flops)
def test_never_downstream_above_the_threshold(original, run, prior) -> None:
    v = classify(run, original, prior_lineage_flops=prior, now=NOW)
    if v.cumulative_flops > v.threshold_flops * (1 + 1e-12):
        assert v.status in ("gpai_provider", "gpai_sr_provider") and v.crossed
    if v.crossed:
        assert v.status != "downstream_modifier" and v.duties


def test_metadata_gives_exact_integers_and_duties_are_complete() -> None:
    """Registry metadata: the threshold as the exact whole number of FLOP it is compared as, never a float's
    rounding (2.7999999999999996e+22); a provider's duties include Art. 54 (Guidelines para 69)."""
    from meter.policy.governance import compliance_document

    v = classify(10**23, LLAMA2_7B, now=NOW)
    doc = compliance_document(v, lineage="l", base_model="meta-llama/Llama-2-7b-hf", run_id="r")
    assert doc["metadata"]["threshold_flops"] == "28000000000000000000000"
    assert classify(10**21, UNKNOWN, now=NOW).threshold_integer == 33333333333333333333333
    assert any("Art. 54" in d for d in v.duties) and v.status == "gpai_provider"
