"""The computation of one training forward pass, as the matrix multiplications transformers runs.

Each decoder layer is an ordered list of ops, in the order the Hugging Face modelling code executes them:

- :class:`MatMul` — a product whose FLOPs we count (2 per multiply-add), per *token* (projections, experts,
  LM head), per query–key *pair* (attention scores and values), or per forward *pass* (DoRA's weight norm).
  Its operands are activation tensors and at most one weight; its backward computes one product of the same
  size for every operand that requires a gradient (autograd skips the others).
- :class:`Pointwise` — norms, activations, softmax, dropout, residual adds: no counted FLOPs, but they carry
  ``requires_grad`` (a trainable norm weight makes its output require grad) and they may *save* tensors for
  backward, which decides what non-reentrant gradient checkpointing recomputes (see :mod:`meter.engine.count`).

Parameter names are those of ``model.named_parameters()`` for the same architecture, so a ``--trainable`` regex or
a LoRA target list selects exactly what it selects on the real model (the tests check every name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the spec calls the graph for its parameter count: annotations only here
    from meter.engine.spec import ModelSpec

Unit = Literal["token", "pair", "pass", "head"]  # head: per position the output head scores


@dataclass(frozen=True, slots=True)
class MatMul:
    name: str  # module path, e.g. "model.layers.0.self_attn.q_proj"
    out: str
    inputs: tuple[str, ...]  # activation operands
    flops: int  # forward FLOPs per unit
    unit: Unit = "token"
    weight: str | None = None  # parameter operand
    bias: str | None = None  # a bias makes the output require grad; its gradient is a sum, not a product
    window: int | None = None  # pair unit: sliding window of this attention (None: full causal)
    lora_shape: tuple[int, int] | None = None  # (in, out) of an nn.Linear / Conv1D that LoRA may target
    param_shape: tuple[int, int, int] | None = None  # (experts, out, in) of a router/expert weight peft can wrap
    executed_only: bool = False  # run by the implementation but not needed for the update (left out of regulatory)


@dataclass(frozen=True, slots=True)
class Pointwise:
    out: str
    inputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    saves: bool = True  # saves a tensor for backward when anything it reads requires grad


Op = MatMul | Pointwise


@dataclass(frozen=True)
class Block:
    name: str
    ops: tuple[Op, ...]
    layer: int | None = None  # decoder layer index: the unit transformers checkpoints
    input: str = ""  # the tensor entering the block (decoder layers)
    output: str = ""  # the tensor leaving it


@dataclass(frozen=True)
class ModelGraph:
    spec: ModelSpec
    blocks: tuple[Block, ...]
    parameters: dict[str, int] = field(hash=False)  # name -> numel, from the config's shapes

    def parameter_count(self) -> int:
        return sum(self.parameters.values())

    def matmuls(self):
        for block in self.blocks:
            for op in block.ops:
                if isinstance(op, MatMul):
                    yield op


class _Builder:
    """Appends ops of one block; records parameter shapes as it goes."""

    def __init__(self, params: dict[str, int], prefix: str = ""):
        self.ops: list[Op] = []
        self.params = params
        self.prefix = prefix
        self._n = 0

    def t(self, label: str) -> str:
        self._n += 1
        return f"{self.prefix}{label}#{self._n}"

    def linear(self, module: str, x: str, fin: int, fout: int, *, bias: bool = False, lora: bool = True) -> str:
        name = self.prefix + module
        out = self.t(module)
        self.params[f"{name}.weight"] = fin * fout
        if bias:
            self.params[f"{name}.bias"] = fout
        self.ops.append(
            MatMul(
                name=name,
                out=out,
                inputs=(x,),
                flops=2 * fin * fout,
                weight=f"{name}.weight",
                bias=f"{name}.bias" if bias else None,
                lora_shape=(fin, fout) if lora else None,
            )
        )
        return out

    def experts(self, param: str, x: str, shape: tuple[int, int, int], top_k: int) -> str:
        """A stacked 3-D expert weight (experts, out, in), applied to every routed (token, expert) assignment."""
        name = self.prefix + param
        out = self.t(param)
        e, fout, fin = shape
        self.params[name] = e * fout * fin
        self.ops.append(MatMul(name, out, (x,), top_k * 2 * fin * fout, weight=name, param_shape=shape))
        return out

    def norm(self, module: str, x: str, size: int, *, bias: bool) -> str:
        name = self.prefix + module
        params = (f"{name}.weight",) + ((f"{name}.bias",) if bias else ())
        for p in params:
            self.params[p] = size
        return self.pointwise(module, x, params=params)

    def pointwise(self, label: str, *inputs: str, params: tuple[str, ...] = (), saves: bool = True) -> str:
        out = self.t(label)
        self.ops.append(Pointwise(out=out, inputs=inputs, params=params, saves=saves))
        return out

    def dropout(self, x: str, p: float) -> str:
        # F.dropout with p == 0 returns its input untouched: nothing is saved
        return self.pointwise("dropout", x) if p > 0 else x

    def attention(self, module: str, q: str, k: str, v: str, spec: ModelSpec, window: int | None) -> str:
        """Eager attention: S = Q·Kᵀ, P = softmax(S) (saved), O = P·V, over all query heads (KV repeated)."""
        name = self.prefix + module
        per_pair = 2 * spec.num_heads * spec.head_dim
        s = self.t("scores")
        self.ops.append(MatMul(f"{name}.scores", s, (q, k), per_pair, unit="pair", window=window))
        p = self.dropout(self.pointwise("softmax", s), spec.attention_dropout)
        o = self.t("context")
        self.ops.append(MatMul(f"{name}.context", o, (p, v), per_pair, unit="pair", window=window))
        return o


# --------------------------------------------------------------------------------------------------------------
# Names of modules per layout and model type (as in transformers 4.4x–5.x)

_PLAIN_NAMES = {
    # model_type: (root, layers, embeddings, final norm, attention, qkv, out, mlp, up, down)
    "gpt2": ("transformer", "h", ("wte", "wpe"), "ln_f", "attn", "c_attn", "c_proj", "mlp", "c_fc", "c_proj"),
    "gpt_neox": (
        "gpt_neox",
        "layers",
        ("embed_in",),
        "final_layer_norm",
        "attention",
        "query_key_value",
        "dense",
        "mlp",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ),
    "falcon": (
        "transformer",
        "h",
        ("word_embeddings",),
        "ln_f",
        "self_attention",
        "query_key_value",
        "dense",
        "mlp",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ),
}


def _gated_layer(b: _Builder, spec: ModelSpec, i: int, x: str) -> str:
    h, d = spec.hidden_size, spec.head_dim
    q_out, kv_out = spec.num_heads * d, spec.kv_features
    n1 = b.norm(spec.norms[0], x, h, bias=False)
    if spec.fused_qkv:
        q = k = v = b.linear("self_attn.qkv_proj", n1, h, spec.qkv_features, bias=spec.qkv_bias)
    else:
        q = b.linear("self_attn.q_proj", n1, h, q_out, bias=spec.qkv_bias)
        k = b.linear("self_attn.k_proj", n1, h, kv_out, bias=spec.qkv_bias)
        v = b.linear("self_attn.v_proj", n1, h, kv_out, bias=spec.qkv_bias)
    if spec.model_type in ("qwen3", "qwen3_moe"):  # per-head RMSNorm on queries and keys
        q = b.norm("self_attn.q_norm", q, d, bias=False)
        k = b.norm("self_attn.k_norm", k, d, bias=False)
    o = b.attention("self_attn", q, k, v, spec, spec.windows[i])
    a = b.linear("self_attn.o_proj", o, q_out, h, bias=spec.o_bias)
    if spec.post_norms:
        a = b.norm("post_attention_layernorm", a, h, bias=False)
    a = b.dropout(a, spec.residual_dropout)
    r = b.pointwise("residual", x, a, saves=False)
    n2 = b.norm(spec.norms[1], r, h, bias=False)
    m = _moe(b, spec, n2) if spec.is_moe_layer(i) else _gated_mlp(b, spec, n2, "mlp", spec.intermediate_size)
    if spec.post_norms:
        m = b.norm("post_feedforward_layernorm", m, h, bias=False)
    m = b.dropout(m, spec.residual_dropout)
    return b.pointwise("residual", r, m, saves=False)


def _gated_mlp(b: _Builder, spec: ModelSpec, x: str, module: str, width: int) -> str:
    h, bias = spec.hidden_size, spec.mlp_bias
    if spec.fused_gate_up:
        act = b.pointwise("act_mul", b.linear(f"{module}.gate_up_proj", x, h, 2 * width, bias=bias))
    else:
        gate = b.pointwise("act", b.linear(f"{module}.gate_proj", x, h, width, bias=bias))
        up = b.linear(f"{module}.up_proj", x, h, width, bias=bias)
        act = b.pointwise("mul", gate, up)
    return b.linear(f"{module}.down_proj", act, width, h, bias=bias)


def _moe(b: _Builder, spec: ModelSpec, x: str) -> str:
    """Router, then top-k routed experts (transformers' eager expert loop); Qwen2-MoE adds a gated shared expert."""
    moe, h = spec.moe, spec.hidden_size
    assert moe is not None
    width, k = moe.expert_intermediate_size, moe.top_k
    shared = (
        _gated_mlp(b, spec, x, "mlp.shared_expert", moe.shared_intermediate_size)
        if moe.shared_intermediate_size
        else None
    )
    name = b.prefix + "mlp.gate"
    logits = b.t("router")
    b.params[f"{name}.weight"] = moe.num_experts * h
    b.ops.append(
        MatMul(
            name, logits, (x,), 2 * h * moe.num_experts, weight=f"{name}.weight", param_shape=(1, moe.num_experts, h)
        )
    )
    up = b.experts("mlp.experts.gate_up_proj", x, (moe.num_experts, 2 * width, h), k)
    down = b.experts("mlp.experts.down_proj", b.pointwise("act_mul", up), (moe.num_experts, h, width), k)
    routed = b.pointwise("route", down, logits)  # × routing weights, index_add (saves the index)
    if shared is None:
        return routed
    if moe.shared_expert_gate:
        shared = b.pointwise("shared_gate", b.linear("mlp.shared_expert_gate", x, h, 1), shared)
    return b.pointwise("sum", routed, shared, saves=False)


def _plain_layer(b: _Builder, spec: ModelSpec, i: int, x: str) -> str:
    _, _, _, _, attn, qkv_name, out_name, mlp, up_name, down_name = _PLAIN_NAMES[spec.model_type]
    h = spec.hidden_size
    n1 = b.norm(spec.norms[0], x, h, bias=spec.norm_bias)
    qkv = b.linear(f"{attn}.{qkv_name}", n1, h, spec.qkv_features, bias=spec.qkv_bias)
    o = b.attention(attn, qkv, qkv, qkv, spec, spec.windows[i])
    a = b.linear(f"{attn}.{out_name}", o, spec.num_heads * spec.head_dim, h, bias=spec.o_bias)
    if spec.model_type != "falcon":  # Falcon applies its hidden dropout once, to attention + MLP together
        a = b.dropout(a, spec.residual_dropout)
    if spec.parallel_residual:
        n2 = b.norm(spec.norms[1], x, h, bias=spec.norm_bias) if len(spec.norms) == 2 else n1
        r = x
    else:
        r = b.pointwise("residual", x, a, saves=False)
        n2 = b.norm(spec.norms[1], r, h, bias=spec.norm_bias)
    act = b.pointwise("act", b.linear(f"{mlp}.{up_name}", n2, h, spec.intermediate_size, bias=spec.mlp_bias))
    m = b.linear(f"{mlp}.{down_name}", act, spec.intermediate_size, h, bias=spec.mlp_bias)
    if spec.parallel_residual:
        m = b.pointwise("sum", m, a, saves=False)
    m = b.dropout(m, spec.residual_dropout)
    return b.pointwise("residual", r, m, saves=False)


def _top_names(spec: ModelSpec) -> tuple[str, str, tuple[str, ...], str]:
    """(root module, layer list, embedding modules, final norm) of the architecture."""
    if spec.layout == "gated":
        return "model", "layers", ("embed_tokens",), "norm"
    return _PLAIN_NAMES[spec.model_type][:4]


def layer_prefix(spec: ModelSpec) -> str:
    """Where decoder layer i's parameters live: ``f"{layer_prefix(spec)}.{i}."``, e.g. 'model.layers'."""
    root, layers_name, _, _ = _top_names(spec)
    return f"{root}.{layers_name}"


def layers_regex(spec: ModelSpec, layers: Iterable[int]) -> str:
    """A trainable-parameter regex selecting whole decoder layers, e.g. ``model\\.layers\\.(2|3)\\.``."""
    import re

    return re.escape(layer_prefix(spec)) + r"\.(" + "|".join(str(i) for i in layers) + r")\."


def build_graph(spec: ModelSpec) -> ModelGraph:
    """The op graph of one training forward pass of ``spec`` (all parameters trainable, no adapters)."""
    params: dict[str, int] = {}
    h = spec.hidden_size
    root, layers_name, embeds, final_norm = _top_names(spec)
    layer_fn = _gated_layer if spec.layout == "gated" else _plain_layer

    emb = _Builder(params, f"{root}.")
    embed_params = tuple(f"{root}.{e}.weight" for e in embeds)
    params[embed_params[0]] = spec.vocab_size * h
    if len(embed_params) > 1:  # GPT-2 learned positions
        params[embed_params[1]] = spec.position_embeddings * h
    x = emb.pointwise("embed", params=embed_params, saves=False)
    blocks = [Block("embeddings", tuple(emb.ops))]

    for i in range(spec.num_layers):
        b = _Builder(params, f"{root}.{layers_name}.{i}.")
        x_in, x = x, layer_fn(b, spec, i, x)
        blocks.append(Block(f"layer {i}", tuple(b.ops), layer=i, input=x_in, output=x))

    head = _Builder(params, "")
    x = head.norm(f"{root}.{final_norm}", x, h, bias=spec.norm_bias)
    if spec.classification_head:  # transformers' *ForSequenceClassification: score(hidden) at every position
        name, outputs, weight = "score", spec.head_outputs, "score.weight"
    else:
        name, outputs = "lm_head", spec.vocab_size
        weight = embed_params[0] if spec.tie_word_embeddings else "lm_head.weight"
    if weight not in params:
        params[weight] = outputs * h
    head.ops.append(MatMul(name, "logits", (x,), 2 * h * outputs, unit="head", weight=weight, lora_shape=(h, outputs)))
    blocks.append(Block("head", tuple(head.ops)))
    return ModelGraph(spec=spec, blocks=tuple(blocks), parameters=params)
