"""Resuming a run: the checkpoint state, the journal next to the checkpoints, and the compute of redone steps.

A checkpoint keeps the totals as of the last read-back before it was saved (``FlopsMeter.state_snapshot``). The
journal, rewritten at every read-back, holds the totals as of the last read-back before an interruption: the steps
after the checkpoint up to then were computed, and a resumed run counts them once more when it redoes them. A
checkpoint state or journal that is malformed, or a journal that counts less than the checkpoint, is not used: the
count goes on from what can be trusted, and ``degrade`` is told why (the record then says it is a lower bound).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.engine.tokens import TokenStats, stats_from_dict
from meter.errors import MeterError
from meter.policy.thresholds import two_significant
from meter.runtime.attribution import RunCount, Stream
from meter.runtime.log import log

Count = Callable[[list[TokenStats]], RunCount]
Degrade = Callable[[str], None]


def totals(streams: Sequence[Stream], stream_stats: Sequence[TokenStats]) -> dict[str, Any]:
    """Statistics per stream by name (and the training stream's under "stats", as records before parts had)."""
    training = stream_stats[0] if stream_stats else TokenStats()
    return {
        "stats": training.to_dict(),
        "streams": {s.name: st.to_dict() for s, st in zip(streams, stream_stats, strict=True)},
    }


def read_totals(doc: dict[str, Any], streams: Sequence[Stream]) -> list[TokenStats]:
    """Stream statistics from a checkpoint or journal; MeterError when malformed or of another run's streams."""
    by_name = doc.get("streams")
    if by_name is None:  # written before parts: the training stream only
        by_name = {streams[0].name: doc.get("stats")}
    if not isinstance(by_name, dict):
        raise MeterError(f"streams must be an object, got {type(by_name).__name__}")
    unknown = set(by_name) - {s.name for s in streams}
    if unknown:
        raise MeterError(f"streams {', '.join(sorted(unknown))} are not counted by this run")
    return [stats_from_dict(by_name[s.name]) if s.name in by_name else TokenStats() for s in streams]


@dataclass(frozen=True)
class Checkpoint:
    """The meter's state as a checkpoint kept it: totals and steps as of the last read-back before the save."""

    run_id: str
    stream_stats: list[TokenStats]
    steps: int
    resumes: list[dict[str, Any]]
    max_step_flops: int


def read_checkpoint(
    state: dict[str, Any], global_step: int, *, run_id: str, streams: Sequence[Stream], degrade: Degrade
) -> Checkpoint | None:
    """The checkpoint's meter state (``run_id`` is this meter's, kept when the state has none); None, and said
    through ``degrade``, when it is unreadable."""
    try:
        checkpoint = read_totals(state, streams)
        steps = _int(state.get("steps", global_step), "steps")
        run_id = state.get("run_id", run_id)
        resumes = state.get("resumes", [])
        if not isinstance(resumes, list) or not isinstance(run_id, str):
            raise MeterError("run_id must be a string and resumes a list")
        max_step = _int(state.get("max_step_flops", 0), "max_step_flops")
    except (MeterError, AttributeError, TypeError) as e:
        degrade(f"the checkpoint's meter state is unreadable ({e}): compute before step {global_step} "
                "is not counted, the count is a lower bound")  # fmt: skip
        return None
    return Checkpoint(run_id, checkpoint, steps, list(resumes), max_step)


def redone_after(
    checkpoint: Checkpoint,
    global_step: int,
    *,
    journal_path: Path | None,
    streams: Sequence[Stream],
    count: Count,
    degrade: Degrade,
) -> tuple[dict[str, Any], list[TokenStats], int]:
    """This resume's entry for the record (the steps redone after the checkpoint and their compute), and the
    statistics and steps to go on from: the journal's when it is past the checkpoint and consistent with it."""
    entry = {"from_step": global_step, "redone_steps": 0, "redone_regulatory_flops": 0, "redone_executed_flops": 0}
    journal = _journal_after(journal_path, checkpoint.run_id, global_step, checkpoint.stream_stats, streams, degrade)
    if journal is None:
        if journal_path is not None and not journal_path.is_file():
            entry["note"] = "no journal found: steps redone after the checkpoint could not be counted"
        return entry, checkpoint.stream_stats, checkpoint.steps
    consumed, journal_step, journal_steps = journal
    before, after = count(checkpoint.stream_stats), count(consumed)
    entry.update(
        redone_steps=journal_step - global_step,
        redone_regulatory_flops=after.regulatory_flops - before.regulatory_flops,
        redone_executed_flops=after.executed_flops - before.executed_flops,
    )
    return entry, consumed, journal_steps


def broadcast(
    streams: Sequence[Stream], stream_stats: list[TokenStats], steps: int, resumes: list[dict[str, Any]]
) -> tuple[list[TokenStats], int, list[dict[str, Any]]]:
    """Rank 0's statistics, steps and resumes, on every rank: budget decisions must not differ between ranks, or
    ranks would hang. Unchanged when torch.distributed is not initialized."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return stream_stats, steps, resumes
    box = [{**totals(streams, stream_stats), "steps": steps, "resumes": resumes}]
    dist.broadcast_object_list(box, src=0)
    return read_totals(box[0], streams), box[0]["steps"], box[0]["resumes"]


def journal_entry(
    run_id: str,
    global_step: int,
    steps: int,
    streams: Sequence[Stream],
    stream_stats: Sequence[TokenStats],
    regulatory_flops: int,
    *,
    final: bool,
) -> dict[str, Any]:
    """What the journal holds after a read-back."""
    return {
        "run_id": run_id,
        "global_step": global_step,
        "steps": steps,
        **totals(streams, stream_stats),
        "regulatory_flops": regulatory_flops,
        "final": final,
    }


def log_resumed(global_step: int, count: RunCount, entry: dict[str, Any]) -> None:
    log.info(
        "flops_meter: resumed at step %d with %s counted; %d steps redone after the checkpoint (%s)",
        global_step,
        two_significant(count.regulatory_flops),
        entry["redone_steps"],
        two_significant(entry["redone_regulatory_flops"]),
    )


def read_journal(path: Path | None, degrade: Degrade) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        degrade(f"journal {path} unreadable: {e}")
        return None
    if not isinstance(doc, dict):
        degrade(f"journal {path} is not a JSON object: ignored")
        return None
    return doc


def _journal_after(
    path: Path | None,
    run_id: str,
    global_step: int,
    checkpoint: list[TokenStats],
    streams: Sequence[Stream],
    degrade: Degrade,
) -> tuple[list[TokenStats], int, int] | None:
    """(stats, global_step, steps) of this run's journal when it is past the checkpoint and consistent with it."""
    journal = read_journal(path, degrade)
    if not journal or journal.get("run_id") != run_id:
        return None
    try:
        step = _int(journal.get("global_step"), "global_step")
        if step <= global_step:
            return None
        consumed = read_totals(journal, streams)
        steps = _int(journal.get("steps"), "steps")
    except (MeterError, AttributeError, TypeError) as e:
        degrade(f"journal {path} is malformed ({e}): steps redone after the checkpoint are "
                "not counted, the count is a lower bound")  # fmt: skip
        return None
    if not all(_covers(c, k) for c, k in zip(consumed, checkpoint, strict=True)):
        degrade(f"journal {path} counts less than the checkpoint it follows: ignored, steps "
                "redone after the checkpoint are not counted, the count is a lower bound")  # fmt: skip
        return None
    return consumed, step, steps


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MeterError(f"{name}={value!r} must be a non-negative integer")
    return value


def _covers(later: TokenStats, earlier: TokenStats) -> bool:
    """Totals only grow: a later read-back holds at least what an earlier one did, in every sum."""
    a, b = later.to_dict(), earlier.to_dict()
    return all(a[k] >= b[k] for k in a if isinstance(a[k], int)) and all(
        a["window_pairs"].get(w, 0) >= v for w, v in b["window_pairs"].items()
    )
