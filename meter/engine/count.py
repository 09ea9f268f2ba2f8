"""The count: FLOPs of training a model spec with a method, over token statistics.

One module (over 400 lines) because it is one algorithm: the walk over the graph applies the method, the
requires_grad propagation, the backward rule and the recompute rule together, and splitting them would scatter
the one invariant they share (each product is counted once per pass, per operand that needs a gradient).

Two counts, side by side (see DESIGN.md, "The count"):

``regulatory``  what the Guidelines (Annex A) ask for: forward and backward passes over non-padding tokens,
                causal attention as the s(s+1)/2 query–key pairs it needs (fewer within a sliding window),
                gradients only where a trainable parameter needs them, **no recomputation**.
``executed``    what the kernels ran: padded positions, attention as the implementation runs it (full L² for
                eager and SDPA, s(s+1)/2 for flash-attention), the activation gradients transformers forces into
                frozen lower layers when gradient checkpointing is on, and the recomputed forward.

Backward rule, per product A·B: one product of the same size for each operand that requires grad (autograd's
``needs_input_grad``). A frozen weight therefore costs forward + activation gradient; a frozen layer below every
trainable parameter costs forward only.

Recompute rule (non-reentrant ``torch.utils.checkpoint``, transformers' default): the recomputation of a
checkpointed layer stops as soon as every tensor saved for backward has been regenerated. Inputs of a product are
saved *before* it runs, so a product after which nothing else is saved is not recomputed (Llama's ``down_proj``),
while one followed by a saving op is (GPT-2's ``c_proj`` before its dropout, Gemma-2's ``down_proj`` before its
post-norm). Reentrant checkpointing recomputes the whole layer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from meter.engine.graph import Block, MatMul, ModelGraph, Op, Pointwise, build_graph, layer_prefix
from meter.engine.spec import ModelSpec
from meter.engine.tokens import TokenStats
from meter.errors import MeterError

Method = Literal["full", "lora", "qlora", "freeze"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora", "freeze")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")

# peft's default LoRA targets per architecture (peft.utils.constants), used when none are given
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "falcon": ("query_key_value",),
    "phi3": ("qkv_proj",),
}


def target_names(targets: tuple[str, ...] | str | None) -> list[str] | str | None:
    """LoRA targets for reports: a regex or 'all-linear' as given, module paths by their distinct names."""
    if targets is None or isinstance(targets, str):
        return targets
    return sorted({t.rsplit(".", 1)[-1] for t in targets})


def default_lora_targets(model_type: str) -> tuple[str, ...]:
    return DEFAULT_LORA_TARGETS.get(model_type, ("q_proj", "v_proj"))


@dataclass(frozen=True)
class TrainingSetup:
    """How the model is trained: which parameters learn, and how the step is executed."""

    method: Method = "full"
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str | None = None  # peft semantics: names/suffixes, a regex, or "all-linear"
    lora_dropout: float = 0.0
    dora: bool = False
    trainable: tuple[str, ...] = ()  # regexes over parameter names: `freeze`, or modules_to_save with LoRA
    gradient_checkpointing: bool = False
    checkpoint_every_n_layers: int = 1
    reentrant_checkpointing: bool = False
    attn_implementation: str = "eager"
    observed: bool = False  # read off a live model: the exact trainable names are passed to CostModel

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MeterError(f"unknown training method '{self.method}': use one of {', '.join(METHODS)}")
        if self.method in ("lora", "qlora") and (
            isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r <= 0
        ):
            raise MeterError(f"LoRA rank must be a positive integer, got {self.lora_r!r}")
        if self.method == "freeze" and not self.trainable and not self.observed:
            raise MeterError("method 'freeze' needs the trainable modules: give --trainable REGEX")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise MeterError(
                f"unknown attention implementation '{self.attn_implementation}': "
                f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.checkpoint_every_n_layers <= 0:
            raise MeterError("checkpoint_every_n_layers must be a positive integer")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise MeterError(f"LoRA dropout must be in [0, 1), got {self.lora_dropout}")
        for pattern in self.trainable:
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as e:
                raise MeterError(f"trainable pattern {pattern!r} is not a valid regex: {e}") from None
        targets = self.lora_targets
        if isinstance(targets, str) and targets != "all-linear":
            try:
                re.compile(targets)
            except (re.error, OverflowError, RecursionError) as e:
                raise MeterError(f"--lora-targets {targets!r} is not a valid regex: {e}") from None

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def fused_attention(self) -> bool:
        return self.attn_implementation != "eager"

    @property
    def flash(self) -> bool:
        return self.attn_implementation.startswith("flash_attention")

    def describe(self) -> str:
        if self.uses_lora:
            targets = target_names(self.lora_targets) or ["peft's default targets"]
            targets = targets if isinstance(targets, str) else ",".join(targets)
            s = f"{self.method} r={self.lora_r} on {targets}" + (" (DoRA)" if self.dora else "")
        elif self.method == "freeze":
            s = "freeze, trainable as observed" if self.observed else f"freeze, trainable ~ {'|'.join(self.trainable)}"
        else:
            s = "full"
        return s + (", gradient checkpointing" if self.gradient_checkpointing else "")


@dataclass(frozen=True)
class PassFlops:
    forward: int = 0
    backward: int = 0
    recompute: int = 0

    def __add__(self, o: PassFlops) -> PassFlops:
        return PassFlops(self.forward + o.forward, self.backward + o.backward, self.recompute + o.recompute)

    def times(self, n: int) -> PassFlops:
        return PassFlops(self.forward * n, self.backward * n, self.recompute * n)

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.recompute

    @property
    def forward_only(self) -> PassFlops:
        """The same work in a pass without backward (reference, generation, no_grad passes): forward alone."""
        return PassFlops(self.forward)


@dataclass(frozen=True)
class Rates:
    """FLOPs per unit of one regime: per token, per query–key pair (by window), per forward pass, per position
    scored by the output head, per row of a pass (the generic path's linear attention: state work per row)."""

    per_token: PassFlops = PassFlops()
    per_pair: dict[int | None, PassFlops] = field(default_factory=dict)
    per_pass: PassFlops = PassFlops()
    per_head: PassFlops = PassFlops()
    per_row: PassFlops = PassFlops()


class Totals:
    """The totals of anything with ``regulatory`` and ``executed`` PassFlops and the ``tokens`` they are about."""

    regulatory: PassFlops
    executed: PassFlops
    tokens: int

    @property
    def regulatory_flops(self) -> int:
        return self.regulatory.total

    @property
    def executed_flops(self) -> int:
        return self.executed.total

    @property
    def flops_per_token(self) -> float:
        return self.regulatory_flops / self.tokens if self.tokens else 0.0


@dataclass(frozen=True)
class FlopsCount(Totals):
    """The result: both counts and their parts, exact integers."""

    regulatory: PassFlops
    executed: PassFlops
    tokens: int
    model: str
    method: str

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "method": self.method,
            "tokens": self.tokens,
            "regulatory_flops": self.regulatory_flops,
            "executed_flops": self.executed_flops,
            "flops_per_token": self.flops_per_token,
            "regulatory": self.regulatory.__dict__,
            "executed": self.executed.__dict__,
        }


