"""The regulatory count of well-known configs, reproduced by independent textbook formulas.

The formulas are written here from the architecture papers, not from meter.engine.graph: forward FLOPs per token are
2 × (multiply-adds of every projection, the LM head included even when tied) plus 2 × 2·n_q·d per causal
query–key pair; full fine-tuning is 3 × forward (every operand of every product needs a gradient).
"""

from __future__ import annotations

import pytest

from meter.engine.catalog import bundled_configs, resolve_model
from meter.engine.count import CostModel, TrainingSetup
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats, window_pairs


def dense_forward_per_token(h, layers, n_q, n_kv, d, inter, vocab, gated=True) -> int:
    attn_proj = h * n_q * d + 2 * h * n_kv * d + n_q * d * h
    mlp = (3 if gated else 2) * h * inter
    return 2 * (layers * (attn_proj + mlp) + h * vocab)


def attention_per_pair(layers, n_q, d) -> int:
    return 2 * 2 * n_q * d * layers  # Q·Kᵀ and P·V


def full_regulatory(forward_token: int, pair: int, sequences: int, s: int, pairs_per_seq: int | None = None) -> int:
    pairs = pairs_per_seq if pairs_per_seq is not None else s * (s + 1) // 2
    return 3 * sequences * (forward_token * s + pair // 1 * pairs)


def count(model: str, sequences: int, s: int, **setup) -> int:
    cost = CostModel(spec_from_config(resolve_model(model).config), TrainingSetup(**setup))
    return cost.count(TokenStats.uniform(sequences, s, windows=cost.windows)).regulatory_flops


@pytest.mark.parametrize(
    "model, h, layers, n_q, n_kv, d, inter, vocab",
    [
        ("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 128, 11008, 32000),
        ("meta-llama/Llama-3.1-8B", 4096, 32, 32, 8, 128, 14336, 128256),
        ("meta-llama/Llama-3.1-405B", 16384, 126, 128, 8, 128, 53248, 128256),
        ("Qwen/Qwen2.5-7B", 3584, 28, 28, 4, 128, 18944, 152064),
        ("Qwen/Qwen2.5-0.5B", 896, 24, 14, 2, 64, 4864, 151936),  # tied head: still 2·h·V per token
        ("google/gemma-7b", 3072, 28, 16, 16, 256, 24576, 256000),  # head_dim 256 ≠ 3072/16
        ("Qwen/Qwen3-8B", 4096, 36, 32, 8, 128, 12288, 151936),
    ],
)
def test_dense_full_fine_tuning(model, h, layers, n_q, n_kv, d, inter, vocab) -> None:
    s, n = 4096, 100
    expected = full_regulatory(
        dense_forward_per_token(h, layers, n_q, n_kv, d, inter, vocab), attention_per_pair(layers, n_q, d), n, s
    )
    assert count(model, n, s) == expected


def test_mixtral_counts_active_experts_only() -> None:
    h, layers, n_q, n_kv, d, inter, vocab, experts, k = 4096, 32, 32, 8, 128, 14336, 32000, 8, 2
    per_token = 2 * (
        layers * (h * n_q * d + 2 * h * n_kv * d + n_q * d * h + h * experts + k * 3 * h * inter) + h * vocab
    )
    assert count("mistralai/Mixtral-8x7B-v0.1", 10, 2048) == full_regulatory(
        per_token, attention_per_pair(layers, n_q, d), 10, 2048
    )
    # 6·N_total·D overcounts Mixtral by the inactive experts: more than 3×
    total = spec_from_config(bundled_configs()["mistralai/mixtral-8x7b-v0.1"]).parameter_count()
    assert 6 * total * 10 * 2048 > 3 * count("mistralai/Mixtral-8x7B-v0.1", 10, 2048)


def test_sliding_window_needs_fewer_pairs() -> None:
    """Mistral-7B-v0.1 slides a 4096-token window: at 8192 tokens each query sees at most 4096 keys."""
    h, layers, n_q, n_kv, d, inter, vocab, s = 4096, 32, 32, 8, 128, 14336, 32000, 8192
    pairs = 4096 * 4097 // 2 + (s - 4096) * 4096
    assert window_pairs(s, 4096) == pairs
    per_token = dense_forward_per_token(h, layers, n_q, n_kv, d, inter, vocab)
    assert count("mistralai/Mistral-7B-v0.1", 3, s) == full_regulatory(
        per_token, attention_per_pair(layers, n_q, d), 3, s, pairs
    )


def test_six_nd_misses_attention() -> None:
    """The issue's numbers: at 4k context 6·N·D is 12 % below what eager kernels run for Llama-2-7B and 26 % below
    for Qwen2.5-0.5B (full L² attention); against the regulatory count (causal pairs) it is 5.7 % and 15 % low."""
    for model, below_executed, below_regulatory in (
        ("meta-llama/Llama-2-7b-hf", 0.12, 0.057),
        ("Qwen/Qwen2.5-0.5B", 0.26, 0.15),
    ):
        spec = spec_from_config(bundled_configs()[model.lower()])
        six_nd = 6 * spec.parameter_count() * 4096
        ours = CostModel(spec, TrainingSetup(attn_implementation="eager")).count(TokenStats.uniform(1, 4096))
        assert six_nd / ours.executed_flops - 1 == pytest.approx(-below_executed, abs=0.005), model
        assert six_nd / ours.regulatory_flops - 1 == pytest.approx(-below_regulatory, abs=0.005), model


def test_lora_regulatory_by_hand() -> None:
    """LoRA r on q,v of Llama-2-7B: frozen weights cost forward + activation gradient, adapters their own passes.

    Embeddings are frozen, so layer 0's input needs no gradient: its q/k/v base products compute none, and its
    k path computes no gradient at all (k depends on nothing trainable in layer 0).
    """
    h, layers, n, d, inter, vocab, r, s = 4096, 32, 32, 128, 11008, 32000, 16, 1024
    base = dense_forward_per_token(h, layers, n, n, d, inter, vocab)
    adapters = layers * 2 * (2 * h * r + 2 * r * h)  # forward of lora_A and lora_B on q and v
    forward = base + adapters
    # backward: every base product computes its input gradient except q, k, v of layer 0; adapters compute
    # weight gradients (both) and input gradients (lora_B always, lora_A except in layer 0)
    act_grads = base - 2 * 2 * h * n * d - 2 * h * n * d  # minus layer-0 q, k, v input gradients
    adapter_grads = layers * 2 * (2 * h * r + 2 * r * h) + layers * 2 * 2 * r * h + (layers - 1) * 2 * 2 * h * r
    per_pair = attention_per_pair(layers, n, d)
    # attention backward: 2 products per pair per layer (dQ… ) × 2 matmuls, except layer 0's dK (k frozen there)
    pair_bwd = 2 * per_pair - 2 * n * d
    expected = s * (forward + act_grads + adapter_grads) + (s * (s + 1) // 2) * (per_pair + pair_bwd)
    assert (
        count("meta-llama/Llama-2-7b-hf", 1, s, method="lora", lora_r=r, lora_targets=("q_proj", "v_proj")) == expected
    )


def test_padding_and_recomputation_are_not_regulatory() -> None:
    cost = CostModel(
        spec_from_config(bundled_configs()["meta-llama/llama-3.1-8b"]), TrainingSetup(gradient_checkpointing=True)
    )
    padded = cost.count(TokenStats.from_lengths([1000, 600], padded_to=1024))
    unpadded = cost.count(TokenStats.from_lengths([1000, 600]))
    assert padded.regulatory_flops == unpadded.regulatory_flops
    assert padded.executed_flops > unpadded.executed_flops
    assert padded.regulatory.recompute == 0 and padded.executed.recompute > 0
    no_gc = CostModel(cost.spec, TrainingSetup()).count(TokenStats.from_lengths([1000, 600]))
    assert no_gc.regulatory_flops == unpadded.regulatory_flops  # checkpointing changes nothing regulatory
