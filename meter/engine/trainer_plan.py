"""Planning preference and RL fine-tuning: the parts of a DPO, KTO, GRPO or RLOO run before it runs.

The same parts the runtime meter records (meter.policy.parts), from the shape of the data, as TRL's trainers run them
(TRL 1.16; its fused LM head scores only positions with a next-token label, i.e. the completion):

- ``sft``   training steps over the sequences.
- ``dpo``   each example is a prompt with a chosen and a rejected completion: two sequences of P + C tokens,
            trained (the head on the C completion positions), and two reference forwards of them.
- ``kto``   each example is one prompt + completion, trained; a KL pass of the policy (forward only) over a
            mismatched completion; reference forwards of both.
- ``grpo``  each prompt gets G completions: generation (prefill of P tokens, then C - 1 cached decode steps: a
  ``rloo``  causal pass over P + C - 1 tokens with the head on C positions), training on the G sequences of P + C
            tokens (× iterations), reference forwards when beta > 0, and old log-probs (a forward-only pass of the
            policy) when iterations > 1 (GRPO) or always (RLOO).

Reference forwards of a LoRA run use the bare base model (TRL disables the adapters); of a full or freeze run, a
separate reference model of the same architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meter.engine.count import CostModel
from meter.engine.tokens import TokenStats
from meter.errors import MeterError
from meter.runtime.attribution import RunCount, Stream, count_streams

TRAINERS: tuple[str, ...] = ("sft", "dpo", "kto", "grpo", "rloo")


@dataclass(frozen=True)
class TrainerPlan:
    trainer: str = "sft"
    prompt_len: int = 0
    completion_len: int = 0
    generations: int = 8  # grpo / rloo: completions per prompt (TRL's num_generations default)
    reference: bool = True  # dpo / kto: reference forwards; grpo / rloo: beta > 0
    iterations: int = 1  # grpo / rloo: optimisation passes over each generated batch (num_iterations)

    def __post_init__(self) -> None:
        if self.trainer not in TRAINERS:
            raise MeterError(f"unknown trainer {self.trainer!r}: use one of {', '.join(TRAINERS)}")
        if self.trainer != "sft" and (self.prompt_len <= 0 or self.completion_len <= 0):
            raise MeterError(f"a {self.trainer} plan needs --prompt-len and --completion-len (tokens, positive)")
        for name in ("generations", "iterations"):
            if getattr(self, name) <= 0:
                raise MeterError(f"{name} must be a positive integer, got {getattr(self, name)}")


def plan_parts(
    policy: CostModel,
    reference: CostModel,
    plan: TrainerPlan,
    examples: int,
    *,
    epochs: int = 1,
    sft_stats: TokenStats | None = None,
    scope: str = "conservative",
) -> tuple[RunCount, TokenStats]:
    """The planned count by part of ``examples`` examples (prompts for grpo/rloo) over ``epochs``, and the training
    statistics. ``sft_stats``: the sequences of an SFT plan, already built by the caller."""
    windows = policy.windows | reference.windows
    p, c = plan.prompt_len, plan.completion_len

    def seqs(n: int, length: int, head: int, *, trained: bool = False) -> TokenStats:
        """n sequences of ``length`` tokens, the head scoring ``head`` positions of each (recomputed in the
        backward of a training step, as TRL's fused head does)."""
        stats = TokenStats.uniform(n, length, windows=windows)
        scored = {"head_tokens": n * head, "padded_head_tokens": n * head}
        if trained:
            scored["head_recompute_tokens"] = n * head
        return replace(stats, **scored).scaled(epochs)

    parts: list[tuple[Stream, TokenStats]] = []
    if plan.trainer == "sft":
        if sft_stats is None:
            raise MeterError("an sft plan needs its sequences")
        parts.append((Stream("policy/training", "training", policy, backward=True), sft_stats))
    elif plan.trainer == "dpo":
        trained = seqs(2 * examples, p + c, c, trained=True)
        parts.append((Stream("policy/training", "training", policy, backward=True), trained))
        if plan.reference:
            parts.append((Stream("reference/reference_forward", "reference_forward", reference),
                          seqs(2 * examples, p + c, c)))  # fmt: skip
    elif plan.trainer == "kto":
        trained = seqs(examples, p + c, c, trained=True)
        parts.append((Stream("policy/training", "training", policy, backward=True), trained))
        parts.append((Stream("policy/policy_forward", "policy_forward", policy), seqs(examples, p + c, c)))
        if plan.reference:
            parts.append((Stream("reference/reference_forward", "reference_forward", reference),
                          seqs(2 * examples, p + c, c)))  # fmt: skip
    else:  # grpo, rloo
        n = examples * plan.generations
        parts.append((Stream("policy/generation", "generation", policy), seqs(n, p + c - 1, c)))
        trained = seqs(n, p + c, c, trained=True).scaled(plan.iterations)
        parts.append((Stream("policy/training", "training", policy, backward=True), trained))
        if plan.reference:
            parts.append((Stream("reference/reference_forward", "reference_forward", reference), seqs(n, p + c, c)))
        if plan.trainer == "rloo" or plan.iterations > 1:
            parts.append((Stream("policy/policy_forward", "policy_forward", policy), seqs(n, p + c, c)))
    streams, stats = zip(*parts, strict=True)
    training = next(s for st, s in parts if st.part == "training")
    return count_streams(list(streams), list(stats), scope), training