class RatedCount:
    """``count()`` from regulatory and executed Rates: shared by the analytic CostModel and the measured fallback
    (meter.engine.measure), so both count batches, heads and forward-only passes the same way."""

    regulatory: Rates
    executed: Rates
    setup: TrainingSetup
    label: str

    @property
    def head_flops(self) -> int:
        """Forward FLOPs of the output head per scored position (what a recomputed head product costs)."""
        return self.regulatory.per_head.forward

    def count(self, stats: TokenStats, *, backward: bool = True) -> FlopsCount:
        """Both counts of the batches in ``stats``; ``backward=False`` for passes that run forward only."""
        reg, exe = self.regulatory, self.executed
        regulatory = (
            reg.per_token.times(stats.tokens)
            + reg.per_head.times(stats.head_tokens)
            + reg.per_pass.times(stats.passes)
            + reg.per_row.times(stats.rows)
        )
        for window, rate in reg.per_pair.items():
            regulatory += rate.times(stats.causal_pairs(window))
        executed = (
            exe.per_token.times(stats.padded_tokens)
            + exe.per_head.times(stats.padded_head_tokens)
            + exe.per_pass.times(stats.passes)
            + exe.per_row.times(stats.rows)
        )
        for window, rate in exe.per_pair.items():
            pairs = stats.causal_pairs(window) if self.setup.flash else stats.padded_sq
            executed += rate.times(pairs)
        if backward:
            executed += PassFlops(recompute=self.head_flops * stats.head_recompute_tokens)
        else:
            regulatory, executed = regulatory.forward_only, executed.forward_only
        return FlopsCount(regulatory, executed, stats.tokens, self.label, self.setup.method)


