"""The generic path for architectures the analytic engine does not know: measure on the meta device.

A copy of the model is built from its config on ``torch.device("meta")`` (no memory, no weights), with eager
attention, prepared as the live model trains (the same PEFT adapters, the same frozen parameters, the same gradient
checkpointing), and training steps are run under ``torch.utils.flop_counter.FlopCounterMode`` at three sequence
lengths. Forward and backward FLOPs are fitted exactly as ``c + a·s + b·s²`` (c per pass, a per token, b per
query–key pair of eager attention), and the output head is measured apart with ``logits_to_keep=1``. The rates then
count batches exactly as the analytic engine's do (meter.count.RatedCount): padding, packing, heads scored on fewer
positions, forward-only passes.

Stated limits, rather than guesses:
- regulatory attention is credited as causal (s(s+1)/2 pairs); sliding windows are not credited (conservative);
- executed attention is counted as eager runs it (L² per row), also when the live model runs SDPA or flash;
- mixture-of-experts models are refused: FlopCounterMode counts 0 for grouped-mm experts, and eager experts
  route data-dependently, which the meta device cannot run. The analytic engine covers Mixtral, Qwen2-MoE and
  Qwen3-MoE.

Needs torch and transformers (and peft for a PEFT model).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from fractions import Fraction
from typing import Any

from meter.count import PassFlops, RatedCount, Rates, TrainingSetup
from meter.errors import MeterError

_LENGTHS = (32, 64, 128)
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class MeasuredCostModel(RatedCount):
    """Rates measured with FlopCounterMode on a meta-device copy; counts like meter.count.CostModel."""

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
        """``model``: the live model whose setup the copy mirrors (PEFT, frozen, checkpointing); without it, a plain
        full fine-tuning of the config (``--measure``). ``bare``: the base model without adapters (reference
        passes with adapters disabled)."""
        self.setup = setup or TrainingSetup()
        self.name = self.label = name or str(config.get("_name_or_path") or config.get("model_type"))
        _refuse_moe(config)
        if model is None and (self.setup.method != "full" or self.setup.gradient_checkpointing):
            raise MeterError(
                "--measure counts full fine-tuning without gradient checkpointing from a config alone: drop "
                "--method/--gradient-checkpointing (the training-time meter measures any setup on the live model)"
            )
        meta = _meta_copy(config, model, bare=bare)
        self.parameters = _base_parameters(meta)
        self.trainable = sum(p.numel() for p in meta.parameters() if p.requires_grad)
        # regulatory: gradients only where a trainable parameter needs them, no recomputation
        self.regulatory = _rates(meta, checkpointing=False)
        self.executed = self.regulatory
        if model is not None and not bare and self.setup.gradient_checkpointing:
            # executed: what transformers runs with checkpointing on: activation gradients forced into frozen
            # layers (enable_input_require_grads) and the recomputed forward, which shows up as backward work
            forced = _rates(meta, checkpointing=False, input_grads=_feeds_grad_into_embeddings(model))
            recomputing = _rates(meta, checkpointing=True, reentrant=self.setup.reentrant_checkpointing,
                                 input_grads=_feeds_grad_into_embeddings(model))  # fmt: skip
            self.executed = Rates(
                per_token=_with_recompute(forced.per_token, recomputing.per_token),
                per_pair={None: _with_recompute(forced.per_pair[None], recomputing.per_pair[None])},
                per_pass=_with_recompute(forced.per_pass, recomputing.per_pass),
                per_head=forced.per_head,
            )
        self.setup = replace(self.setup, attn_implementation="eager")  # what the executed count assumes

    def trainable_parameters(self) -> int:
        return self.trainable


def _with_recompute(plain: PassFlops, recomputing: PassFlops) -> PassFlops:
    return PassFlops(plain.forward, plain.backward, max(recomputing.backward - plain.backward, 0))


def _refuse_moe(config: dict[str, Any]) -> None:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if any((text.get(k) or 0) > 1 for k in _MOE_KEYS):
        raise MeterError(
            f"model_type '{config.get('model_type')}' is a mixture-of-experts model outside the analytic engine: its "
            "experts cannot be measured exactly on the meta device (FlopCounterMode counts 0 for grouped-mm experts)"
        )


def model_from_config(config: dict[str, Any], **from_config: Any):
    """A random-initialised transformers causal LM from a config dict (keys starting with '_' are metadata).

    Builds on the current default device: wrap the call in ``torch.device("meta")`` for a model without memory.
    """
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise MeterError("building a model from its config needs transformers: pip install 'flops-meter[hf]'") from None
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    model_type = cfg.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
    except ValueError as e:
        raise MeterError(f"transformers does not know model_type '{model_type}' either: {e}") from None
    return AutoModelForCausalLM.from_config(hf_config, **from_config)


def _meta_copy(config: dict[str, Any], live: Any, *, bare: bool):
    """The model on the meta device, prepared as ``live`` trains (or plain, for a config alone)."""
    try:
        import torch
    except ImportError:
        raise MeterError("the measured path needs torch and transformers: pip install 'flops-meter[hf]'") from None
    if live is None:
        with torch.device("meta"):
            model = model_from_config(config, attn_implementation="eager")
        return model.train()
    from meter.introspect import unwrap

    top = unwrap(live)
    base = top.get_base_model() if hasattr(top, "get_base_model") else top
    with torch.device("meta"):
        model = type(base)._from_config(copy.deepcopy(base.config), attn_implementation="eager")
    adapter = getattr(top, "active_adapter", None) if hasattr(top, "peft_config") else None
    if adapter is not None and not bare:
        from peft import get_peft_model

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
    from meter.introspect import unwrap

    top = unwrap(live)
    base = top.get_base_model() if hasattr(top, "get_base_model") else top
    return getattr(base, "_require_grads_hook", None) is not None


def _rates(model, *, checkpointing: bool, reentrant: bool = False, input_grads: bool = False) -> Rates:
    """Per pass, per token, per pair and per head-position rates, fitted exactly from three lengths."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if checkpointing:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if input_grads:
        target.enable_input_require_grads()
    try:
        steps = {s: _step(model, s) for s in _LENGTHS}
        longest = _LENGTHS[-1]
        try:
            kept = _step(model, longest, keep=1)
        except TypeError:  # a forward without logits_to_keep: the head stays in the per-token rate
            kept = None
    finally:
        if checkpointing:
            target.gradient_checkpointing_disable()
        if input_grads:
            target.disable_input_require_grads()
    fits = [_fit([(s, steps[s][i]) for s in _LENGTHS]) for i in (0, 1)]  # forward, backward: (c, a, b)
    head = (0, 0) if kept is None else tuple((steps[longest][i] - kept[i]) // (longest - 1) for i in (0, 1))
    (c_f, a_f, b_f), (c_b, a_b, b_b) = fits
    # the head ran on every position in the fits: move it out of the per-token and per-pass rates
    return Rates(
        per_token=PassFlops(a_f - head[0], a_b - head[1]),
        per_pair={None: PassFlops(b_f, b_b)},
        per_pass=PassFlops(c_f, c_b),
        per_head=PassFlops(head[0], head[1]),
    )


def _step(model, s: int, keep: int = 0) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros(1, s, dtype=torch.long, device="meta")
    # an explicit mask: without one (and without a cache) transformers inspects position_ids for packing, a
    # data-dependent check the meta device cannot run
    mask = torch.ones(1, s, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    kwargs = {"logits_to_keep": keep} if keep else {}
    with counter:
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    forward = counter.get_total_flops()
    with counter:  # entering the mode again starts its count from zero: this is the backward alone
        logits.float().sum().backward()
    return forward, counter.get_total_flops()


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
