"""Every causal-LM model type of the installed transformers: counted exactly, or refused with a reason.

Truth: FlopCounterMode around a real training step of the tiny CPU model (eager attention, eager experts), which
shares no code with the meter. The meter's generic path measures a meta-device copy prepared as the live model
trains (meter.engine.measure): for each type and each method (full, LoRA on all linear layers, freeze, gradient
checkpointing) its executed count must equal the truth to the FLOP, or the measurement must refuse with a
MeterError naming why; never a different number.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch

from meter.engine.measure import MeasuredCostModel
from meter.engine.tokens import TokenStats
from meter.errors import MeterError
from meter.runtime.introspect import observe_model
from tests.pass_truth import step_truth
from tests.tiny_families import CANNOT_BUILD, NOT_DECODER_LMS, TOO_LARGE, build, causal_lm_types

# model type -> why the meta device cannot measure it: the meter refuses (the run is recorded not counted)
REFUSED: dict[str, str] = {
    "diffllama": "copies a meta tensor to the host",
    "git": "multimodal (vision_config): refused, never counted as its text model alone",
    "phi4_multimodal": "multimodal (vision and audio configs): refused, never counted as its text model alone",
    **{t: "Tensor.item() in the forward" for t in ("big_bird", "megatron-bert", "roformer", "xlm")},
    "rembert": "Tensor.item() in the forward",
    "longcat_flash": "experts that do not dispatch through transformers' experts_implementation",
    "jetmoe": "experts that do not dispatch through transformers' experts_implementation",
}  # fmt: skip

# a multiple of 64: chunked linear-attention kernels (Qwen3-Next, Qwen3.5, OLMo hybrid, Mamba-2 layers) pad each
# sequence to their chunk size; the fit is exact at chunk multiples and the executed count leaves out the padding
# of the last chunk otherwise (stated in meter.engine.measure)
SEQ = 64

# (model type, method) -> why that setup cannot be measured on the meta device: refused, as REFUSED
REFUSED_METHODS: dict[tuple[str, str], str] = {}

# LoRA targets where peft's all-linear cannot train the live model either: Llama 4's router is a Linear that
# returns a tuple, which peft's LoRA layer cannot wrap (AttributeError on the CPU model, not only on meta)
LORA_TARGETS: dict[str, list[str]] = {
    "llama4_text": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# model type -> (relative tolerance, the kernel detail behind it)
CLOSE: dict[str, tuple[float, str]] = {
    "inkling2_text": (1e-3, "a per-pass op whose FLOPs grow slower than the fit's three terms (+0.01 %)"),
}


def _types() -> list[str]:
    return [t for t in causal_lm_types() if t not in {**CANNOT_BUILD, **TOO_LARGE} and t not in NOT_DECODER_LMS]


def _prepare(model_type: str, method: str):
    torch.manual_seed(0)
    model = build(model_type).train()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS.get(model_type, "all-linear")))
    elif method == "freeze":  # the embeddings and the first half of the parameters frozen
        params = list(model.named_parameters())
        for i, (_, p) in enumerate(params):
            p.requires_grad_(i >= len(params) // 2)
    elif method == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _truth(model) -> int:
    return step_truth(model, SEQ)


# the families people fine-tune in 2026 and one of each mechanism: every method (the sweep of all types runs full)
METHOD_TYPES = (
    "gemma3_text", "gpt_oss", "deepseek_v3", "llama4_text", "qwen3_next", "qwen3_5_moe_text", "phi3", "ministral3",
    "smollm3", "olmo2", "cohere2", "glm4_moe", "granitemoe", "bert",
)  # fmt: skip


def _cases() -> list:
    types = _types()
    methods = [(t, m) for t in METHOD_TYPES if t in types for m in ("lora", "freeze", "checkpointing")]
    return [(t, "full") for t in types] + methods


@pytest.mark.parametrize(("model_type", "method"), _cases())
def test_every_family_is_counted_exactly_or_refused(model_type, method) -> None:
    model = _prepare(model_type, method)
    observed = observe_model(model)
    if model_type in REFUSED or (model_type, method) in REFUSED_METHODS:
        with pytest.raises(MeterError, match=r"cannot be measured|does not dispatch|not of the form|multimodal"):
            MeasuredCostModel(observed.config, observed.setup, model=model)
        return
    measured = MeasuredCostModel(observed.config, observed.setup, model=model)
    count = measured.count(TokenStats.from_lengths([SEQ], padded_to=SEQ, rows=1, windows=measured.windows))
    truth = _truth(model)
    if model_type in CLOSE:
        assert count.executed_flops == pytest.approx(truth, rel=CLOSE[model_type][0]), (model_type, method)
    else:
        assert count.executed_flops == truth, (model_type, method)
    assert 0 < count.regulatory_flops <= count.executed_flops


@pytest.mark.parametrize("model_type", sorted(CANNOT_BUILD))
def test_the_types_listed_as_unbuildable_still_are(model_type) -> None:
    """The list is a claim about transformers: when a type becomes buildable tiny, it must join the sweep."""
    if model_type not in causal_lm_types():
        pytest.skip(f"{model_type} is not in this transformers")
    with pytest.raises(Exception):  # noqa: B017 (any failure to build or to train one step)
        _truth(build(model_type).train())


def test_llama4_dense_experts_are_credited_their_routed_share() -> None:
    """Llama 4's HF kernel runs all E experts on every token; the regulatory count keeps the top-k. Independent
    formula: the unrouted work is (E − k) experts × 3 matmuls of h×I × 2 FLOPs, ×3 with backward (weights and
    inputs), per token, per MoE layer."""
    model = _prepare("llama4_text", "full")
    config = model.config
    observed = observe_model(model)
    measured = MeasuredCostModel(observed.config, observed.setup, model=model)
    moe_layers = sum(1 for layer in model.model.layers if hasattr(layer.feed_forward, "experts"))
    e, k, h, i = config.num_local_experts, config.num_experts_per_tok, config.hidden_size, config.intermediate_size
    unrouted = moe_layers * (e - k) * 3 * (2 * h * i) * 3  # per token (attention differs too: causal vs L²)
    assert moe_layers > 0 and measured.executed.per_token.total - measured.regulatory.per_token.total == unrouted