class CostModel(RatedCount):
    """FLOPs rates of one (model, training setup): build once, count many batches (the count is linear)."""

    def __init__(self, spec: ModelSpec, setup: TrainingSetup | None = None, *, trainable: Iterable[str] | None = None):
        """``trainable``: the exact trainable parameter names (as in the graph), when read off a live model;
        otherwise they follow from the setup."""
        self.spec = spec
        self.setup = setup or TrainingSetup()
        self.graph = apply_lora(build_graph(spec), self.setup) if self.setup.uses_lora else build_graph(spec)
        if trainable is not None:
            self.trainable = frozenset(trainable) & self.graph.parameters.keys()
        else:
            is_trainable = _trainable_predicate(self.graph, self.setup)
            self.trainable = frozenset(name for name in self.graph.parameters if is_trainable(name))
        self.regulatory = _rates(self.graph, self.trainable, self.setup, executed=False)
        self.executed = _rates(self.graph, self.trainable, self.setup, executed=True)
        self.label = spec.name or spec.model_type

    @property
    def windows(self) -> frozenset[int]:
        """Sliding windows whose pair counts TokenStats must carry (TokenStats.from_lengths(..., windows=...))."""
        return frozenset(w for w in self.spec.windows if w is not None)

    def trainable_parameters(self) -> int:
        return sum(self.graph.parameters[name] for name in self.trainable)


def count_flops(spec: ModelSpec, stats: TokenStats, setup: TrainingSetup | None = None) -> FlopsCount:
    return CostModel(spec, setup).count(stats)


# --------------------------------------------------------------------------------------------------------------
# Which parameters learn


def _trainable_predicate(graph: ModelGraph, setup: TrainingSetup) -> Callable[[str], bool]:
    if setup.method == "full":
        return lambda name: True
    pattern = re.compile("|".join(f"(?:{p})" for p in setup.trainable)) if setup.trainable else None
    if setup.method == "freeze":
        assert pattern is not None
        if not any(pattern.search(n) for n in graph.parameters):
            raise MeterError(
                f"--trainable {'|'.join(setup.trainable)!r} matches no parameter of {graph.spec.model_type} "
                f"(names look like {next(n for n in graph.parameters if '.0.' in n)})"
            )
        return lambda name: bool(pattern.search(name))
    return lambda name: ".lora_" in name or bool(pattern and pattern.search(name))


# transformers 5 fused MoE experts into stacked 3-D parameters; peft (>= 0.18) maps the v4 target names of the
# models in transformers' conversion table onto them and wraps those *parameters* (peft ParamWrapper):
# leaf target name -> wrapped parameter suffix. Qwen2-MoE is not in that table in transformers 5.23.
PEFT_MOE_PARAM_TARGETS: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen3_moe": {
        "gate": "gate.weight",
        "gate_proj": "gate_up_proj",
        "up_proj": "gate_up_proj",
        "down_proj": "down_proj",
    },
}


