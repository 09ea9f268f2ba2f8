"""Counting the tokens of real batches on the device, without a host sync per step.

For each real token at position p of its sequence (p = 0, 1, …), the sums the count needs are elementwise:

    Σ sᵢ  = Σ 1,    Σ sᵢ² = Σ (2p + 1),    window pairs Σ min(i, w) = Σ min(p + 1, w),    sequences = Σ [p = 0]

so padding (positions from a cumulative sum of ``attention_mask``, left or right padding alike), packing
(``position_ids`` restarting at 0, as ``DataCollatorWithFlattening`` produces) and labels-only batches are all
counted by a few tensor reductions added into one int64 device tensor. Shapes (B·L, B·L²) are known on the host.
The device tensors are read back — two small all-reduces when distributed, one host copy — only when asked (every
``log_every`` steps, at checkpoints and at the end). Needs torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meter.tokens import TokenStats

IGNORE_INDEX = -100


class TokenCounter:
    """Accumulates TokenStats of observed micro-batches on their device; ``read()`` returns and resets them."""

    def __init__(self, windows: Iterable[int] = ()):
        self.windows = tuple(sorted(set(windows)))
        self._acc = None  # device int64: [tokens, Σ(p+1), sequences, *window pairs]
        self._padded_tokens = 0
        self._padded_sq = 0
        self._passes = 0
        self._peak = None  # device int64 scalar: longest real sequence

    def observe(self, batch: Mapping[str, Any]) -> None:
        """Add one micro-batch: a mapping with input_ids (or inputs_embeds) and attention_mask/position_ids/labels."""
        import torch

        q, rows, length = _ranks(batch)
        if q is None:
            return
        # About ten small kernels per micro-batch and no sync: on a launch-bound GPU step each one is host time.
        # Σ(2p+1) = 2·Σq − tokens and the window pairs are Σ min(q, w), with q = p + 1 on real tokens, 0 elsewhere.
        with torch.no_grad():
            weights = torch.stack(
                [
                    torch.count_nonzero(q),
                    q.sum(),
                    (q == 1).sum(),
                    *[q.clamp(max=w).sum() for w in self.windows],
                ]
            )
            longest = q.amax()
            if self._acc is None:
                self._acc, self._peak = weights, longest
            else:
                self._acc.add_(weights)
                torch.maximum(self._peak, longest, out=self._peak)
        self._padded_tokens += rows * length
        self._padded_sq += rows * length * length
        self._passes += 1

    @property
    def pending(self) -> bool:
        """Batches observed on this rank since the last read."""
        return self._passes > 0

    def read(self, *, distributed: bool | None = None) -> TokenStats:
        """The statistics observed since the last read, summed over all ranks; resets the accumulators."""
        import torch

        if self._acc is None and not _is_distributed(distributed):
            return TokenStats()
        device = self._acc.device if self._acc is not None else _default_device()
        acc = (
            self._acc if self._acc is not None else torch.zeros(3 + len(self.windows), dtype=torch.int64, device=device)
        )
        host = torch.tensor([self._padded_tokens, self._padded_sq, self._passes], dtype=torch.int64, device=device)
        values = torch.cat([acc, host])
        peak = (self._peak if self._peak is not None else torch.zeros((), dtype=torch.int64, device=device)).reshape(1)
        if _is_distributed(distributed):
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        max_len = int(peak.item())
        tokens, sum_q, sequences, *rest = values.tolist()
        sum_sq = 2 * sum_q - tokens  # Σ(2p+1) over real tokens
        pairs, (padded_tokens, padded_sq, passes) = rest[: len(self.windows)], rest[len(self.windows) :]
        self._acc = self._peak = None
        self._padded_tokens = self._padded_sq = self._passes = 0
        return TokenStats(
            tokens=tokens,
            sum_sq=sum_sq,
            padded_tokens=padded_tokens,
            padded_sq=padded_sq,
            sequences=sequences,
            max_len=max_len,
            passes=passes,
            window_pairs=dict(zip(self.windows, pairs, strict=True)),
        )


def _ranks(batch: Mapping[str, Any]):
    """(q, rows B, length L): q = 1-based position of each real token, 0 elsewhere, int64 on the batch's device.

    (None, 0, 0) when the batch has nothing to count.
    """
    import torch

    reference = batch.get("input_ids")
    if reference is None:
        reference = batch.get("inputs_embeds")
    mask, position_ids, labels = batch.get("attention_mask"), batch.get("position_ids"), batch.get("labels")
    for t in (reference, mask, position_ids, labels):
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            rows, length = int(t.shape[0]), int(t.shape[1])
            device = t.device
            break
    else:
        return None, 0, 0
    if mask is not None and mask.dim() == 2:
        mask = mask.to(torch.int64)
        if position_ids is None:  # positions from the mask: left or right padding alike
            return mask.cumsum(1) * mask, rows, length
        return (position_ids.reshape(rows, length).to(torch.int64) + 1) * mask, rows, length
    if position_ids is not None:  # packed, no mask: every position is real
        return position_ids.reshape(rows, length).to(torch.int64) + 1, rows, length
    index = torch.arange(1, length + 1, device=device).expand(rows, length)
    if labels is not None and labels.dim() == 2:
        # labels only: everything up to the last supervised token is needed (prompt tokens included)
        last = torch.where(labels != IGNORE_INDEX, index, 0).amax(1, keepdim=True)
        return index * (index <= last), rows, length
    return index, rows, length  # no mask: the model attends to every position


def _is_distributed(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _default_device():
    import torch
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
