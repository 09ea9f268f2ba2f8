"""One layer of each kind measured (meter.engine.layer_kinds): deeper stacks, so each kind stands for many layers.

Truth: FlopCounterMode around a real training step of the whole tiny CPU model (eager attention, eager experts),
which runs every layer; the measured path runs one or two layers of each kind on the meta device and multiplies.
The family sweep (tests/test_model_families.py) builds four layers; here eight, with dense first layers,
alternating windows and chunks, hybrid linear attention, and the setups that make layers differ (LoRA with frozen
embeddings, the lower half frozen, checkpointing).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch

from meter.engine.measure import MeasuredCostModel, _meta_copy, _shape
from meter.engine.tokens import TokenStats
from meter.runtime.introspect import observe_model
from tests.pass_truth import step_truth
from tests.tiny_families import build

SEQ = 64  # a multiple of the chunk (64) hybrid linear attention pads to: exact there (see README "Limits")
LAYERS = 8
TYPES = ("deepseek_v3", "gemma3_text", "gpt_oss", "llama4_text", "qwen3_next")


def _prepared(model_type: str, method: str):
    torch.manual_seed(0)
    model = build(model_type, layers=LAYERS).train()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"] if model_type == "llama4_text" else "all-linear"
        model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    elif method == "freeze":  # the embeddings and the lower layers frozen
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("model.embed") and not any(f".layers.{i}." in name for i in range(3)))
    elif method == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _truth(model) -> int:
    return step_truth(model, SEQ)


@pytest.mark.parametrize("method", ["full", "lora", "freeze", "checkpointing"])
@pytest.mark.parametrize("model_type", TYPES)
def test_deep_stacks_are_counted_exactly_from_one_layer_of_each_kind(model_type, method) -> None:
    model = _prepared(model_type, method)
    observed = observe_model(model)
    measured = MeasuredCostModel(observed.config, observed.setup, model=model)
    count = measured.count(TokenStats.from_lengths([SEQ], padded_to=SEQ, rows=1, windows=measured.windows))
    assert count.executed_flops == _truth(model)


def test_kinds_follow_the_architecture_and_the_setup() -> None:
    """DeepSeek-V3 with one dense first layer: the first layer, then the MoE layers; frozen lower layers split
    the MoE layers by what trains and by whether a trainable layer sits below (its input then needs a gradient)."""
    model = _prepared("deepseek_v3", "full")
    kinds = _shape(_meta_copy(model.config.to_dict(), model, bare=False)).stack.representatives
    assert [(name, count) for name, _, count in kinds] == [("model.layers.0", 1), ("model.layers.1", 7)]

    model = _prepared("deepseek_v3", "freeze")  # layers 0-2 frozen
    kinds = _shape(_meta_copy(model.config.to_dict(), model, bare=False)).stack.representatives
    assert [(name, count) for name, _, count in kinds] == [
        ("model.layers.0", 1),  # always its own kind
        ("model.layers.1", 2),  # frozen MoE layers, nothing trainable below
        ("model.layers.3", 1),  # the first trainable layer: its input needs no gradient
        ("model.layers.4", 4),  # trainable, with a trainable layer below
    ]

    model = _prepared("gemma3_text", "full")  # sliding and global layers
    kinds = _shape(_meta_copy(model.config.to_dict(), model, bare=False)).stack.representatives
    windows = model.config.layer_types
    assert sum(count for _, _, count in kinds) == LAYERS
    assert {w for _, w, _ in kinds} == {None, model.config.sliding_window} and "full_attention" in windows