@functools.cache
def peft_maps_expert_parameters() -> bool:
    """Whether the installed peft maps target names onto stacked expert parameters (its
    ``utils/transformers_weight_conversion``, peft 0.19 and later); peft 0.18 (the SageMaker images') wraps
    ``nn.Linear`` modules only, so "all-linear" leaves the experts alone. Without peft: the newer behaviour. Read
    from the files, without importing peft (a config-only estimate stays fast)."""
    import importlib.util

    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.origin:
        return True
    return (Path(spec.origin).parent / "utils" / "transformers_weight_conversion.py").is_file()


def _lora_targets(graph: ModelGraph, setup: TrainingSetup) -> tuple[Callable[[str], bool], dict[str, int]]:
    """Which linear modules get LoRA (a name predicate), and which MoE parameters (suffix -> projections fused)."""
    targets = setup.lora_targets or default_lora_targets(graph.spec.model_type)
    all_linear = targets == "all-linear" or (isinstance(targets, (list, tuple)) and list(targets) == ["all-linear"])
    param_map = PEFT_MOE_PARAM_TARGETS.get(graph.spec.model_type) if peft_maps_expert_parameters() else None
    if isinstance(targets, str) and not all_linear:
        rx = re.compile(targets)
        return (lambda name: rx.fullmatch(name) is not None), {}
    if not param_map:
        if all_linear:
            return (lambda name: name != "lm_head"), {}  # peft excludes the output layer
        names = tuple(targets)
        return (lambda name: any(name == t or name.endswith("." + t) for t in names)), {}
    # peft resolves targets to leaf names; names of the MoE table become parameter targets, the rest stay modules
    if all_linear:
        leaves = {m.name.rsplit(".", 1)[-1] for m in graph.matmuls() if m.lora_shape and m.name != "lm_head"}
        leaves |= set(param_map)
    else:
        leaves = set(targets)
    modules = tuple(t for t in leaves if t.rsplit(".", 1)[-1] not in param_map)
    fused: dict[str, set[str]] = {}
    for t in leaves:
        leaf = t.rsplit(".", 1)[-1]
        if leaf in param_map:
            fused.setdefault(param_map[leaf], set()).add(leaf)
    needed = {p: {k for k, v in param_map.items() if v == p} for p in fused}
    for p, got in fused.items():
        if got != needed[p]:
            raise MeterError(
                f"LoRA target(s) {', '.join(sorted(got))} of {graph.spec.model_type} are fused into {p}: "
                f"also target {', '.join(sorted(needed[p] - got))}"
            )
    # a fused weight gets rank r per original projection (peft's rank_pattern)
    params = {p: len(needed[p]) for p in fused}
    return (lambda name: any(name == t or name.endswith("." + t) for t in modules)), params


def _param_lora(op: MatMul, rank: int, params: dict[str, int]) -> list[Op]:
    """peft's ParamWrapper: W' = W + s·B@A each forward pass, then W' used where W was.

    W' requires grad, so the products using it now also compute their weight gradient; the delta's own backward
    computes the gradients of A and B (two products of its size). For a stacked expert weight peft folds the delta
    into a baddbmm over experts, which peft 0.21 runs twice per forward pass (measured with FlopCounterMode): the
    second run is executed-only. A 2-D weight (the router) is merged once.
    """
    e, fout, fin = op.param_shape
    a_w, b_w = f"{op.weight}.lora_A.default.weight", f"{op.weight}.lora_B.default.weight"
    params[a_w], params[b_w] = e * rank * fin, e * rank * fout
    w, flops = op.out + "/W", 2 * e * fout * rank * fin
    lora_b = Pointwise(out=b_w + "/t", inputs=(), params=(b_w,), saves=False)
    delta = MatMul(f"{op.weight}.lora_delta", w, (lora_b.out,), flops, unit="pass", weight=a_w)
    rerun = [MatMul(f"{op.weight}.lora_delta_rerun", w + "/rerun", (), flops, unit="pass", executed_only=True)]
    return [lora_b, *(rerun if e > 1 else []), delta, replace(op, inputs=(*op.inputs, w), weight=None)]


