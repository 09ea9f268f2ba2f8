"""The original's compute as the Guidelines want it (C(2025) 5045 §3.2 para 64, Annex A), and the systemic-risk
presumption on cumulative compute. Truth: the Guidelines' own worked examples (Annex A.3, paras 137-144)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from meter.engine.catalog import bundled_configs, original_facts, pretrain_table
from meter.engine.spec import load_config, spec_from_config
from meter.errors import MeterError, UnknownArchitecture
from meter.policy.compliance import OriginalCompute, classify
from meter.policy.original import PEAKS, estimates, nlhu, resolve_original, six_pd


def two_sf(x: float, how=round) -> float:
    """x to two significant figures, rounded or truncated (the Guidelines do both: see below)."""
    e = math.floor(math.log10(x)) - 1
    return how(x / 10**e) * 10**e


def as_published(ours: float, theirs: float) -> bool:
    """The Guidelines give two significant figures, sometimes rounded (Model C: 1.296e23 -> 1.3e23), sometimes
    truncated (Model G: 1.56e23 -> 1.5e23; Model H: 6.59e23 -> 6.5e23)."""
    return any(math.isclose(two_sf(ours, how), theirs, rel_tol=1e-9) for how in (round, math.floor))


# Annex A.3: (paragraph, parameters, tokens, published FLOP)
ARCHITECTURE_EXAMPLES = [
    (137, 3.8e9, 3.3e12, 7.5e22),  # Model A
    (139, 0.6e9, 36e12, 1.3e23),  # Model C
    (140, 1.54e9, 18e12, 1.663e23),  # Model D (given to four figures)
    (141, 1.7e9, 36e12, 3.7e23),  # Model E
    (142, 2.5e9, 12e12, 1.8e23),  # Model F
    (143, 2.6e9, 61e9 * 164, 1.5e23),  # Model G: 61 billion tokens for 164 epochs
]


@pytest.mark.parametrize("para, params, tokens, published", ARCHITECTURE_EXAMPLES)
def test_annex_a3_architecture_examples(para, params, tokens, published) -> None:
    ours = six_pd(params, tokens)
    if para == 140:
        assert f"{ours:.4g}" == "1.663e+23"
    else:
        assert as_published(ours, published), (para, ours)


def test_annex_a3_hardware_examples() -> None:
    # Model H (para 144): 370,000 H100 GPU-hours at 989 TFLOP/s and 50 % -> 6.5e23
    assert as_published(nlhu(370_000, "H100-80GB"), 6.5e23)
    # Model B (para 138): 200,000 A100 GPU-hours at 300 TFLOP/s and 50 % -> about 1e23
    assert f"{nlhu(200_000, 'A100-40GB'):.0e}" == "1e+23"
    assert PEAKS["H100-80GB"][0] == 989e12 and PEAKS["A100-40GB"][0] == 300e12


def test_resolution_order_given_reported_estimated_unknown() -> None:
    given = resolve_original("meta-llama/Llama-3.1-405B", "1e24")
    assert (given.flops, given.basis) == (1e24, "user") and given.trail == ("given as --pretrain-flops",)
    reported = resolve_original("meta-llama/Llama-3.1-405B")
    assert reported.basis == "reported" and reported.flops == 3.8e25 and reported.is_systemic_risk
    assert "reported by the developer" in reported.trail[-1]
    estimated = resolve_original("Qwen/Qwen2.5-7B")
    assert estimated.basis == "estimated" and "6·P·D" in estimated.method and estimated.date
    assert estimated.flops == six_pd(estimated.inputs["parameters"], estimated.inputs["tokens"])
    unknown = resolve_original("acme/unheard-of")
    assert unknown.basis == "unknown" and unknown.flops is None and "para 64" in unknown.trail[-1]
    with pytest.raises(MeterError, match="--pretrain-flops"):
        resolve_original("Qwen/Qwen2.5-7B", "lots")
    with pytest.raises(MeterError, match="positive"):
        resolve_original("Qwen/Qwen2.5-7B", 0)


def test_the_lower_of_two_estimates_is_used() -> None:
    row = {"tokens": 15e12, "parameters": 8.03e9, "gpu_hours": 1.46e6, "chip": "H100-80GB"}
    found = estimates(row)
    assert set(found) == {"6PD", "NLHU"} and found["6PD"][0] < found["NLHU"][0]
    moe = estimates({"tokens": 36e12, "parameters": 30.5e9, "active_parameters": 3.3e9})
    assert moe["6PD"][0] == six_pd(3.3e9, 36e12)  # active parameters for an MoE model


def test_variants_resolve_to_their_base_and_say_so() -> None:
    row, note = original_facts("meta-llama/Llama-2-7b-chat-hf")
    assert row["id"] == "meta-llama/Llama-2-7b-hf" and "post-training" in note
    assert original_facts("META-LLAMA/llama-2-7b-HF")[0]["id"] == "meta-llama/Llama-2-7b-hf"
    assert original_facts("acme/unheard-of") is None


def test_every_bundled_model_resolves_or_documents_why_not() -> None:
    """Every bundled model gets a non-fallback basis, unless its row documents that nothing is published."""
    ids = {load_config(p)["_name_or_path"] for k, p in bundled_configs().items() if "/" in k}
    for model_id in sorted(ids):
        facts = original_facts(model_id)
        assert facts is not None, f"{model_id} has no row in pretrain_compute.json"
        row, _ = facts
        original = resolve_original(model_id)
        if row.get("nothing_published"):
            assert original.basis == "unknown" and row["source"], model_id
        else:
            assert original.basis in ("reported", "estimated"), model_id


def test_rows_carry_source_date_and_plausible_parameters() -> None:
    for row in pretrain_table():
        assert row["source"] and row["date"], row["id"]
        dt.date.fromisoformat(row["date"])
        assert row.get("chip") in (None, *PEAKS), row["id"]
        for key in ("reported_flops", "parameters", "active_parameters", "tokens", "gpu_hours"):
            assert row.get(key) is None or row[key] > 0, (row["id"], key)
    # published parameter counts agree with the bundled configs' (within 10 %: embeddings, rounding)
    for key, path in bundled_configs().items():
        if "/" not in key:
            continue
        config = load_config(path)
        facts = original_facts(config["_name_or_path"])
        if facts and facts[0].get("parameters") and "vision_config" not in config:
            assert math.isclose(_parameters(config), facts[0]["parameters"], rel_tol=0.1), key


def _parameters(config: dict) -> int:
    """The engine's count, or for a family outside it the model transformers builds on the meta device."""
    try:
        return spec_from_config(config).parameter_count()
    except UnknownArchitecture:
        import torch

        from meter.engine.measure import model_from_config

        with torch.device("meta"):
            return model_from_config(config).num_parameters()


