"""The fallback for architectures the analytic engine does not know: measure once, on the meta device.

The model is built from its config on ``torch.device("meta")`` (no memory, no weights), one training step is run
under ``torch.utils.flop_counter.FlopCounterMode`` at two sequence lengths, and the step's FLOPs are fitted exactly
as ``a·s + b·s²`` (a: per token, b: per query–key pair of eager attention). Counting is then linear as for the
analytic engine. Limits, stated rather than guessed: full fine-tuning only, no gradient checkpointing, eager
attention (an architecture whose attention ignores ``attn_implementation`` may count 0 for fused kernels), and
causal attention is assumed for the regulatory pair count (sliding windows, if any, are not credited:
conservative). Needs torch and transformers.
"""

from __future__ import annotations

from typing import Any

from meter.count import FlopsCount, PassFlops, TrainingSetup
from meter.errors import MeterError
from meter.tokens import TokenStats

_LENGTHS = (64, 128)


class MeasuredCostModel:
    """Per-token and per-pair rates measured with FlopCounterMode; same ``count`` interface as CostModel."""

    windows: frozenset[int] = frozenset()

    def __init__(self, config: dict[str, Any], setup: TrainingSetup | None = None, *, name: str = ""):
        self.setup = setup or TrainingSetup()
        if self.setup.method != "full" or self.setup.gradient_checkpointing:
            raise MeterError(
                "the FlopCounterMode fallback measures full fine-tuning without gradient checkpointing only: "
                "drop --method/--gradient-checkpointing, or add the architecture to meter.spec"
            )
        self.name = name or str(config.get("_name_or_path") or config.get("model_type"))
        steps, self.parameters = _measure(config)
        (s1, f1), (s2, f2) = steps
        # F(s) = a·s + b·s²  →  two equations, solved exactly in integers
        fwd_b = (f1[0] * s2 - f2[0] * s1) // (s1 * s1 * s2 - s2 * s2 * s1)
        bwd_b = (f1[1] * s2 - f2[1] * s1) // (s1 * s1 * s2 - s2 * s2 * s1)
        self.per_token = PassFlops((f1[0] - fwd_b * s1 * s1) // s1, (f1[1] - bwd_b * s1 * s1) // s1)
        self.per_pair = PassFlops(fwd_b, bwd_b)

    def count(self, stats: TokenStats) -> FlopsCount:
        regulatory = self.per_token.times(stats.tokens) + self.per_pair.times(stats.causal_pairs())
        executed = self.per_token.times(stats.padded_tokens) + self.per_pair.times(stats.padded_sq)
        return FlopsCount(regulatory, executed, stats.tokens, self.name, "full")

    def trainable_parameters(self) -> int:
        return self.parameters


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


def _measure(config: dict[str, Any]) -> tuple[list[tuple[int, tuple[int, int]]], int]:
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        raise MeterError(
            "the FlopCounterMode fallback needs torch and transformers: pip install 'flops-meter[hf]'"
        ) from None
    with torch.device("meta"):
        model = model_from_config(config, attn_implementation="eager")
    model.train()
    results = []
    for s in _LENGTHS:
        ids = torch.zeros(1, s, dtype=torch.long, device="meta")
        counter = FlopCounterMode(display=False)
        with counter:
            logits = model(input_ids=ids).logits
        forward = counter.get_total_flops()
        with counter:
            logits.float().sum().backward()
        results.append((s, (forward, counter.get_total_flops())))
    return results, model.num_parameters()