def apply_lora(graph: ModelGraph, setup: TrainingSetup) -> ModelGraph:
    """Wrap every targeted linear as peft does: base(x) + B(A(dropout(x))) · scaling."""
    matches, param_targets = _lora_targets(graph, setup)
    r = setup.lora_r
    params = dict(graph.parameters)
    blocks: list[Block] = []
    hits = 0
    for block in graph.blocks:
        ops: list[Op] = []
        for op in block.ops:
            if isinstance(op, MatMul) and op.param_shape:
                fused = next((k for p, k in param_targets.items() if op.weight.endswith("." + p)), 0)
                if fused:
                    hits += 1
                    ops.extend(_param_lora(op, r * fused, params))
                    continue
            if not (isinstance(op, MatMul) and op.lora_shape and matches(op.name)):
                ops.append(op)
                continue
            hits += 1
            fin, fout = op.lora_shape
            x = op.inputs[0]
            ops.append(op)  # the base product; the adapter's sum below rewrites its output tensor
            if setup.lora_dropout > 0:
                ops.append(Pointwise(out=x + "/lora_dropout", inputs=(x,)))
                x = x + "/lora_dropout"
            a_w, b_w = f"{op.name}.lora_A.default.weight", f"{op.name}.lora_B.default.weight"
            params[a_w], params[b_w] = fin * r, r * fout
            if setup.dora:
                # DoRA's weight norm: lora_B(lora_A(I_in)) each forward pass, detached from backward
                params[f"{op.name}.lora_magnitude_vector.default.weight"] = fout
                ops.append(
                    MatMul(f"{op.name}.dora_weight", op.out + "/dora", (), 2 * fin * r * (fin + fout), unit="pass")
                )
            ops.append(MatMul(f"{op.name}.lora_A", op.out + "/a", (x,), 2 * fin * r, unit=op.unit, weight=a_w))
            ops.append(
                MatMul(f"{op.name}.lora_B", op.out + "/b", (op.out + "/a",), 2 * r * fout, unit=op.unit, weight=b_w)
            )
            # × scaling (a Python float: saves nothing), + base
            ops.append(Pointwise(out=op.out, inputs=(op.out, op.out + "/b"), saves=False))
        blocks.append(replace(block, ops=tuple(ops)))
    if hits == 0:
        linears = sorted({m.name.rsplit(".", 1)[-1] for m in graph.matmuls() if m.lora_shape})
        raise MeterError(
            f"LoRA targets {setup.lora_targets!r} match no linear layer of {graph.spec.model_type} "
            f"(its linear layers: {', '.join(linears)})"
        )
    return replace(graph, blocks=tuple(blocks), parameters=params)


# --------------------------------------------------------------------------------------------------------------
# Forward, backward and recompute rates


