"""Ground truth: tiny random-initialised models of every supported family, measured with ``FlopCounterMode``.

Used by the tests and ``bench/accuracy.py``. Models use eager attention and eager experts, because
``FlopCounterMode`` counts 0 for CPU SDPA and for grouped-mm experts. Imports torch/transformers/peft lazily.
"""

from __future__ import annotations

from typing import Any

from meter.engine.count import TrainingSetup, default_lora_targets
from meter.engine.graph import layers_regex
from meter.engine.spec import ModelSpec, spec_from_config

_COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=160)

# Small configs exercising each family's particulars: GQA, explicit head_dim, biases, sliding windows, MoE with
# dense layers in between, shared experts, fused projections, parallel residuals, multi-query, dropouts.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(_COMMON, model_type="llama", num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": dict(_COMMON, model_type="mistral", num_key_value_heads=2, sliding_window=96),
    "mixtral": dict(_COMMON, model_type="mixtral", num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": dict(_COMMON, model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(_COMMON, model_type="qwen3", num_key_value_heads=2, head_dim=24),
    "qwen2_moe": dict(
        _COMMON,
        model_type="qwen2_moe",
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=96,
        decoder_sparse_step=2,
    ),
    "qwen3_moe": dict(
        _COMMON,
        model_type="qwen3_moe",
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
        mlp_only_layers=[0],
    ),
    "gemma": dict(_COMMON, model_type="gemma", num_key_value_heads=1, head_dim=32),
    "gemma2": dict(_COMMON, model_type="gemma2", num_key_value_heads=2, head_dim=16, sliding_window=64),
    "phi3": dict(_COMMON, model_type="phi3", num_key_value_heads=2, resid_pdrop=0.1, pad_token_id=0),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=4, n_head=4, n_positions=1024),
    "gpt_neox": dict(_COMMON, model_type="gpt_neox", rotary_pct=0.5, hidden_dropout=0.1),
    "falcon": dict(
        model_type="falcon",
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        new_decoder_architecture=False,
        bias=False,
    ),
}

# "LoRA on q and v" per family: separate q_proj/v_proj where they exist, else the fused projection.
QV_TARGETS: dict[str, tuple[str, ...]] = {t: default_lora_targets(t) for t in TINY_CONFIGS}


def standard_setups(family: str, lora_r: int = 4) -> dict[str, TrainingSetup]:
    """The methods every family is checked with: full, LoRA on q/v and on all linear layers, the lower half of
    the layers frozen, gradient checkpointing."""
    return {
        "full": TrainingSetup(),
        "lora q,v": TrainingSetup(method="lora", lora_r=lora_r, lora_targets=QV_TARGETS[family]),
        "lora all": TrainingSetup(method="lora", lora_r=lora_r, lora_targets="all-linear"),
        "freeze half": TrainingSetup(
            method="freeze", trainable=(upper_half_regex(spec_from_config(TINY_CONFIGS[family])),)
        ),
        "grad ckpt": TrainingSetup(gradient_checkpointing=True),
    }


def upper_half_regex(spec: ModelSpec) -> str:
    """A `--trainable` regex selecting the upper half of the decoder layers."""
    return layers_regex(spec, range(spec.num_layers // 2, spec.num_layers))


def build_model(config: dict[str, Any], setup: TrainingSetup, seed: int = 0):
    """A random-initialised causal LM prepared as `setup` says (frozen parameters, LoRA, checkpointing)."""
    import re

    import torch

    from meter.engine.measure import model_from_config

    torch.manual_seed(seed)
    model_type = config["model_type"]
    experts = {"experts_implementation": "eager"} if _has_experts(model_type) else {}
    model = model_from_config(config, attn_implementation=setup.attn_implementation, **experts)
    if setup.uses_lora:
        from peft import LoraConfig, get_peft_model

        targets = setup.lora_targets or QV_TARGETS[model_type]
        lora = LoraConfig(
            r=setup.lora_r,
            lora_alpha=2 * setup.lora_r,
            target_modules=targets if isinstance(targets, str) else list(targets),
            lora_dropout=setup.lora_dropout,
            use_dora=setup.dora,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    elif setup.method == "freeze":
        rx = re.compile("|".join(setup.trainable))
        for name, p in model.named_parameters():
            p.requires_grad_(bool(rx.search(name)))
    if setup.gradient_checkpointing:
        base = model.get_base_model() if setup.uses_lora else model
        if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.23 (every_n_layers)
            base.activation_checkpointing_enable(  # also makes the embedding output require grad, as Trainer sees it
                activation_checkpointing_kwargs={"use_reentrant": setup.reentrant_checkpointing},
                every_n_layers=setup.checkpoint_every_n_layers,
            )
        elif setup.checkpoint_every_n_layers == 1:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": setup.reentrant_checkpointing}
            )
        else:
            raise RuntimeError("checkpointing every n-th layer needs transformers >= 5.23")
    model.train()
    return model


def _has_experts(model_type: str) -> bool:
    return model_type in ("mixtral", "qwen2_moe", "qwen3_moe")


def padded_batch(lengths: list[int], padded_to: int, vocab: int, seed: int = 0):
    """Right-padded input_ids, attention_mask and labels (-100 on padding) for the given real lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), padded_to), generator=g)
    mask = torch.zeros(len(lengths), padded_to, dtype=torch.long)
    for row, s in enumerate(lengths):
        mask[row, :s] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def truth_counter(**kwargs):
    """``torch.utils.flop_counter.FlopCounterMode``, less the rotary frequency table, with convolution backward
    counted by hand.

    transformers before 5.4 builds the rotary table with a bmm of inverse frequencies by positions (head_dim/2
    multiply-adds per position and forward, once per batch, no weights: 1e-8 of a step at 8B); later releases
    build it elementwise, which FlopCounterMode does not count. Training compute, as the meter defines it, is
    the model's work on tokens: the table is left out, in every transformers release alike.

    torch's convolution_backward formula counts a grouped convolution's weight gradient ``groups`` times (it runs
    the formula of an ungrouped convolution); each gradient of a convolution is as much work as its forward:
    2 × (output elements) × (weights per output channel), here written out by hand for the convolutions the
    models use (not transposed). ``test_grouped_convolution_backward`` shows the difference.
    """
    from math import prod

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def conv_backward(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kw) -> int:
        transposed, output_mask = args[4], args[7]
        assert not transposed, "the truth counts ordinary convolutions only"
        return sum(output_mask[:2]) * 2 * prod(grad_out_shape) * prod(w_shape[1:])

    kwargs["custom_mapping"] = {torch.ops.aten.convolution_backward: conv_backward, **kwargs.get("custom_mapping", {})}

    class TruthCounter(FlopCounterMode):
        def rotary_flops(self) -> int:
            counts = self.get_flop_counts()
            names = [n for n in counts if n.rsplit(".", 1)[-1].startswith("rotary_emb")]
            outermost = [n for n in names if not any(n.startswith(o + ".") for o in names)]
            return sum(sum(counts[n].values()) for n in outermost)

        def get_total_flops(self) -> int:
            return super().get_total_flops() - self.rotary_flops()

    return TruthCounter(display=False, **kwargs)


def measure_step(model, input_ids, attention_mask, labels) -> int:
    """FLOPs of one forward + backward as ``torch.utils.flop_counter.FlopCounterMode`` counts them (less the
    rotary table, see ``truth_counter``)."""
    counter = truth_counter()
    with counter:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
    return counter.get_total_flops()
