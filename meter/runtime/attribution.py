"""Which part of the run a forward pass belongs to, and the count of a run made of several parts.

A *stream* is one model counted in one part (meter.policy.parts): the policy's training steps, its generation steps, its
reference passes with adapters disabled, a separate reference model's passes … Each has its cost model (the policy
with its adapters, the bare base model, the reference model) and says whether a backward follows.

A forward pass of the policy is attributed at its pre-hook, from host-side facts only (no device sync):

1. a KV cache is passed (``past_key_values``): generation (prefill and decode steps);
2. autograd is recording (``torch.is_grad_enabled()``): a training step, backward follows;
3. the model is in eval mode: evaluation;
4. PEFT adapters are disabled or another adapter is active (TRL's ``use_adapter``): a reference pass;
5. otherwise: a forward-only pass of the policy (KL, old log-probs, validation without ``model.eval()``).

A separate model handed to the meter (reference, reward) is counted in its role's part, or as evaluation while the
policy is in eval mode (``Trainer.evaluate`` of a DPO run computes reference log-probs too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meter.engine.count import CostModel, FlopsCount, PassFlops, Totals
from meter.engine.tokens import TokenStats
from meter.policy.parts import PARTS, included


@dataclass(frozen=True)
class Stream:
    name: str  # "<model>/<part>", the key under which checkpoints keep its statistics
    part: str
    cost: CostModel
    backward: bool = False  # training steps only: a backward pass follows the forward


@dataclass(frozen=True)
class RunCount(Totals):
    """A run's count by part; the regulatory total sums the parts its scope includes."""

    parts: dict[str, FlopsCount]
    scope: str
    statistics: dict[str, TokenStats] = field(default_factory=dict)  # the token statistics of each part

    @property
    def regulatory(self) -> PassFlops:
        return _sum(c.regulatory for p, c in self.parts.items() if included(p, self.scope))

    @property
    def executed(self) -> PassFlops:
        return _sum(c.executed for p, c in self.parts.items() if p != "evaluation")

    @property
    def tokens(self) -> int:
        """Training tokens: what the per-token figures and the headroom in tokens are about."""
        training = self.parts.get("training")
        return training.tokens if training else 0


def count_streams(streams: Sequence[Stream], stats: Sequence[TokenStats], scope: str) -> RunCount:
    """Count each stream with its cost model; sum streams of the same part."""
    parts: dict[str, FlopsCount] = {}
    statistics: dict[str, TokenStats] = {}
    for stream, s in zip(streams, stats, strict=True):
        if s.passes == 0 and stream.part != "training":
            continue
        c = stream.cost.count(s, backward=stream.backward)
        prev = parts.get(stream.part)
        parts[stream.part] = c if prev is None else _add(prev, c)
        statistics[stream.part] = statistics[stream.part] + s if stream.part in statistics else s
    parts.setdefault("training", streams[0].cost.count(TokenStats()))
    statistics.setdefault("training", TokenStats())
    order = sorted(parts, key=PARTS.index)
    return RunCount({p: parts[p] for p in order}, scope, {p: statistics[p] for p in order})


def _add(a: FlopsCount, b: FlopsCount) -> FlopsCount:
    model = a.model if a.model == b.model else f"{a.model} + {b.model}"
    return FlopsCount(a.regulatory + b.regulatory, a.executed + b.executed, a.tokens + b.tokens, model, a.method)


def _sum(items) -> PassFlops:
    total = PassFlops()
    for p in items:
        total += p
    return total


# --------------------------------------------------------------------------------------------------------------
# Attributing a pass


class AdapterProbe:
    """Tells, from a host-side flag, whether a PEFT model's trained adapter is off (disabled, or another active)."""

    def __init__(self, model: Any, adapter: str | None):
        self.adapter = adapter
        self.layer = None
        if adapter is None:
            return
        for module in model.modules():
            if hasattr(module, "disable_adapters") and hasattr(module, "active_adapters") and hasattr(module, "lora_A"):
                self.layer = module
                break

    def off(self) -> bool:
        layer = self.layer
        if layer is None:
            return False
        return bool(layer.disable_adapters) or self.adapter not in layer.active_adapters


def policy_part(module: Any, batch: dict[str, Any], probe: AdapterProbe | None) -> str:
    import torch

    if batch.get("past_key_values") is not None:
        return "generation"
    if torch.is_grad_enabled():
        return "training"
    if not module.training:
        return "evaluation"
    if probe is not None and probe.off():
        return "reference_forward"
    return "policy_forward"


def cache_length(cache: Any) -> int:
    """Tokens already held by a KV cache (host-side: read from tensor shapes)."""
    if cache is None:
        return 0
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        return int(length())
    return 0