def _rates(graph: ModelGraph, trainable: frozenset[str], setup: TrainingSetup, *, executed: bool) -> Rates:
    """One forward walk over the graph: propagate requires_grad, sum forward, backward and recompute FLOPs.

    Decoder layers of the same kind (window, MoE or dense), entered with the same requires_grad, checkpointed
    alike and with the same trainable parameters cost the same: each distinct layer is walked once, so a
    126-layer model costs about as much as a 2-layer one.
    """
    rg: dict[str, bool] = {}
    sums: dict[tuple[str, int | None], list[int]] = {}
    trainable_in_layer = _trainable_by_layer(graph.spec, trainable)
    cache: dict[tuple, tuple[dict, bool]] = {}
    for block in graph.blocks:
        checkpointed = (
            executed
            and setup.gradient_checkpointing
            and block.layer is not None
            and block.layer % setup.checkpoint_every_n_layers == 0
        )
        key = None
        if block.layer is not None:
            i = block.layer
            key = (graph.spec.windows[i], graph.spec.is_moe_layer(i), checkpointed, rg.get(block.input, False),
                   len(block.ops), trainable_in_layer.get(i, frozenset()))  # fmt: skip
        if key in cache:
            block_sums, rg[block.output] = cache[key]
        else:
            block_sums = _block_rates(block, rg, trainable, setup, executed=executed, checkpointed=checkpointed)
            if key is not None:
                cache[key] = (block_sums, rg[block.output])
        for k, (f, b, r) in block_sums.items():
            acc = sums.setdefault(k, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + f, acc[1] + b, acc[2] + r
    rates = {key: PassFlops(*v) for key, v in sums.items()}
    return Rates(
        per_token=rates.get(("token", None), PassFlops()),
        per_pair={w: r for (unit, w), r in rates.items() if unit == "pair"},
        per_pass=rates.get(("pass", None), PassFlops()),
        per_head=rates.get(("head", None), PassFlops()),
    )


def _trainable_by_layer(spec: ModelSpec, trainable: frozenset[str]) -> dict[int, frozenset[str]]:
    """Trainable parameter names of each decoder layer, relative to the layer ('self_attn.q_proj.weight')."""
    prefix = layer_prefix(spec) + "."
    by_layer: dict[int, set[str]] = {}
    for name in trainable:
        if name.startswith(prefix):
            index, _, rel = name[len(prefix) :].partition(".")
            by_layer.setdefault(int(index), set()).add(rel)
    return {i: frozenset(names) for i, names in by_layer.items()}


def _block_rates(
    block: Block,
    rg: dict[str, bool],
    trainable: frozenset[str],
    setup: TrainingSetup,
    *,
    executed: bool,
    checkpointed: bool,
) -> dict[tuple[str, int | None], list[int]]:
    """[forward, backward, recompute] FLOPs of one block per (unit, window); updates ``rg`` as autograd would."""
    sums: dict[tuple[str, int | None], list[int]] = {}
    saving: list[bool] = []
    fused = executed and setup.fused_attention
    force_input_grad = executed and setup.gradient_checkpointing and block.name == "embeddings"
    for op in block.ops:
        if type(op) is Pointwise:
            # with checkpointing on, transformers calls enable_input_require_grads(): embeddings output needs grad
            needs = (
                force_input_grad or any(rg.get(i, False) for i in op.inputs) or any(p in trainable for p in op.params)
            )
            rg[op.out] = needs
            saving.append(op.saves and needs)
            continue
        if op.executed_only and not executed:
            saving.append(False)
            continue
        grads = sum(rg.get(i, False) for i in op.inputs)
        inputs_rg = grads > 0
        if op.weight is not None and op.weight in trainable:
            grads += 1
        rg[op.out] = grads > 0 or (op.bias is not None and op.bias in trainable)
        acc = sums.setdefault((op.unit, op.window), [0, 0, 0])
        acc[0] += op.flops
        if op.unit == "pair" and fused:
            # One SDPA/flash kernel: whenever any of Q, K, V needs a gradient its backward computes all
            # three and recomputes Q·Kᵀ (4 products + 1). Booked on the context product, which sees Q, K, V.
            if inputs_rg and op.name.endswith(".context"):
                acc[1] += 4 * op.flops
                acc[2] += op.flops
        else:
            acc[1] += grads * op.flops
        saving.append(grads > 0)
    if checkpointed:
        for op in _recomputed(block, saving, setup.reentrant_checkpointing):
            sums.setdefault((op.unit, op.window), [0, 0, 0])[2] += op.flops
    return sums


def _recomputed(block: Block, saving: list[bool], reentrant: bool) -> Iterable[MatMul]:
    """Products a checkpointed layer runs again in backward: all (reentrant), or those before the last save."""
    last_save = max((i for i, s in enumerate(saving) if s), default=-1)
    for i, op in enumerate(block.ops):
        if type(op) is MatMul and not op.executed_only and (reentrant or i < last_save):
            yield op
