"""`ModelSpec`: the architecture facts the FLOPs count needs, read from a Hugging Face config.

One module (over 400 lines): the spec and its readers, one per family, with the field validation they share; a
reader is a few lines and reads best next to the fields it fills.

The spec is read from the config (a ``PretrainedConfig``, a ``config.json`` path or a dict), never from
``numel()`` of parameters: those may be sharded (FSDP, ZeRO-3) or 4-bit packed (QLoRA) and would shrink the count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meter.errors import MeterError, UnknownArchitecture


@dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts MLP: only ``top_k`` routed experts (and the shared one) run per token."""

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    layers: tuple[int, ...]  # indices of the layers whose MLP is sparse
    shared_intermediate_size: int = 0  # 0: no shared expert
    shared_expert_gate: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One decoder-only transformer, as far as its matrix multiplications are concerned."""

    model_type: str
    layout: str  # "gated" (Llama-like, Phi-3) or "plain" (GPT-2, GPT-NeoX, Falcon): see meter.engine.graph
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width (unused by MoE layers)
    gated_mlp: bool
    vocab_size: int
    tie_word_embeddings: bool
    windows: tuple[int | None, ...]  # per layer: sliding-window size, None = full causal attention
    qkv_features: int  # output width of the query/key/value projections together
    fused_qkv: bool = False
    fused_gate_up: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm with bias (GPT-2, GPT-NeoX, Falcon) rather than RMSNorm
    moe: MoESpec | None = None
    position_embeddings: int = 0  # learned absolute positions (GPT-2 wpe); parameters only, no FLOPs
    parallel_residual: bool = False  # attention and MLP read the same layer input (GPT-NeoX, Falcon)
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    post_norms: bool = False  # Gemma-2: norms after attention and MLP outputs as well
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    name: str = ""
    # the output head: the LM head over the vocabulary, or a sequence-classification / reward head ("score",
    # hidden × num_labels, never tied) when the config's architecture is *ForSequenceClassification
    head_outputs: int = 0  # 0: the vocabulary (LM head)

    @property
    def classification_head(self) -> bool:
        return self.head_outputs > 0

    @property
    def kv_features(self) -> int:
        return self.num_kv_heads * self.head_dim

    def is_moe_layer(self, index: int) -> bool:
        return self.moe is not None and index in self.moe.layers

    def parameter_count(self) -> int:
        """Total parameters implied by the config (for reports and the comparison formulas)."""
        from meter.engine.graph import build_graph

        return build_graph(self).parameter_count()

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["windows"] = sorted({w for w in self.windows if w is not None}) or None
        d["moe"] = None if self.moe is None else {**self.moe.__dict__, "layers": len(self.moe.layers)}
        return d


# --------------------------------------------------------------------------------------------------------------
# Reading configs


def load_config(config: Any) -> dict[str, Any]:
    """A config as a plain dict, from a ``PretrainedConfig``, a mapping, or a path to ``config.json``."""
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, Path)):
        from meter.jsonfile import read_json_object

        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        return read_json_object(path, "config file", "give a config.json path or a model directory")
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise MeterError(f"cannot read a model config from {type(config).__name__}: give a dict, path or PretrainedConfig")


class _Fields:
    """Typed access to config fields that collects every missing required field into one error."""

    def __init__(self, cfg: Mapping[str, Any], model_type: str):
        self.cfg = cfg
        self.model_type = model_type
        self.missing: list[str] = []

    def req(self, *names: str) -> int:
        for n in names:
            v = self.cfg.get(n)
            if v is not None:
                return self._positive_int(n, v)
        self.missing.append(names[0])
        return 1

    def opt(self, name: str, default: Any) -> Any:
        v = self.cfg.get(name)
        return default if v is None else v

    def opt_int(self, name: str, default: int) -> int:
        v = self.cfg.get(name)
        return default if v is None else self._positive_int(name, v)

    def _positive_int(self, name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v <= 0:
            raise MeterError(f"config field {name}={v!r} of {self.model_type} must be a positive integer")
        return int(v)

    def opt_count(self, name: str, default: int = 0) -> int:
        """A non-negative integer (0 allowed: max_window_layers, a shared expert's width when there is none)."""
        v = self.cfg.get(name)
        if v is None:
            return default
        return 0 if v == 0 and not isinstance(v, bool) else self._positive_int(name, v)

    def opt_fraction(self, name: str, default: float) -> float:
        """A probability (dropout): a number in [0, 1]."""
        v = self.cfg.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise MeterError(f"config field {name}={v!r} of {self.model_type} must be a number in [0, 1]")
        return float(v)

    def opt_layers(self, name: str, n_layers: int) -> set[int]:
        """A list of layer indices (mlp_only_layers)."""
        v = self.cfg.get(name)
        if v is None:
            return set()
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers
                                          for i in v):  # fmt: skip
            raise MeterError(
                f"config field {name}={v!r} of {self.model_type} must be a list of layer indices in 0..{n_layers - 1}"
            )
        return set(v)

    def check(self) -> None:
        if self.missing:
            raise MeterError(
                f"config of model_type '{self.model_type}' is missing required field(s): "
                f"{', '.join(self.missing)} (add them to config.json)"
            )


