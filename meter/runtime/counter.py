"""Counting the tokens of real forward passes on the device, without a host sync per step.

For each real token at position p of its sequence (p = 0, 1, …), the sums the count needs are elementwise:

    Σ sᵢ  = Σ 1,    Σ sᵢ² = Σ (2p + 1),    window pairs Σ min(i, w) = Σ min(p + 1, w),    sequences = Σ [p = 0]

so padding (positions from a cumulative sum of ``attention_mask``, left or right padding alike), packing
(``position_ids`` restarting at 0, as ``DataCollatorWithFlattening`` produces) and labels-only batches are all
counted by a few tensor reductions added into one int64 device tensor. Shapes (B·L, B·L²) are known on the host.

Packed rows are counted per document only where transformers attends them per document: with a KV cache (the
model's default ``use_cache=True`` outside Trainer) or flash attention over several rows it attends across the
whole row, and each row is then one sequence (``attends_whole_row``).

A KV-cached generation step sees only its new tokens (``input_ids`` (B, n)) with the mask of the whole context
(B, past + n): the new tokens' positions are the last n columns of the mask's cumulative sum, each new query
attends to p + 1 keys (Σ min(p + 1, w) within a window), and the kernels run B·n·(past + n) query–key products.

The output head may score fewer positions than the backbone: ``logits_to_keep`` (generation, GRPO) keeps the last
k positions, TRL's fused LM head (``fused_lm_head=True``) scores the positions whose next-token label is not -100
— all but the last position of each row off CUDA, only the labelled ones on CUDA — and recomputes those logits in
backward.

Passes are counted per *stream* (a model and a part of the run, see meter.policy.parts). The device tensors are
read back
— two small all-reduces when distributed, one host copy — only when asked (every ``log_every`` steps, at
checkpoints and at the end). Needs torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from meter.engine.tokens import TokenStats

IGNORE_INDEX = -100
_MAIN = 3  # device columns before the window pairs: tokens, Σq, sequences
_HEAD = 3  # device head columns: real positions scored − tokens, scored positions (compact), recomputed (compact)
_HOST = 6  # padded_tokens, padded_sq, passes, scored positions (shape-known), recomputed positions (shape-known), rows


class TokenCounter:
    """Accumulates TokenStats of observed forward passes per stream on their device; ``read()`` returns and resets."""

    def __init__(self, windows: Iterable[int] = (), streams: int = 1, pad_token_id: int | None = None):
        """``pad_token_id``: tells the padding that padding-free collators append to packed rows (position 0)."""
        self.windows = tuple(sorted(set(windows)))
        self.pad_token_id = pad_token_id
        self.streams = streams
        self._width = _MAIN + len(self.windows) + _HEAD
        self._acc = None  # device int64 (streams, width)
        self._peak = None  # device int64 (streams,): longest real sequence
        self._host = [[0] * _HOST for _ in range(streams)]

    def observe(
        self, batch: Mapping[str, Any], stream: int = 0, *, backward: bool = False, past: int = 0,
        whole_rows: bool = False,
    ) -> None:  # fmt: skip
        """Add one forward pass: a mapping with input_ids (or inputs_embeds) and attention_mask/position_ids/labels.

        ``backward``: a backward pass follows (a recomputing head then runs again); ``past``: tokens already in
        the KV cache when the mask does not say (no attention_mask); ``whole_rows``: the model attends packed rows
        across the whole row (``attends_whole_row``), so each row counts as one sequence.
        """
        import torch

        q, rows, length, keys = _ranks(batch, past, self.pad_token_id, whole_rows)
        if q is None:
            return
        # A handful of small kernels per pass and no sync: on a launch-bound GPU step each one is host time.
        # Σ(2p+1) = 2·Σq − tokens and the window pairs are Σ min(q, w), with q = p + 1 on real tokens, 0 elsewhere.
        scored_host = recomputed_host = 0  # applied only once the device work is queued: no half-counted pass
        with torch.no_grad():
            tokens = torch.count_nonzero(q)
            columns = [tokens, q.sum(), (q == 1).sum(), *self._window_pairs(batch, q, past)]
            scored = _head_positions(batch, q, rows, length)
            if scored is None:  # the head scores every position
                scored_host = rows * length
            else:
                real, shape_known = scored
                columns.append(real - tokens)
                recomputed = backward and _recomputes_head(batch)
                if shape_known is None:  # compact: as many scored (and recomputed) as real
                    columns += [real, real] if recomputed else [real]
                else:
                    scored_host = shape_known
                    recomputed_host = shape_known if recomputed else 0
            if self._acc is None:
                self._acc = torch.zeros(self.streams, self._width, dtype=torch.int64, device=q.device)
                self._peak = torch.zeros(self.streams, dtype=torch.int64, device=q.device)
            row, longest = torch.stack(columns), q.amax()  # the head columns, when present, follow the windows
            if row.device != self._acc.device:  # a separate model on another device
                row, longest = row.to(self._acc.device), longest.to(self._acc.device)
            self._acc[stream, : row.numel()].add_(row)
            peak = self._peak[stream : stream + 1]
            torch.maximum(peak, longest, out=peak)
        host = self._host[stream]
        host[0] += rows * length
        host[1] += rows * length * keys
        host[2] += 1
        host[3] += scored_host
        host[4] += recomputed_host
        host[5] += rows

    def _window_pairs(self, batch: Mapping[str, Any], q, past: int) -> list:
        """Σ min(q, w) per sliding window w; per attention chunk C (key −C), Σ min(q, r mod C + 1) with r the
        token's row position after left padding, as transformers' chunked mask (masking_utils.chunked_overlay)."""
        import torch

        if not any(w < 0 for w in self.windows):
            return [q.clamp(max=w).sum() for w in self.windows]
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            r = (mask.to(torch.int64).cumsum(1) - 1)[:, mask.shape[1] - q.shape[1] :]
        else:
            r = torch.arange(past, past + q.shape[1], device=q.device).expand_as(q)
        return [q.clamp(max=w).sum() if w > 0 else torch.minimum(q, r % -w + 1).sum() for w in self.windows]

    @property
    def pending(self) -> bool:
        """Passes observed on this rank since the last read."""
        return any(h[2] for h in self._host)

    def read(self, *, distributed: bool | None = None) -> list[TokenStats]:
        """The statistics of each stream observed since the last read, summed over all ranks; resets them."""
        import torch

        distributed = _is_distributed(distributed)
        if self._acc is None and not distributed:
            out = [TokenStats() for _ in range(self.streams)]
            self._host = [[0] * _HOST for _ in range(self.streams)]
            return out
        device = self._acc.device if self._acc is not None else _default_device()
        acc = self._acc if self._acc is not None else torch.zeros(self.streams, self._width, dtype=torch.int64,
                                                                  device=device)  # fmt: skip
        peak = self._peak if self._peak is not None else torch.zeros(self.streams, dtype=torch.int64, device=device)
        host = torch.tensor(self._host, dtype=torch.int64, device=device)
        values = torch.cat([acc, host], dim=1)
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        rows, peaks = values.tolist(), peak.tolist()
        self._acc = self._peak = None
        self._host = [[0] * _HOST for _ in range(self.streams)]
        n = len(self.windows)
        out = []
        for row, longest in zip(rows, peaks, strict=True):
            tokens, sum_q, sequences = row[:_MAIN]
            pairs = row[_MAIN : _MAIN + n]
            head_delta, scored_dev, recomputed_dev = row[_MAIN + n : _MAIN + n + _HEAD]
            padded_tokens, padded_sq, passes, scored_host, recomputed_host, rows_seen = row[_MAIN + n + _HEAD :]
            out.append(
                TokenStats(
                    tokens=tokens,
                    sum_sq=2 * sum_q - tokens,  # Σ(2p+1) over real tokens
                    padded_tokens=padded_tokens,
                    padded_sq=padded_sq,
                    sequences=sequences,
                    max_len=longest,
                    passes=passes,
                    window_pairs=dict(zip(self.windows, pairs, strict=True)),
                    rows=rows_seen,
                    head_tokens=tokens + head_delta,
                    padded_head_tokens=scored_host + scored_dev,
                    head_recompute_tokens=recomputed_host + recomputed_dev,
                )
            )
        return out


def _ranks(batch: Mapping[str, Any], past: int = 0, pad_token_id: int | None = None, whole_rows: bool = False):
    """(q, rows B, length L, keys): q = 1-based position of each real token, 0 elsewhere, int64 on the batch's
    device; keys = the key positions each query row is computed against (L, or past + L with a KV cache).

    ``whole_rows``: packed rows (position_ids, no mask) are attended as one sequence each: q = past + column + 1.

    (None, 0, 0, 0) when the batch has nothing to count.
    """
    import torch

    reference = batch.get("input_ids")
    if reference is None:
        reference = batch.get("inputs_embeds")
    mask, position_ids, labels = batch.get("attention_mask"), batch.get("position_ids"), batch.get("labels")
    for t in (reference, position_ids, labels, mask):
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            rows, length = int(t.shape[0]), int(t.shape[1])
            device = t.device
            break
    else:
        return None, 0, 0, 0
    if position_ids is not None:
        position_ids = position_ids.reshape(-1, length)[-rows:].to(torch.int64)  # 3-D rope ids: the text rows
    if mask is not None and mask.dim() == 2:
        mask = mask.to(torch.int64)
        keys = int(mask.shape[1])
        if keys < length:
            raise ValueError(f"attention_mask of width {keys} is narrower than the {length} input positions")
        if position_ids is None:  # positions from the mask: left or right padding alike; a cache's new tokens last
            return (mask.cumsum(1) * mask)[:, keys - length :], rows, length, keys
        return (position_ids + 1) * mask[:, keys - length :], rows, length, keys
    keys = past + length
    if position_ids is not None:  # packed, no mask: every position is real but trailing padding
        if whole_rows:  # transformers attends across the row: one causal sequence per row
            q = torch.arange(past + 1, past + length + 1, device=device).expand(rows, length)
        else:
            q = position_ids + 1
        ids = batch.get("input_ids")
        if pad_token_id is not None and isinstance(ids, torch.Tensor) and tuple(ids.shape) == (rows, length):
            # pad_to_multiple_of pads a packed row with pad tokens at position 0 (TRL's padding-free collator):
            # the trailing run of such slots is padding, not 1-token sequences
            slot = ((position_ids == 0) & (ids == pad_token_id)).to(torch.int64)
            trailing = slot.flip(1).cumprod(1).flip(1)
            q = q * (1 - trailing)
        return q, rows, length, keys
    index = torch.arange(past + 1, past + length + 1, device=device).expand(rows, length)
    if labels is not None and labels.dim() == 2 and past == 0:
        # labels only: everything up to the last supervised token is needed (prompt tokens included)
        last = torch.where(labels != IGNORE_INDEX, index, 0).amax(1, keepdim=True)
        return index * (index <= last), rows, length, keys
    return index, rows, length, keys  # no mask: the model attends to every position


def attends_whole_row(model: Any, batch: Mapping[str, Any]) -> str | None:
    """Why ``model`` attends the packed rows of ``batch`` across the whole row, not per document; None when it does
    not (or when the batch is not packed: an attention_mask, or no position_ids).

    Packed rows tell their documents apart by ``position_ids`` alone, and transformers (the source of 5.3 and
    5.23 alike) keeps the documents apart in two places only:

    - the mask builders (eager, SDPA, flex attention): ``masking_utils._preprocess_mask_arguments`` calls
      ``find_packed_sequence_indices(position_ids)`` only when ``attention_mask is None and past_key_values is
      None``; and the decoder's forward creates a ``DynamicCache`` *before* building the mask whenever
      ``use_cache`` is true (passed, or its config's, by ``merge_with_config_defaults``, which turns it off while
      training with gradient checkpointing; Trainer sets ``config.use_cache = args.use_cache``, False). With a
      cache the row is one causal sequence.
    - flash attention (``modeling_flash_attention_utils._flash_attention_forward``, also hub kernels wrapped by
      ``integrations.flash_attention.flash_attention_forward``): the cache plays no part; ``cu_seq_lens_q/k``
      passed, or ``_is_packed_sequence(position_ids, batch_size)``, which holds for a batch of one row only.

    Anything else (a kernel's own function, paged attention: no mask builder) is left per document.
    """
    if batch.get("attention_mask") is not None or batch.get("position_ids") is None:
        return None
    functions = _transformers_attention()
    if functions is None:
        return None
    flash_forward, flash_mask, attention, masks = functions
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    impl = getattr(text, "_attn_implementation", None)
    mask = masks.get(impl)
    if mask is flash_mask:
        if attention.get(impl) is not flash_forward or batch.get("cu_seq_lens_q") is not None:
            return None
        reference = batch.get("input_ids")
        reference = reference if reference is not None else batch.get("inputs_embeds")
        rows = int((reference if reference is not None else batch["position_ids"]).shape[0])
        if rows == 1:
            return None
        return ("packed rows in a batch of several rows are attended across the whole row by flash attention "
                "(transformers reads packing from position_ids for a batch of one row only): counted as one sequence "
                "per row; put a batch's documents in one row (DataCollatorWithFlattening) to have them attended per "
                "document")  # fmt: skip
    if mask is None:
        return None
    if batch.get("past_key_values") is not None:
        why = "a past_key_values cache is passed"
    else:
        use_cache = batch.get("use_cache")
        use_cache = getattr(text, "use_cache", None) if use_cache is None else use_cache
        if not use_cache:
            return None
        training = bool(getattr(model, "training", False))
        if training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
            return None  # merge_with_config_defaults: use_cache=True is incompatible with gradient checkpointing
        why = "use_cache=True"
    return (f"packed rows are attended across the whole row because {why} (transformers looks for packed sequences "
            "in position_ids only without a KV cache): counted as one sequence per row; pass use_cache=False (as "
            "Trainer does) to have them attended per document")  # fmt: skip


@cache
def _transformers_attention():
    """(flash_attention_forward, flash_attention_mask, attention functions, mask functions) of the installed
    transformers, or None without it."""
    try:
        from transformers.integrations.flash_attention import flash_attention_forward
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except Exception:  # no transformers (or one that will not import): nothing packs rows for us to read
        return None
    # the registries' global mappings, as _preprocess_mask_arguments reads them (kernels register into them)
    masks, attention = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, ALL_ATTENTION_FUNCTIONS._global_mapping
    return flash_attention_forward, flash_attention_mask, attention, masks


def _head_positions(batch: Mapping[str, Any], q, rows: int, length: int):
    """None when the head scores every position; else (real positions scored, a device scalar; positions scored
    as run when the shapes tell, else None: as many as the real ones)."""
    import torch

    if batch.get("fused_lm_head"):  # TRL's fused LM head: scores next-token labels other than -100
        shift = batch.get("shift_labels")
        labels = shift if shift is not None else batch.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            return None
        labelled = labels != IGNORE_INDEX if shift is not None else labels[:, 1:] != IGNORE_INDEX
        real = torch.count_nonzero(labelled)
        return real, (None if _fused_head_compact(labels.device) else labelled.numel())
    keep = batch.get("logits_to_keep")
    if isinstance(keep, torch.Tensor):
        if keep.dim() == 0:
            keep = int(keep)  # a 0-d tensor means an int (rare; a host read)
        else:
            return torch.count_nonzero(q[:, keep.reshape(-1)]), rows * keep.numel()
    if isinstance(keep, int) and not isinstance(keep, bool) and 0 < keep < length:
        return torch.count_nonzero(q[:, length - keep :]), rows * keep
    return None


@cache
def _fused_head_compact(device) -> bool:
    """Whether TRL's fused head scores only the labelled positions on this device (it asks Triton)."""
    try:
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:
        return device.type in ("cuda", "xpu")
    return bool(_use_triton(device))


def _recomputes_head(batch: Mapping[str, Any]) -> bool:
    """TRL's fused head recomputes its logits in backward; the model's own head keeps them."""
    return bool(batch.get("fused_lm_head"))


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
