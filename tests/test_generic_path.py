"""The generic path: families outside the analytic engine are measured on a meta-device copy and counted exactly.

Truths: FlopCounterMode around the real training (eager attention) for families the engine does not know (Gemma 3
with alternating sliding windows, OLMo 2); and, for families it does know, the analytic engine itself, which the
measured path must agree with although it shares none of its code (meter.graph/count vs FlopCounterMode).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch
from transformers import TrainerCallback

from meter import CostModel, FlopsMeterCallback, TokenStats, spec_from_config
from meter.errors import MeterError
from meter.introspect import observe_model
from meter.measure import MeasuredCostModel
from meter.reference import TINY_CONFIGS, build_model, standard_setups
from tests.pass_truth import PassTruth
from tests.trainer_jobs import read_record, run, sequences


class During(TrainerCallback):
    """The truth counts from on_train_begin on: the meter's own meta-device measurement is not training."""

    def __init__(self, truth: PassTruth):
        self.truth = truth

    def on_train_begin(self, args, state, control, **kwargs):
        self.truth.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self.truth.__exit__(None, None, None)


def gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                             sliding_window=16, attn_implementation="eager"))  # fmt: skip


def olmo2():
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, attn_implementation="eager"))  # fmt: skip


@pytest.mark.parametrize("family", [gemma3, olmo2], ids=["gemma3", "olmo2"])
@pytest.mark.parametrize("method", ["full", "lora", "lora-checkpointing", "full-checkpointing"])
def test_unknown_families_train_and_are_counted_exactly(tmp_path, family, method) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = family()
    if "lora" in method:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    truth = PassTruth().policy(model)
    extra = {"gradient_checkpointing": True} if "checkpointing" in method else {}
    callbacks = [FlopsMeterCallback(output_path=str(tmp_path / "m.json")), During(truth)]
    run(model, sequences(8), tmp_path / "out", callbacks, max_steps=2, **extra)
    record = read_record(tmp_path / "m.json")
    assert record["status"] == "completed" and record["model"]["counted_by"].startswith("measured")
    assert record["flops"]["executed"] == truth.parts["training"]
    assert record["flops"]["regulatory"] < record["flops"]["executed"]
    assert any("outside the analytic engine" in n for n in record["notes"])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox", "falcon"])
@pytest.mark.parametrize("label", ["full", "lora q,v", "lora all", "freeze half", "grad ckpt"])
def test_measured_path_agrees_with_the_analytic_engine(family, label) -> None:
    """Two independent methods, one answer: FlopCounterMode on a meta copy vs the matmul graph, both counts."""
    setup = standard_setups(family)[label]
    live = build_model(TINY_CONFIGS[family], setup)
    observed = observe_model(live)
    measured = MeasuredCostModel(observed.config, observed.setup, model=live)
    analytic = CostModel(spec_from_config(observed.config), observed.setup, trainable=observed.trainable)
    stats = TokenStats.from_lengths([7, 30, 64], padded_to=64, rows=3)
    m, a = measured.count(stats), analytic.count(stats)
    assert m.regulatory_flops == a.regulatory_flops, (family, label)
    if setup.attn_implementation == "eager":
        assert m.executed_flops == a.executed_flops, (family, label)


def test_mixture_of_experts_outside_the_engine_is_refused_not_guessed() -> None:
    """FlopCounterMode counts 0 for grouped-mm experts: refused with a reason (the run is then recorded as not
    counted: tests/test_never_break.py)."""
    with pytest.raises(MeterError, match="mixture-of-experts"):
        MeasuredCostModel({"model_type": "olmoe", "num_experts": 4})