# families whose transformers config has a use_sliding_window flag that defaults to False: a sliding_window value
# without the flag is not applied (transformers runs full attention)
_WINDOW_FLAG_DEFAULT_OFF = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")


def _windows(f: _Fields, n_layers: int, default_pattern: Callable[[int], bool] | None = None) -> tuple:
    """Per-layer sliding windows from ``layer_types`` (transformers >= 4.53) or the older flags."""
    window = f.cfg.get("sliding_window")
    if window is not None:  # a window of no, negative or fractional tokens would count attention backwards
        window = f._positive_int("sliding_window", window)
    if f.model_type in _WINDOW_FLAG_DEFAULT_OFF and not f.cfg.get("use_sliding_window"):
        window = None  # transformers: sliding_window = sliding_window if use_sliding_window else None
    layer_types = f.cfg.get("layer_types")
    if layer_types:
        if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
            raise MeterError(f"config field layer_types of {f.model_type} must be a list of strings, one per layer")
        if len(layer_types) != n_layers:
            raise MeterError(f"config layer_types has {len(layer_types)} entries for {n_layers} layers")
        return tuple(window if t == "sliding_attention" and window else None for t in layer_types)
    if not window or f.cfg.get("use_sliding_window") is False:
        return (None,) * n_layers
    if f.cfg.get("use_sliding_window"):  # Qwen2: the first max_window_layers use full attention
        first = f.opt_count("max_window_layers", 0)
        return tuple(None if i < first else window for i in range(n_layers))
    pattern = default_pattern or (lambda i: True)
    return tuple(window if pattern(i) else None for i in range(n_layers))