# --------------------------------------------------------------------------------------------------------------
# The systemic-risk presumption on cumulative compute (Art. 51(2); Annex A.1 paras 118, 121; Art. 52(1))

LLAMA3_70B = OriginalCompute(7.861e24, "reported", "test")


def test_cumulative_compute_above_1e25_is_presumed_systemic() -> None:
    """A 2.7e24 run on a 7.861e24 original: a provider (more than a third), and original + run = 1.06e25."""
    v = classify(2_700_000_000_000_000_000_000_000, LLAMA3_70B, now=dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc))
    assert v.status == "gpai_sr_provider" and v.crossed and v.notification_required
    assert v.notification_deadline == "2026-12-19"
    assert v.model_cumulative_flops == pytest.approx(1.0561e25)
    assert any("presumed to have systemic risk" in n for n in v.notes)
    assert any("Art. 55" in d for d in v.duties)


def test_below_1e25_cumulative_is_a_plain_provider() -> None:
    v = classify(2_700_000_000_000_000_000_000_000, OriginalCompute(7.2e24, "reported", "test"))
    assert v.status == "gpai_provider" and not v.notification_required  # 7.2e24 + 2.7e24 < 1e25


def test_a_forecast_above_1e25_cumulative_requires_notification() -> None:
    """Not crossed yet, but forecast to: it becomes known that the threshold will be met (Art. 52(1))."""
    v = classify(10**24, LLAMA3_70B, forecast_flops=2.7e24)
    assert v.status == "approaching" and not v.crossed and v.notification_required
    assert any("will be met" in n for n in v.notes)


def test_variants_resolve_to_bases_filed_under_another_suffix() -> None:
    """Instruct ids find bases published as '-pt' or '-Base-': the facts and the architecture of the base."""
    from meter.engine.catalog import resolve_model

    assert original_facts("google/gemma-3-4b-it")[0]["id"] == "google/gemma-3-4b-pt"
    small = "mistralai/Mistral-Small-24B-Instruct-2501"
    assert original_facts(small)[0]["id"] == "mistralai/Mistral-Small-24B-Base-2501"
    assert "Mistral-Small-24B-Base-2501" in resolve_model(small).note
    assert original_facts("example/unknown-it") is None
