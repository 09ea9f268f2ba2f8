"""`TokenStats`: what the count needs to know about the batches, summed over a run.

Every FLOPs figure is linear in a handful of sums, so a run is described exactly by:

- ``tokens``      Σ sᵢ over real (non-padding) sequences: the regulatory token count;
- ``sum_sq``      Σ sᵢ²: with ``tokens`` gives the causal query–key pairs Σ sᵢ(sᵢ+1)/2;
- ``padded_tokens`` / ``padded_sq``  Σ B·L and Σ B·L² over micro-batches of B rows padded to L: what eager and
  SDPA kernels execute;
- ``window_pairs`` Σ pairs within a sliding window w, per window the model uses (Σ min(i, w) over positions);
  a negative key −C is attention in chunks of C (Llama 4): a query at row position r (0-based, after left
  padding, as transformers' chunked mask counts) sees min(i, r mod C + 1) keys of its sequence;
- ``passes``      the number of forward passes (micro-batches), for per-pass terms such as DoRA's weight norm;
- ``rows``        Σ B, the rows of those passes, for per-row terms (the recurrent state of linear attention);
- ``head_tokens`` / ``padded_head_tokens``  positions the output head scores (real / as run), when fewer than all
  (``logits_to_keep`` in generation and GRPO, TRL's fused LM head on labelled positions): default every token;
- ``head_recompute_tokens``  positions whose head product is run again in backward (TRL's fused LM head):
  executed only, like any recomputation.

Packed rows (several sequences in one row, ``position_ids`` restarting at 0) contribute each sequence separately
to the real sums and the whole row to the padded sums: exactly what flash-attention varlen and eager kernels run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meter.errors import MeterError


def window_pairs(length: int, window: int) -> int:
    """Query–key pairs a causal query row set of ``length`` needs when each query sees ``window`` keys (itself too);
    for a chunk key ``window = −C``, the pairs of a sequence that starts its row, in chunks of C."""
    if window < 0:
        chunks, rest = divmod(length, -window)
        return chunks * (-window) * (-window + 1) // 2 + rest * (rest + 1) // 2
    if length <= window:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def chunk_key(size: int) -> int:
    """The window_pairs key of attention in chunks of ``size`` (Llama 4's attention_chunk_size)."""
    return -size


@dataclass(frozen=True)
class TokenStats:
    tokens: int = 0
    sum_sq: int = 0
    padded_tokens: int = 0
    padded_sq: int = 0
    sequences: int = 0
    max_len: int = 0
    passes: int = 0
    window_pairs: dict[int, int] = field(default_factory=dict, hash=False)
    rows: int = 0
    head_tokens: int | None = None  # None: every real token
    padded_head_tokens: int | None = None  # None: every padded position
    head_recompute_tokens: int = 0

    def __post_init__(self) -> None:
        if self.head_tokens is None:
            object.__setattr__(self, "head_tokens", self.tokens)
        if self.padded_head_tokens is None:
            object.__setattr__(self, "padded_head_tokens", self.padded_tokens)
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MeterError(f"token statistic {name}={v!r} must be a non-negative integer")
        if self.padded_tokens < self.tokens:
            raise MeterError(f"padded_tokens {self.padded_tokens} is below the real token count {self.tokens}")
        if self.padded_head_tokens < self.head_tokens:
            raise MeterError(f"padded_head_tokens {self.padded_head_tokens} is below head_tokens {self.head_tokens}")

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_lengths(
        cls,
        lengths: Iterable[int],
        *,
        padded_to: int | None = None,
        rows: int | None = None,
        windows: Iterable[int] = (),
    ) -> TokenStats:
        """Statistics of one micro-batch (or a plan) of sequences with the given real lengths.

        ``padded_to`` is the row length L of the padded tensor (default: each sequence in its own unpadded row);
        ``rows`` the number of rows B (default: one per sequence; fewer when sequences are packed).
        """
        lengths = [int(s) for s in lengths]
        if any(s <= 0 for s in lengths):
            raise MeterError("sequence lengths must be positive integers")
        tokens = sum(lengths)
        b = len(lengths) if rows is None else rows
        if padded_to is None:
            padded_tokens, padded_sq = tokens, sum(s * s for s in lengths)
        else:
            padded_tokens, padded_sq = b * padded_to, b * padded_to * padded_to
        return cls(
            tokens=tokens,
            sum_sq=sum(s * s for s in lengths),
            padded_tokens=padded_tokens,
            padded_sq=padded_sq,
            sequences=len(lengths),
            max_len=max(lengths, default=0),
            passes=1,
            window_pairs={w: sum(window_pairs(s, w) for s in lengths) for w in set(windows)},
            rows=b,
        )

    @classmethod
    def uniform(
        cls, sequences: int, seq_len: int, *, windows: Iterable[int] = (), passes: int | None = None
    ) -> TokenStats:
        """A plan: ``sequences`` sequences of ``seq_len`` tokens, unpadded, one micro-batch each unless told."""
        if sequences <= 0:
            raise MeterError(f"number of sequences must be positive, got {sequences}")
        if seq_len <= 0:
            raise MeterError(f"sequence length must be positive, got {seq_len}")
        return cls(
            tokens=sequences * seq_len,
            sum_sq=sequences * seq_len * seq_len,
            padded_tokens=sequences * seq_len,
            padded_sq=sequences * seq_len * seq_len,
            sequences=sequences,
            max_len=seq_len,
            passes=sequences if passes is None else passes,
            window_pairs={w: sequences * window_pairs(seq_len, w) for w in set(windows)},
            rows=sequences,
        )

    @classmethod
    def from_batch(cls, attention_mask=None, *, position_ids=None, windows: Iterable[int] = ()) -> TokenStats:
        """Statistics of one micro-batch tensor: from ``attention_mask`` (padding) or ``position_ids`` (packing).

        Accepts torch tensors or nested lists of shape (B, L). Right, left or mixed padding all count the same.
        """
        if position_ids is not None:
            rows = _as_rows(position_ids)
            lengths = [s for row in rows for s in _packed_lengths(row)]
            return cls.from_lengths(lengths, padded_to=len(rows[0]), rows=len(rows), windows=windows)
        if attention_mask is None:
            raise MeterError("give attention_mask or position_ids to count a batch")
        rows = _as_rows(attention_mask)
        lengths = [int(sum(1 for v in row if v)) for row in rows]
        real = [s for s in lengths if s > 0]
        stats = cls.from_lengths(real, padded_to=len(rows[0]), rows=len(rows), windows=windows) if real else cls()
        return stats

    # -- arithmetic ---------------------------------------------------------------------------------------------

    def __add__(self, other: TokenStats) -> TokenStats:
        if not isinstance(other, TokenStats):
            return NotImplemented
        keys = set(self.window_pairs) | set(other.window_pairs)
        return TokenStats(
            tokens=self.tokens + other.tokens,
            sum_sq=self.sum_sq + other.sum_sq,
            padded_tokens=self.padded_tokens + other.padded_tokens,
            padded_sq=self.padded_sq + other.padded_sq,
            sequences=self.sequences + other.sequences,
            max_len=max(self.max_len, other.max_len),
            passes=self.passes + other.passes,
            window_pairs={w: self._pairs_in(w) + other._pairs_in(w) for w in keys},
            rows=self.rows + other.rows,
            head_tokens=self.head_tokens + other.head_tokens,
            padded_head_tokens=self.padded_head_tokens + other.padded_head_tokens,
            head_recompute_tokens=self.head_recompute_tokens + other.head_recompute_tokens,
        )

    def scaled(self, times: int) -> TokenStats:
        """The same batches seen ``times`` times (epochs)."""
        if isinstance(times, bool) or not isinstance(times, int) or times <= 0:
            raise MeterError(f"epochs must be a positive integer, got {times!r}")
        return TokenStats(
            tokens=self.tokens * times,
            sum_sq=self.sum_sq * times,
            padded_tokens=self.padded_tokens * times,
            padded_sq=self.padded_sq * times,
            sequences=self.sequences * times,
            max_len=self.max_len,
            passes=self.passes * times,
            window_pairs={w: v * times for w, v in self.window_pairs.items()},
            rows=self.rows * times,
            head_tokens=self.head_tokens * times,
            padded_head_tokens=self.padded_head_tokens * times,
            head_recompute_tokens=self.head_recompute_tokens * times,
        )

    # -- what the count reads -----------------------------------------------------------------------------------

    def causal_pairs(self, window: int | None = None) -> int:
        """Query–key pairs causal attention needs over the real sequences (within ``window`` when given; in chunks
        of C for ``window = −C``)."""
        if window is not None and window in self.window_pairs:
            return self.window_pairs[window]
        if window is None or window < 0 or self.max_len <= window:  # no chunk counts: causal, more, never less
            return (self.sum_sq + self.tokens) // 2
        raise MeterError(
            f"token statistics lack pair counts for sliding window {window}: build them with windows=[{window}]"
        )

    def _pairs_in(self, window: int) -> int:
        return self.window_pairs[window] if window in self.window_pairs else self.causal_pairs(window)

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "sum_sq": self.sum_sq,
            "padded_tokens": self.padded_tokens,
            "padded_sq": self.padded_sq,
            "sequences": self.sequences,
            "max_len": self.max_len,
            "passes": self.passes,
            "window_pairs": {str(k): v for k, v in sorted(self.window_pairs.items())},
            "rows": self.rows,
            "head_tokens": self.head_tokens,
            "padded_head_tokens": self.padded_head_tokens,
            "head_recompute_tokens": self.head_recompute_tokens,
        }


