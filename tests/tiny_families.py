"""Every causal-LM model type of the installed transformers, built tiny on CPU from its own config class.

The config class's defaults are kept and only sizes are shrunk, so each family keeps its particulars (MLA, shared
experts, dense first layers, sinks, sliding windows, hybrid linear attention …). ``CANNOT_BUILD`` lists the types
that cannot be built tiny on CPU here, with why; the test asserts each of them still fails, so the list stays true.
"""

from __future__ import annotations

from typing import Any

_SIZES: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=32, vocab_size=512,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_topk=2, n_shared_experts=1,
    first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
    qk_nope_head_dim=8, v_head_dim=16, sliding_window=8, attention_chunk_size=8, max_position_embeddings=512,
    linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip

# model type -> why it cannot be built and trained tiny on CPU here (checked: tests/test_model_families.py)
CANNOT_BUILD: dict[str, str] = {
    "bailing_hybrid": "its tiny default layer pattern has no attention layer",
    "bamba": "its tiny default layer pattern has no attention layer",
    "granitemoehybrid": "its tiny default layer pattern has no attention layer",
    "jamba": "its tiny default layer pattern has no attention layer",
    "kimi_linear": "its tiny default layer pattern has no attention layer",
    "qwen4_exp_text": "its tiny default layer pattern has no attention layer",
    "cohere_compass_text": "its config names a layer type its model does not define",
    "dbrx": "nested attention/ffn configs: the shared sizes do not apply",
    "dots3_note_text": "per-layer attributes only",
    "gemma3n_text": "per-layer cache sharing rejects a 4-layer config",
    "gemma4_text": "per-layer attributes only",
    "gemma4_unified_text": "per-layer attributes only",
    "gemma4_assistant": "an assistant head for another model, not a standalone LM",
    "gemma4_unified_assistant": "an assistant head for another model, not a standalone LM",
    "gpt_neo": "attention_layers must list every layer",
    "mamba2": "head count and sizes are tied in its validation",
    "zaya": "its validation rejects the shrunk sizes",
    "falcon": "head_dim is derived (covered by the analytic engine's own tests)",
    "xlstm": "v_head_dim is derived",
    "lfm2_moe": "its layer types are not derived from the layer count",
    "zamba": "its layer pattern is not derived from the layer count",
    "zamba2": "its layer pattern is not derived from the layer count",
    "codegen": "rotary_dim defaults to the full-size head",
    "gptj": "rotary_dim defaults to the full-size head",
    "plbart": "encoder-decoder: fixed head counts",
    "whisper": "speech encoder-decoder",
    "musicgen": "audio decoder with nested configs",
    "musicgen_melody": "audio decoder with nested configs",
    "prophetnet": "encoder-decoder: separate layer counts",
    "reformer": "needs is_decoder and its own chunk settings",
    "xlnet": "no causal sequence length limit (permutation LM)",
    "xmod": "needs a default language set on the model",
}

# model type -> why it is not built here at all: its default towers would take GBs (not checked by building)
TOO_LARGE: dict[str, str] = {
    **{t: "multimodal wrapper: its vision or audio tower keeps full-size defaults (GBs on CPU)" for t in (
        "blt", "dots3_note", "emu3", "fuyu", "gemma3", "gemma4", "gemma4_unified", "got_ocr2", "llama4", "mllama",
        "moss_transcribe_diarize", "qwen3_5", "qwen3_5_moe", "qwen4_exp",
    )},
    "gemma3n": "needs timm for its vision tower",
}  # fmt: skip

# encoder-decoder and wrapper types in the causal-LM mapping: not decoder LMs people fine-tune as such
NOT_DECODER_LMS = frozenset(
    {"bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus", "trocr"}
)


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str, **sizes_given: Any):
    """The model type's config class with its defaults, sizes shrunk (MLA keeps one head size per key and value);
    ``sizes_given`` override the shrunk sizes (``num_hidden_layers=8``)."""
    from transformers import AutoConfig

    cls = type(AutoConfig.for_model(model_type))
    defaults = cls()
    sizes = {k: v for k, v in {**_SIZES, **sizes_given}.items() if hasattr(defaults, k)}
    if hasattr(defaults, "kv_lora_rank"):  # MLA: as many key/value heads as query heads, head_dim = rope dims
        sizes.update(num_key_value_heads=sizes["num_attention_heads"])
        if "head_dim" in sizes:
            sizes["head_dim"] = _SIZES["qk_rope_head_dim"]
    if hasattr(defaults, "layer_types"):
        sizes["layer_types"] = None  # derived again from the shrunk layer count
        try:
            return cls(**sizes)
        except Exception:
            sizes.pop("layer_types")
    return cls(**sizes)


def build(model_type: str, layers: int | None = None, **from_config: Any):
    """The tiny model, random-initialised on the current device, eager attention and eager experts."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **({"num_hidden_layers": layers} if layers else {}))
    kwargs = {"attn_implementation": "eager", **from_config}
    try:
        return AutoModelForCausalLM.from_config(config, experts_implementation="eager", **kwargs)
    except (TypeError, ValueError):
        return AutoModelForCausalLM.from_config(config, **kwargs)
