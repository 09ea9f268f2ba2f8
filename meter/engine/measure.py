"""The generic path for architectures the analytic engine does not know: measure on the meta device.

One module (over 400 lines): building the meta copy, preparing it as the live model trains, measuring and fitting
are one procedure whose steps depend on each other's details (which modules were swapped, which lengths were run).

A copy of the model is built from its config on ``torch.device("meta")`` (no memory, no weights), with eager
attention, prepared as the live model trains (the same PEFT adapters, the same frozen parameters, the same gradient
checkpointing), and training steps are run under ``torch.utils.flop_counter.FlopCounterMode`` at three sequence
lengths. Forward and backward FLOPs are fitted exactly as ``c + a·s + b·s²`` (c per pass, a per token, b per
query–key pair of eager attention), per kind of decoder layer; a step of two rows tells what c holds per row
(linear attention's recurrent state) from what it holds per pass (DoRA's weight norm), and the output head is
measured apart with ``logits_to_keep=1``. The rates then count batches exactly as the analytic engine's do
(meter.engine.count.RatedCount): padding, packing, heads scored on fewer positions, forward-only passes.

- Speed: only one layer of each kind runs (meter.engine.layer_kinds); a kind's FLOPs are the difference a second
  layer of it makes to the step, times the layers of that kind. DeepSeek-V3 (61 layers, 671B) is measured in about
  a second on 2 cores. A config alone, for a bundled model, reads the rates measured when the package was built
  (meter.engine.measured_rates): milliseconds, no torch.
- PEFT: the adapters are built on the meta device too (no memory, no initialisation), peft's parameter-LoRA on
  stacked experts included (its ``torch.autocast("meta")`` is answered, see _no_autocast_on_meta).

- Sliding windows: a layer whose config ``layer_types`` entry is ``sliding_attention`` has its pairs credited within
  ``sliding_window`` in the regulatory count (Gemma 3, gpt-oss, Cohere 2 …), and a ``chunked_attention`` layer its
  pairs within chunks of ``attention_chunk_size`` (Llama 4; meter.engine.tokens.chunk_key); executed attention is
  counted as eager runs it (L² per row), also when the live model runs SDPA or flash.
- Mixture of experts: transformers' experts modules dispatch through ``experts_implementation``; the copy uses
  ``batched_mm``, which runs each token's top-k experts as batched matmuls FlopCounterMode sees, with shapes that
  do not depend on routing (so it runs on meta). That is the routed compute eager experts run, exactly. An experts
  module that runs every expert on every token (Llama 4's ``Llama4TextExperts``) is counted as it runs in the
  executed count and scaled to the routed top-k in the regulatory count. Any other experts module is refused with
  a reason rather than guessed.

Needs torch and transformers (and peft for a PEFT model).
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from meter.engine.count import PassFlops, RatedCount, Rates, TrainingSetup
from meter.engine.layer_kinds import Stack, read_stack, representatives_only
from meter.engine.spec import refuse_multimodal
from meter.engine.tokens import chunk_key
from meter.errors import MeterError

_LENGTHS = (64, 128, 256)
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class MeasuredCostModel(RatedCount):
    """Rates measured with FlopCounterMode on a meta-device copy; counts like meter.engine.count.CostModel."""

    windows: frozenset[int] = frozenset()

    def __init__(
        self,
        config: dict[str, Any],
        setup: TrainingSetup | None = None,
        *,
        name: str = "",
        model: Any = None,
        bare: bool = False,
    ):
        """``model``: the live model whose setup the copy mirrors (PEFT, frozen, checkpointing); without it, the
        setup applied to the config (``estimate``, ``--measure``). ``bare``: the base model without adapters
        (reference passes with adapters disabled). For a bundled config, meter.engine.measured_rates.cost_model
        reads the rates measured when the package was built instead."""
        self.setup = setup or TrainingSetup()
        self.name = self.label = name or str(config.get("_name_or_path") or config.get("model_type"))
        refuse_multimodal(config)
        self.source = "now"  # when the rates were measured
        if model is None and (self.setup.method != "full" or self.setup.gradient_checkpointing):
            model = _measured(model_for_setup, config, self.setup)  # a meta-device model prepared as the setup says
        meta = _measured(_meta_copy, config, model, bare=bare)
        shape = _shape(meta)
        self.windows = frozenset(w for _, w in shape.layers if w is not None)
        self.parameters = _base_parameters(meta)
        self.trainable = sum(p.numel() for p in meta.parameters() if p.requires_grad)
        # regulatory: gradients only where a trainable parameter needs them, no recomputation
        self.executed, self.regulatory = _measured(_rates, meta, shape, checkpointing=False)
        if model is not None and not bare and self.setup.gradient_checkpointing:
            # executed: what transformers runs with checkpointing on: activation gradients forced into frozen
            # layers (enable_input_require_grads) and the recomputed forward, which shows up as backward work
            grads = _feeds_grad_into_embeddings(model)
            forced, _ = _measured(_rates, meta, shape, checkpointing=False, input_grads=grads)
            recomputing, _ = _measured(_rates, meta, shape, checkpointing=True, input_grads=grads,
                                       reentrant=self.setup.reentrant_checkpointing)  # fmt: skip
            self.executed = Rates(
                per_token=_with_recompute(forced.per_token, recomputing.per_token),
                per_pair={None: _with_recompute(forced.per_pair[None], recomputing.per_pair[None])},
                per_pass=_with_recompute(forced.per_pass, recomputing.per_pass),
                per_head=forced.per_head,
                per_row=_with_recompute(forced.per_row, recomputing.per_row),
            )
        self.setup = replace(self.setup, attn_implementation="eager")  # what the executed count assumes

    @classmethod
    def of_rates(cls, setup: TrainingSetup, name: str, *, windows, parameters: int, trainable: int,
                 executed: Rates, regulatory: Rates, source: str) -> MeasuredCostModel:  # fmt: skip
        """A cost model from rates measured before (meter.engine.measured_rates)."""
        model = cls.__new__(cls)
        model.setup = replace(setup, attn_implementation="eager")  # what the executed count assumes
        model.name = model.label = name
        model.source = source
        model.windows, model.parameters, model.trainable = frozenset(windows), parameters, trainable
        model.executed, model.regulatory = executed, regulatory
        return model

    def trainable_parameters(self) -> int:
        return self.trainable


def _with_recompute(plain: PassFlops, recomputing: PassFlops) -> PassFlops:
    return PassFlops(plain.forward, plain.backward, max(recomputing.backward - plain.backward, 0))


def _measured(rates, *args, **kwargs):
    """A measurement whose failure is a MeterError naming the reason (the runtime then records it not counted)."""
    try:
        return rates(*args, **kwargs)
    except MeterError:
        raise
    except Exception as e:  # an op the meta device cannot run: data-dependent shapes, .item(), …
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        what = f"{type(e).__name__}: {reason}"
        raise MeterError(f"this architecture cannot be measured on the meta device ({what})") from e


def model_from_config(config: dict[str, Any], **from_config: Any):
    """A random-initialised transformers causal LM from a config dict (keys starting with '_' are metadata).

    Builds on the current default device: wrap the call in ``torch.device("meta")`` for a model without memory.
    """
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise MeterError("building a model from its config needs transformers: pip install 'flops-meter[hf]'") from None
    cfg = copy.deepcopy({k: v for k, v in config.items() if not k.startswith("_")})  # transformers edits nested dicts
    model_type = cfg.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
    except ValueError as e:
        raise MeterError(f"transformers does not know model_type '{model_type}' either: {e}") from None
    return AutoModelForCausalLM.from_config(hf_config, **from_config)


def model_for_setup(config: dict[str, Any], setup: TrainingSetup):
    """A meta-device model from a config, prepared as a Trainer would for ``setup`` (a config-only estimate):
    PEFT LoRA/DoRA adapters on the setup's targets, frozen parameters for ``freeze``, and with checkpointing the
    input-gradient hook transformers adds when the embeddings are frozen."""
    import torch

    if setup.method == "qlora":
        raise MeterError("the measured path counts qlora as lora on full-precision weights: use --method lora")
    with torch.device("meta"):
        model = model_from_config(config, attn_implementation="eager", **_experts(config))
    if setup.uses_lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise MeterError("measuring a LoRA setup needs peft: pip install 'flops-meter[hf]'") from None
        targets = setup.lora_targets or "all-linear"
        targets = targets if isinstance(targets, str) else list(targets)
        # all-linear as it can train: peft cannot wrap a Linear whose forward returns more than a tensor (the
        # routers of Llama 4 and Phi-3.5-MoE return (scores, logits)), so those are left out, as a user must
        routers = [n for n, m in model.named_modules() if _overrides_linear(m)] if targets == "all-linear" else []
        lora = LoraConfig(r=setup.lora_r, target_modules=targets, use_dora=setup.dora, exclude_modules=routers or None)
        try:
            with torch.device("meta"):  # the adapters too: no memory, no initialisation work
                model = get_peft_model(model, lora)
        except ValueError as e:
            raise MeterError(f"--lora-targets: {str(e).splitlines()[0]}") from None
    elif setup.method == "freeze":
        pattern = re.compile("|".join(f"(?:{p})" for p in setup.trainable))
        matched = 0
        for name, p in model.named_parameters():
            p.requires_grad_(bool(pattern.search(name)))
            matched += p.requires_grad
        if not matched:
            example = next((n for n, _ in model.named_parameters() if ".0." in n), "")
            raise MeterError(f"--trainable {pattern.pattern!r} matches no parameter (names look like {example})")
    if setup.gradient_checkpointing and setup.method != "full":
        (model.get_base_model() if hasattr(model, "get_base_model") else model).enable_input_require_grads()
    return model


def _overrides_linear(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and type(module).forward is not torch.nn.Linear.forward


def _meta_copy(config: dict[str, Any], live: Any, *, bare: bool):
    """The model on the meta device, prepared as ``live`` trains (or plain, for a config alone)."""
    try:
        import torch
    except ImportError:
        raise MeterError("the measured path needs torch and transformers: pip install 'flops-meter[hf]'") from None
    if live is None:
        with torch.device("meta"):
            model = model_from_config(config, attn_implementation="eager", **_experts(config))
        return model.train()
    from meter.runtime.introspect import unwrap

    top = unwrap(live)
    base = top.get_base_model() if hasattr(top, "get_base_model") else top
    with torch.device("meta"):
        model = type(base)._from_config(
            copy.deepcopy(base.config), attn_implementation="eager", **_experts(base.config)
        )
    adapter = getattr(top, "active_adapter", None) if hasattr(top, "peft_config") else None
    if adapter is not None and not bare:
        from peft import get_peft_model

        with torch.device("meta"):
            model = get_peft_model(model, copy.deepcopy(top.peft_config[adapter]))
    elif not bare:  # full or freeze: the live model's trainable parameters, by name
        trainable = {_plain(n) for n, p in top.named_parameters() if p.requires_grad}
        for n, p in model.named_parameters():
            p.requires_grad_(_plain(n) in trainable)
    return model.train()


def _plain(name: str) -> str:
    return re.sub(r"^(module\.|_orig_mod\.)+", "", name)


def _base_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n and "lora_magnitude" not in n)


def _feeds_grad_into_embeddings(live) -> bool:
    """transformers' enable_input_require_grads (checkpointing with frozen embeddings) leaves this hook behind."""
    from meter.runtime.introspect import unwrap

    top = unwrap(live)
    base = top.get_base_model() if hasattr(top, "get_base_model") else top
    return getattr(base, "_require_grads_hook", None) is not None