def _read_gated(f: _Fields, model_type: str) -> ModelSpec:
    """Llama, Mistral, Mixtral, Qwen2/3 (MoE), Gemma 1/2, Phi-3: q/k/v/o attention and a gated MLP."""
    layers = f.req("num_hidden_layers")
    hidden = f.req("hidden_size")
    heads = f.req("num_attention_heads")
    vocab = f.req("vocab_size")
    moe = None
    if model_type == "mixtral":
        moe = MoESpec(
            num_experts=f.req("num_local_experts", "num_experts"),
            top_k=f.req("num_experts_per_tok"),
            expert_intermediate_size=f.req("intermediate_size"),
            layers=tuple(range(layers)),
        )
        intermediate = moe.expert_intermediate_size
    else:
        intermediate = f.req("intermediate_size")
    if model_type in ("qwen2_moe", "qwen3_moe"):
        step = f.opt_int("decoder_sparse_step", 1)
        dense = f.opt_layers("mlp_only_layers", layers)
        shared = f.opt_count("shared_expert_intermediate_size", 0) if model_type == "qwen2_moe" else 0
        moe = MoESpec(
            num_experts=f.req("num_experts", "num_local_experts"),  # transformers 5 serialises the latter
            top_k=f.req("num_experts_per_tok"),
            expert_intermediate_size=f.req("moe_intermediate_size"),
            layers=tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0),
            shared_intermediate_size=int(shared),
            shared_expert_gate=bool(shared),
        )
    f.check()
    kv_heads = f.opt_int("num_key_value_heads", heads)
    head_dim = f.opt_int("head_dim", hidden // heads)
    fused = model_type == "phi3"
    qkv_bias = model_type in ("qwen2", "qwen2_moe") or bool(f.opt("attention_bias", False))
    tie_default = model_type in ("gemma", "gemma2")
    gemma2_alternating = (lambda i: i % 2 == 0) if model_type == "gemma2" else None
    return ModelSpec(
        model_type=model_type,
        layout="gated",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        gated_mlp=True,
        vocab_size=vocab,
        tie_word_embeddings=bool(f.opt("tie_word_embeddings", tie_default)),
        windows=_windows(f, layers, gemma2_alternating),
        qkv_features=(heads + 2 * kv_heads) * head_dim,
        fused_qkv=fused,
        fused_gate_up=fused,
        qkv_bias=qkv_bias,
        o_bias=bool(f.opt("attention_bias", False)),
        mlp_bias=bool(f.opt("mlp_bias", False)),
        moe=moe,
        post_norms=model_type == "gemma2",
        norms=(
            "input_layernorm",
            "pre_feedforward_layernorm" if model_type == "gemma2" else "post_attention_layernorm",
        ),
        attention_dropout=f.opt_fraction("attention_dropout", 0.0),
        residual_dropout=f.opt_fraction("resid_pdrop", 0.0) if fused else 0.0,
    )


def _plain_spec(model_type: str, layers: int, hidden: int, heads: int, **fields: Any) -> ModelSpec:
    """GPT-2, GPT-NeoX, Falcon: fused QKV, plain (2-matrix) MLP, LayerNorm with bias, full attention."""
    defaults = dict(num_kv_heads=heads, head_dim=hidden // heads, qkv_features=3 * hidden, windows=(None,) * layers)
    return ModelSpec(
        model_type=model_type,
        layout="plain",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        gated_mlp=False,
        fused_qkv=True,
        norm_bias=True,
        **{**defaults, **fields},
    )


def _read_gpt2(f: _Fields, model_type: str) -> ModelSpec:
    layers, hidden, heads, vocab = f.req("n_layer"), f.req("n_embd"), f.req("n_head"), f.req("vocab_size")
    f.check()
    return _plain_spec(
        model_type,
        layers,
        hidden,
        heads,
        intermediate_size=f.opt_int("n_inner", 4 * hidden),
        vocab_size=vocab,
        tie_word_embeddings=bool(f.opt("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        norms=("ln_1", "ln_2"),
        position_embeddings=f.opt_int("n_positions", 1024),
        attention_dropout=f.opt_fraction("attn_pdrop", 0.1),  # GPT2Config's defaults
        residual_dropout=f.opt_fraction("resid_pdrop", 0.1),
    )


def _read_gpt_neox(f: _Fields, model_type: str) -> ModelSpec:
    layers, hidden = f.req("num_hidden_layers"), f.req("hidden_size")
    heads, vocab, inter = f.req("num_attention_heads"), f.req("vocab_size"), f.req("intermediate_size")
    f.check()
    bias = bool(f.opt("attention_bias", True))
    return _plain_spec(
        model_type,
        layers,
        hidden,
        heads,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=bool(f.opt("tie_word_embeddings", False)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        parallel_residual=bool(f.opt("use_parallel_residual", True)),
        attention_dropout=f.opt_fraction("attention_dropout", 0.0),
        residual_dropout=f.opt_fraction("hidden_dropout", 0.0),
    )


def _read_falcon(f: _Fields, model_type: str) -> ModelSpec:
    layers, hidden = f.req("num_hidden_layers"), f.req("hidden_size")
    heads, vocab = f.req("num_attention_heads"), f.req("vocab_size")
    f.check()
    head_dim = hidden // heads
    new_arch = bool(f.opt("new_decoder_architecture", False))
    if new_arch:
        kv_heads = f.opt_int("num_kv_heads", heads)
        qkv = (heads + 2 * kv_heads) * head_dim
    elif f.opt("multi_query", True):
        kv_heads, qkv = 1, hidden + 2 * head_dim
    else:
        kv_heads, qkv = heads, 3 * hidden
    parallel = bool(f.opt("parallel_attn", True))
    n_ln = f.opt("num_ln_in_parallel_attn", None) or (2 if new_arch else 1)
    if new_arch and parallel and n_ln == 2:
        norms = ("ln_attn", "ln_mlp")
    elif not new_arch and not parallel:
        norms = ("input_layernorm", "post_attention_layernorm")
    else:
        norms = ("input_layernorm",)
    bias = bool(f.opt("bias", False))
    return _plain_spec(
        model_type,
        layers,
        hidden,
        heads,
        num_kv_heads=kv_heads,
        qkv_features=qkv,
        intermediate_size=f.opt_int("ffn_hidden_size", 4 * hidden),
        vocab_size=vocab,
        tie_word_embeddings=bool(f.opt("tie_word_embeddings", True)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        parallel_residual=parallel or new_arch,
        norms=norms,
        attention_dropout=f.opt_fraction("attention_dropout", 0.0),
        residual_dropout=f.opt_fraction("hidden_dropout", 0.0),
    )


_READERS: dict[str, Callable[[_Fields, str], ModelSpec]] = {
    **{
        t: _read_gated
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "phi3")
    },
    "gpt2": _read_gpt2,
    "gpt_neox": _read_gpt_neox,
    "falcon": _read_falcon,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_READERS))
_TOWERS = ("vision_config", "audio_config", "speech_config", "video_config")


def refuse_multimodal(cfg: Mapping[str, Any]) -> None:
    """Never unwrap silently: a multimodal model's towers and their tokens are compute of the run."""
    towers = [k for k in _TOWERS if isinstance(cfg.get(k), Mapping)]
    if towers:
        raise MeterError(
            f"model_type '{cfg.get('model_type')}' is a multimodal model ({', '.join(towers)}): the meter counts "
            "language models only and will not count its text model alone, which would leave out the "
            f"{towers[0].removesuffix('_config')} tower and its tokens; fine-tune and meter the text model by itself"
        )


def spec_from_config(config: Any, *, name: str = "") -> ModelSpec:
    """Read a :class:`ModelSpec` from a ``PretrainedConfig``, a dict or a ``config.json`` path."""
    cfg = load_config(config)
    refuse_multimodal(cfg)
    if not isinstance(cfg.get("model_type"), str | None):
        raise MeterError(f'config field model_type={cfg["model_type"]!r} must be a string (e.g. "llama")')
    if cfg.get("model_type") not in _READERS and isinstance(cfg.get("text_config"), Mapping):
        raise MeterError(
            f"model_type '{cfg.get('model_type')}' wraps a text_config: give the text model's config "
            f"(model_type '{cfg['text_config'].get('model_type')}') to count it"
        )
    model_type = cfg.get("model_type")
    if not model_type:
        raise MeterError('config has no model_type: add it to config.json (e.g. "model_type": "llama")')
    reader = _READERS.get(model_type)
    if reader is None:
        raise UnknownArchitecture(
            f"unknown model_type '{model_type}': supported are {', '.join(SUPPORTED_MODEL_TYPES)}; "
            "for another architecture use --measure (counts one step with FlopCounterMode on the meta device)"
        )
    spec = reader(_Fields(cfg, model_type), model_type)
    if spec.hidden_size % spec.num_heads and spec.layout == "plain":
        raise MeterError(f"hidden_size {spec.hidden_size} is not divisible by {spec.num_heads} heads")
    if spec.num_heads % spec.num_kv_heads:
        raise MeterError(f"{spec.num_heads} attention heads are not a multiple of {spec.num_kv_heads} key/value heads")
    if spec.moe is not None and spec.moe.top_k > spec.moe.num_experts:
        raise MeterError(
            f"config field num_experts_per_tok={spec.moe.top_k} is more than the {spec.moe.num_experts} experts"
        )
    return replace(spec, name=name or str(cfg.get("_name_or_path") or ""), head_outputs=_head_outputs(cfg))


def _head_outputs(cfg: Mapping[str, Any]) -> int:
    """num_labels of a *ForSequenceClassification config (reward models), else 0: the LM head."""
    architectures = cfg.get("architectures") or ()
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return 0
    labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2  # transformers' default is 2 labels
    if isinstance(labels, bool) or not isinstance(labels, int) or labels <= 0:
        raise MeterError(f"num_labels {labels!r} of a sequence-classification config must be a positive integer")
    return labels