_INT_FIELDS = ("tokens", "sum_sq", "padded_tokens", "padded_sq", "sequences", "max_len", "passes",
               "head_tokens", "padded_head_tokens", "head_recompute_tokens", "rows")  # fmt: skip
# absent from records before parts (head_*) and before per-row rates (rows: 0, only the generic path's
# linear-attention models have a per-row rate)
_OPTIONAL = ("head_tokens", "padded_head_tokens", "head_recompute_tokens", "rows")


def stats_from_dict(d: dict) -> TokenStats:
    """The inverse of TokenStats.to_dict (window keys come back as integers).

    Strict: a value that is not an integer (a string "6", a float, a bool) is a MeterError, never coerced, so a
    damaged journal or checkpoint is refused rather than read as some other count.
    """
    if not isinstance(d, dict):
        raise MeterError(f"token statistics must be an object, got {type(d).__name__}")
    fields: dict = {}
    for k in _INT_FIELDS:
        if k not in d and k in _OPTIONAL:
            continue
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int):
            raise MeterError(f"token statistic {k}={v!r} must be a non-negative integer")
        fields[k] = v
    pairs = d.get("window_pairs", {})
    if not isinstance(pairs, dict) or any(isinstance(v, bool) or not isinstance(v, int) for v in pairs.values()):
        raise MeterError(f"window_pairs {pairs!r} must map windows to integers")
    try:
        windows = {int(k): v for k, v in pairs.items()}
    except ValueError:
        raise MeterError(f"window_pairs {pairs!r} must map integer windows to integers") from None
    return TokenStats(**fields, window_pairs=windows)


def _as_rows(t) -> list[Sequence[int]]:
    rows = t.tolist() if hasattr(t, "tolist") else t
    if not rows or not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    return rows


def _packed_lengths(row: Sequence[int]) -> list[int]:
    """Lengths of the sequences packed in one row: a new one starts wherever position_ids restart at 0."""
    lengths: list[int] = []
    for pos in row:
        if pos == 0 or not lengths:
            lengths.append(1)
        else:
            lengths[-1] += 1
    return lengths
