"""Thresholds and the published-compute table: the points popular tools get wrong (REGULATION.md)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from importlib import resources

import pytest

from meter.engine.catalog import pretrain_table
from meter.errors import MeterError
from meter.policy.original import resolve_original
from meter.policy.thresholds import threshold_for


def test_known_compute_gives_one_third_whatever_its_size() -> None:
    assert threshold_for(8.4e22).flops == pytest.approx(2.8e22)  # Llama-2-7B: not the 3.3e22 fallback
    assert threshold_for(3.8e25).flops == pytest.approx(1.2667e25, rel=1e-4)  # 405B: not the 3.3e24 fallback
    assert threshold_for(8.4e22).rule == "one_third_of_known"


def test_fallbacks_only_when_unknown() -> None:
    assert threshold_for(None).flops == pytest.approx(1e23 / 3) and threshold_for(None).rule == "fallback_gpai"
    sr = threshold_for(None, original_systemic_risk=True)
    assert sr.flops == pytest.approx(1e25 / 3) and sr.rule == "fallback_systemic_risk"


def test_strictly_greater_than_exactly_one_third() -> None:
    t = threshold_for(9e22)
    assert not t.crossed_by(3e22)  # exactly one third: not more than one third
    assert t.crossed_by(math.nextafter(3e22, math.inf))
    assert not t.crossed_by(0.3 * 9e22 + 1e21)  # 30 % + a bit is still below one third (30 % is the error margin)
    # 1e23 is not divisible by 3: the engine's integer counts are compared with the exact rational 10²³/3
    t = threshold_for(1e23)
    assert t.exact == Fraction(10**23, 3)
    assert not t.crossed_by(10**23 // 3) and t.crossed_by(10**23 // 3 + 1)


def test_notes_for_small_and_systemic_originals() -> None:
    assert any("may not be" in n for n in threshold_for(8.4e22).notes)
    assert any("systemic risk" in n for n in threshold_for(3.8e25).notes)
    assert threshold_for(7.2e23).notes == ()


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), "lots"])
def test_bad_original_compute(bad) -> None:
    with pytest.raises(MeterError):
        threshold_for(bad)
    with pytest.raises(MeterError, match="leave it empty"):
        threshold_for(0)


def test_data_file_schema_version() -> None:
    doc = json.loads((resources.files("meter") / "data" / "pretrain_compute.json").read_text())
    assert doc["schema_version"] == 2 and len(doc["models"]) == len(pretrain_table())


def test_lookup_is_case_insensitive_and_resolves_variants() -> None:
    assert resolve_original("META-LLAMA/llama-3.1-405B").flops == 3.8e25
    chat = resolve_original("meta-llama/Llama-2-7b-chat-hf")
    assert chat.source.startswith("meta-llama/Llama-2-7b-hf") and "post-training" in chat.source
    assert resolve_original("Qwen/Qwen2.5-72B-Instruct").flops == resolve_original("Qwen/Qwen2.5-72B").flops
    assert resolve_original("mistralai/Mistral-7B-v0.1").basis == "unknown"  # a row that says: nothing published
    assert resolve_original("acme/unheard-of").basis == "unknown"