@dataclass(frozen=True)
class _Shape:
    """Where to read a step's FLOPs: the decoder layers by kind (meter.engine.layer_kinds: one measured layer
    stands for all of its kind, with its sliding window), the experts modules that run every expert on every token
    (with the fraction a token routes to, inside a representative layer or outside the stack), and the rotary
    embeddings (whose frequency table is left out)."""

    stack: Stack | None = None
    dense_experts: tuple[tuple[str, Fraction], ...] = ()
    rotary: tuple[str, ...] = ()

    @property
    def layers(self) -> tuple[tuple[str, int | None], ...]:
        return tuple((name, window) for name, window, _ in self.stack.representatives) if self.stack else ()

    def multiplicity(self, name: str) -> int:
        """How many layers the module ``name`` stands for: its representative layer's count, or 1."""
        for layer, _, count in self.stack.representatives if self.stack else ():
            if name == layer or name.startswith(layer + "."):
                return count
        return 1


@dataclass(frozen=True)
class _Step:
    """One measured training step: totals, and the named modules' FLOPs, each as (forward, backward)."""

    total: tuple[int, int]
    modules: dict[str, tuple[int, int]]


def _rates(model, shape: _Shape, *, checkpointing: bool, reentrant: bool = False, input_grads: bool = False):
    """Executed and regulatory Rates, fitted exactly from three lengths and a step of two rows (per pass, row,
    token, pair, head position)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if checkpointing:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if input_grads:
        target.enable_input_require_grads()
    try:
        run = _Runner(model, shape)
        try:
            first = run(_LENGTHS[0])
        except RuntimeError as e:
            if "item()" not in str(e):
                raise
            run.masked = False  # a mask check the meta device cannot run: no mask, the cache keeps packing checks off
            first = run(_LENGTHS[0])
        steps = {s: first if s == _LENGTHS[0] else run(s) for s in _LENGTHS}
        longest = _LENGTHS[-1]
        try:
            kept = run(longest, keep=1)
        except TypeError:  # a forward without logits_to_keep: the head stays in the per-token rate
            kept = None
        # the head ran on every position in the fits and on one in ``kept``: the difference, with the same layers
        head_work = kept and tuple(a - b for a, b in zip(steps[longest].total, kept.total, strict=True))
        steps = {s: run.whole_stack(s, steps[s]) for s in _LENGTHS}
        try:  # two rows: what a pass does once per row (linear attention's state) apart from once per pass
            two_rows = run.whole_stack(_LENGTHS[0], run(_LENGTHS[0], rows=2), rows=2).total
        except Exception:  # a model that cannot run two rows on meta keeps it all per pass
            two_rows = None
    finally:
        if checkpointing:
            target.gradient_checkpointing_disable()
        if input_grads:
            target.disable_input_require_grads()

    def fit(read) -> tuple[PassFlops, PassFlops, PassFlops]:  # (per pass, per token, per pair)
        f = [_fit([(s, read(steps[s])[i]) for s in _LENGTHS]) for i in (0, 1)]
        return tuple(PassFlops(f[0][j], f[1][j]) for j in range(3))

    per_pass, per_token, per_pair = fit(lambda st: st.total)
    per_row = PassFlops()
    if two_rows is not None:  # F(2 rows) − F(1 row) = per row + per token·s + per pair·s²
        s = _LENGTHS[0]
        row = [per_token.forward * s + per_pair.forward * s * s, per_token.backward * s + per_pair.backward * s * s]
        per_row = PassFlops(*(two_rows[i] - steps[s].total[i] - row[i] for i in (0, 1)))
        per_pass = PassFlops(per_pass.forward - per_row.forward, per_pass.backward - per_row.backward)
    head = PassFlops()
    if head_work is not None:  # the head ran on every position in the fits: move it out of the per-token rate
        head = PassFlops(*(f // (longest - 1) for f in head_work))
    per_token = PassFlops(per_token.forward - head.forward, per_token.backward - head.backward)
    executed = Rates(per_token=per_token, per_pair={None: per_pair}, per_pass=per_pass, per_head=head, per_row=per_row)

    # regulatory: each layer's pairs within its window, and the routed share of experts that run every expert
    pairs: dict[int | None, PassFlops] = {}
    windowed = PassFlops()
    for name, window in shape.layers:
        if window is not None:
            _, _, layer_pairs = fit(lambda st, n=name: st.modules.get(n, (0, 0)))
            pairs[window] = pairs.get(window, PassFlops()) + layer_pairs
            windowed += layer_pairs
    if windowed.total:
        pairs[None] = PassFlops(per_pair.forward - windowed.forward, per_pair.backward - windowed.backward)
    else:
        pairs = {None: per_pair}
    unrouted = [0, 0]
    for name, routed in shape.dense_experts:
        _, dense, _ = fit(lambda st, n=name: st.modules.get(n, (0, 0)))
        for i, flops in enumerate((dense.forward, dense.backward)):
            share = flops * (1 - routed)
            if share.denominator != 1:
                raise MeterError(f"experts module {name} does not run the same work for every expert")
            unrouted[i] += int(share)
    regulatory = Rates(
        per_token=PassFlops(per_token.forward - unrouted[0], per_token.backward - unrouted[1]),
        per_pair=pairs,
        per_pass=per_pass,
        per_head=head,
        per_row=per_row,
    )
    return executed, regulatory


class _Runner:
    """Measured steps with one layer of each kind running (meter.engine.layer_kinds), and what the whole stack runs.

    A kind's FLOPs are read as a difference of totals, never from FlopCounterMode's attribution to modules, which
    loses backward work in some models (Bloom, Falcon: the layers' backward is partly charged to no module): the
    step is run again with a second layer of the kind, and the difference is one layer of it. A kind with a single
    layer needs no such run for the totals; its pairs, for a sliding-window credit, are read from its module.
    """

    def __init__(self, model, shape: _Shape):
        self.model, self.shape, self.masked = model, shape, True
        self._layers: dict[int, dict[str, tuple[int, int]]] = {}  # length -> kind -> one layer's (fwd, bwd)

    def __call__(self, s: int, keep: int = 0, second: str | None = None, rows: int = 1) -> _Step:
        with representatives_only(self.model, self.shape.stack, second=second):
            return _step(self.model, s, self.shape, keep=keep, masked=self.masked, rows=rows)

    def whole_stack(self, s: int, step: _Step, rows: int = 1) -> _Step:
        """``step`` (representatives only) as the whole stack runs it: totals and each named module's FLOPs."""
        extra, modules = [0, 0], dict(step.modules)
        for name, _, count in self.shape.stack.representatives if self.shape.stack else ():
            if count > 1:
                one = tuple(a - b for a, b in zip(self(s, second=name, rows=rows).total, step.total, strict=True))
                modules[name] = one
                extra = [e + (count - 1) * f for e, f in zip(extra, one, strict=True)]
        modules = {n: tuple(self.shape.multiplicity(n) * f for f in flops) for n, flops in modules.items()}
        return _Step((step.total[0] + extra[0], step.total[1] + extra[1]), modules)


def _step(model, s: int, shape: _Shape, keep: int = 0, masked: bool = True, rows: int = 1) -> _Step:
    """One training step of ``rows`` rows of length ``s``: the totals and the named modules' FLOPs, rotary tables
    left out."""
    import torch

    ids = torch.zeros(rows, s, dtype=torch.long, device="meta")
    # an explicit mask: without one (and without a cache) transformers inspects position_ids for packing, a
    # data-dependent check the meta device cannot run. Some models check the mask itself for all-ones (hybrid
    # linear attention): those run without a mask, and the packing check is answered (see _one_unpacked_row).
    kwargs: dict[str, Any] = {"attention_mask": torch.ones(rows, s, dtype=torch.long, device="meta")} if masked else {}
    counter = flop_counter()
    if keep:
        kwargs["logits_to_keep"] = keep
    prefix = type(model).__name__ + "."
    layers = [n for n, _ in shape.layers]
    names = layers + [n for n, _ in shape.dense_experts] + list(shape.rotary)
    # one mode around forward and backward: FlopCounterMode attributes backward work to modules only when it saw
    # their forward; the backward is the difference to the forward's snapshot
    with counter, _one_unpacked_row(masked), _no_autocast_on_meta():
        logits = model(input_ids=ids, **kwargs).logits
        forward, by_module = counter.get_total_flops(), _by_module(counter, prefix, names)
        logits.float().sum().backward()
    both = _by_module(counter, prefix, names)
    measured = {n: (by_module.get(n, 0), both.get(n, 0) - by_module.get(n, 0)) for n in names}
    # the rotary frequency table (a bmm of inverse frequencies by positions in transformers < 5.4): computed once
    # per batch from positions alone, no weights, no rows; not model compute, and not a per-token rate
    table = sum(sum(measured[r]) for r in shape.rotary)
    for rotary in shape.rotary:  # a layer's own rotary embedding: its table is not the layer's work either
        for name in (n for n in layers if rotary.startswith(n + ".")):
            measured[name] = tuple(a - b for a, b in zip(measured[name], measured[rotary], strict=True))
    modules = {n: f for n, f in measured.items() if n not in shape.rotary}
    return _Step((forward - table, counter.get_total_flops() - forward), modules)


def flop_counter():
    """``torch.utils.flop_counter.FlopCounterMode`` with the weight gradient of a grouped convolution counted once
    per group.

    torch's formula for ``aten.convolution_backward`` computes the weight gradient as an ungrouped convolution of
    the input with the output gradient, so a grouped convolution's weight gradient is counted ``groups`` times: for
    the depthwise causal convolution of hybrid linear attention (Qwen3-Next: 8,192 channels, one group each) that is
    8,192 times its work, about a third of the whole step. Forward and input-gradient formulas are right.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

    def grouped_conv_backward(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                              output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
        args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups)
        # torch's own formula (shape-wrapped: the output shapes go in as out_val), one gradient at a time
        grad_input = conv_backward_flop(*args, [True, False, False], out_val=out_shape) if output_mask[0] else 0
        grad_weight = conv_backward_flop(*args, [False, True, False], out_val=out_shape) if output_mask[1] else 0
        return grad_input + grad_weight // max(groups, 1)

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: grouped_conv_backward})


@contextlib.contextmanager
def _one_unpacked_row(masked: bool):
    """Without a mask, transformers looks for packed sequences in position_ids (data-dependent, so not on meta).
    The measured batch is one unpacked row: the answer is known, "none", and given while the step runs."""
    if masked:
        yield
        return
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = found


@contextlib.contextmanager
def _no_autocast_on_meta():
    """torch has no autocast for the meta device, and two callers ask for it while the measured step runs:
    transformers before 5.4 (the 5.3 of the Hugging Face training image) asks ``torch.is_autocast_enabled("meta")``
    in its rotary embeddings, and peft's ParamWrapper (LoRA on stacked expert parameters) enters
    ``torch.autocast("meta", enabled=False)``; torch answers both with an error. The answers are known (no autocast:
    the measured step runs none) and given while the step runs."""
    import torch

    asked, entered = torch.is_autocast_enabled, torch.autocast

    def is_autocast_enabled(*args):
        return False if args and args[0] == "meta" else asked(*args)

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else entered(device_type, *args, **kwargs)

    torch.is_autocast_enabled, torch.autocast = is_autocast_enabled, autocast
    try:
        yield
    finally:
        torch.is_autocast_enabled, torch.autocast = asked, entered


def _by_module(counter, prefix: str, names) -> dict[str, int]:
    counts = counter.get_flop_counts()
    return {n: sum(counts[prefix + n].values()) for n in names if prefix + n in counts}


def _shape(model) -> _Shape:
    """The decoder layers by kind (with their sliding windows, from the config transformers built), the dense
    experts that run when only the representatives do, and the rotary embeddings."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = getattr(config, "num_hidden_layers", None)
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    chunk = getattr(config, "attention_chunk_size", None)
    spans = {"sliding_attention": window, "chunked_attention": chunk_key(chunk) if chunk else None}
    experts = _num_experts(config)
    stack: Stack | None = None
    dense: list[tuple[str, Fraction]] = []
    rotary = []
    for name, module in model.named_modules():
        if name and type(module).__name__.endswith("RotaryEmbedding"):
            rotary.append(name)
        if stack is None and n_layers and type(module).__name__ == "ModuleList" and len(module) == n_layers:
            windows = [spans.get(layer_types[i]) if i < len(layer_types) else None for i in range(n_layers)]
            stack = read_stack(model, name, windows)
        if experts > 1 and _is_experts(module, experts) and not _dispatches(module):
            if type(module).__name__ not in _DENSE_EXPERTS:
                raise MeterError(
                    f"experts module {type(module).__name__} does not dispatch through transformers' "
                    "experts_implementation: its routed compute cannot be measured on the meta device"
                )
            dense.append((name, Fraction(config.num_experts_per_tok, config.num_local_experts)))
    if stack is not None:  # only what runs: the representatives' modules and those outside the stack
        stood_in = tuple(f"{stack.name}.{i}" for i, _ in stack.stands_in)
        runs = lambda n: not any(n == s or n.startswith(s + ".") for s in stood_in)  # noqa: E731
        dense = [(n, f) for n, f in dense if runs(n)]
    return _Shape(stack, tuple(dense), tuple(rotary))


# experts modules that run every expert on every token (the router zeroes the unrouted ones' contribution)
_DENSE_EXPERTS = frozenset({"Llama4TextExperts"})


def _dispatches(module) -> bool:
    """Whether an experts module runs through transformers' ``use_experts_implementation`` (its forward is the
    decorator's dispatcher, in every transformers 5 release), so ``batched_mm`` is what it runs on the meta copy."""
    code = getattr(type(module).forward, "__code__", None)
    return code is not None and Path(code.co_filename).parts[-2:] == ("integrations", "moe.py")


def _is_experts(module, experts: int) -> bool:
    """A module holding stacked expert weights (a parameter of its own shaped (experts, ·, ·))."""
    return any(p.dim() == 3 and p.shape[0] == experts for p in module.parameters(recurse=False))


def _num_experts(config) -> int:
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    text = get("text_config")
    if text is not None and not isinstance(text, (int, str)):
        return _num_experts(text)
    return max((v for v in map(get, _MOE_KEYS) if isinstance(v, int)), default=0)


def _experts(config) -> dict[str, str]:
    """from_config arguments: batched_mm experts for a mixture-of-experts model (see the module docstring)."""
    return {"experts_implementation": "batched_mm"} if _num_experts(config) > 1 else {}


def _fit(points: list[tuple[int, int]]) -> tuple[int, int, int]:
    """Exact (c, a, b) with F(s) = c + a·s + b·s² through three points; integers, or an error."""
    (s1, f1), (s2, f2), (s3, f3) = points
    # divided differences
    d1 = Fraction(f2 - f1, s2 - s1)
    d2 = Fraction(f3 - f2, s3 - s2)
    b = (d2 - d1) / (s3 - s1)
    a = d1 - b * (s1 + s2)
    c = f1 - a * s1 - b * s1 * s1
    if any(x.denominator != 1 for x in (a, b, c)):
        raise MeterError("the measured step is not of the form c + a·s + b·s²: this architecture cannot be measured")
    return int(c), int(a), int(b)
