"""`FlopsMeter`: counts the compute of a training run as it happens, framework-agnostic. One class, and so one
module over 400 lines: counting, read-back, the budget guard, the forecast and resume read and write the same state
(streams, totals per stream, steps, the last read-back). What needs none of it lives beside it: options, streams
(reading the models), hooks, resume (checkpoint and journal), record, energy and log in meter.runtime.

    meter = FlopsMeter(model, log_every=10)        # reads config and training setup off the model
    with meter:                                    # start: NVML sampler; stop: final count, record written
        for batch in loader:
            loss = model(**batch).loss             # a forward pre-hook counts the batch on its device
            loss.backward(); optimizer.step()
            meter.step()                           # one optimizer step: read back every log_every steps

Batches are counted by a forward pre-hook on the model (training-mode forwards only), or by ``observe(batch)``
when a loop prefers to call it (then pass ``hook=False``). Counts stay on the device and are read back — one
all-reduce when distributed — every ``log_every`` steps, at checkpoints and at the end. The meter never raises
into the job it measures once training runs: failures are logged and recorded.
"""

from __future__ import annotations

import functools
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from meter.engine.count import CostModel, TrainingSetup
from meter.engine.tokens import TokenStats
from meter.errors import MeterError
from meter.policy.parts import DEFAULT_SCOPE, PARTS, ROLES
from meter.policy.thresholds import NOT_LEGAL_ADVICE, check_flops, two_significant
from meter.runtime import resume
from meter.runtime.attribution import AdapterProbe, RunCount, Stream, cache_length, count_streams, policy_part
from meter.runtime.counter import TokenCounter, attends_whole_row
from meter.runtime.energy import cuda_device_name, hardware_bound, on_cuda, precision_of, run_energy
from meter.runtime.hooks import PassHooks
from meter.runtime.log import ensure_log_handler, log, say_where
from meter.runtime.options import (
    check_options,
    default_output_path,
    nvml_option,
    pretrain_flops_option,
    rank,
    run_threshold,
)
from meter.runtime.record import run_record, sagemaker_env, write_json
from meter.runtime.streams import read_policy, read_watched

_TIMELINE_MAX = 4096  # entries; decimated by half when full, so a week-long job keeps a bounded record


class FlopsMeter:
    """Counts tokens on the device, converts them to FLOPs with the analytic engine, records the run."""

    def __init__(
        self,
        model: Any = None,
        *,
        output_path: str | os.PathLike | None = None,
        journal_path: str | os.PathLike | None = None,
        pretrain_flops: float | None = None,
        original_systemic_risk: bool = False,
        budget_flops: float | None = None,
        stop_at_fraction: float | None = None,
        log_every: int = 10,
        nvml: bool | None = None,
        hook: bool = True,
        precision: str | None = None,
        max_steps: int | None = None,
        regulatory_scope: str = DEFAULT_SCOPE,
    ):
        check_options(log_every=log_every, stop_at_fraction=stop_at_fraction, regulatory_scope=regulatory_scope)
        self.regulatory_scope = regulatory_scope
        self.pretrain_flops = pretrain_flops_option(pretrain_flops)
        self.original_systemic_risk = original_systemic_risk
        self.budget_flops = None if budget_flops is None else check_flops(budget_flops, "budget_flops")
        self.stop_at_fraction = stop_at_fraction
        self.log_every = log_every
        self.use_nvml = nvml_option(nvml)  # a bad FLOPS_METER_NVML: a MeterError here, before training
        self.use_hook = hook
        self.precision = precision
        self.max_steps = max_steps
        self.output_path = Path(output_path) if output_path else default_output_path()
        self.journal_path = Path(journal_path) if journal_path else None
        self.run_id = uuid.uuid4().hex
        self.rank, self.local_rank, self.world_size = rank()
        self.is_main = self.rank == 0

        self.cost: CostModel | None = None  # the policy as it trains
        self.counter: TokenCounter | None = None
        self.model_info: dict[str, Any] = {}
        self.streams: list[Stream] = []  # what is counted, by model and part (meter.runtime.attribution)
        self.stream_stats: list[TokenStats] = []  # totals per stream as of the last read-back (earlier attempts too)
        self.watched: list[dict[str, Any]] = []  # separate models (reference, reward) and their roles
        self.count: RunCount | None = None
        self.uncounted_passes = 0  # forward passes that could not be counted: the count is then a lower bound
        self.degraded: list[str] = []  # why the count is not exact, if it is not
        self._probe: AdapterProbe | None = None
        self._pad_token_id: int | None = None
        self._hooks = PassHooks()  # counting hooks on the policy and the watched models (meter.runtime.hooks)
        self._policy_index: dict[str, int] = {}  # part -> the policy's stream
        self.steps = 0  # optimizer steps counted by this meter (redone steps included)
        self.global_step = 0  # the trainer's step
        self.timeline: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.status = "created"
        self.stop_reason: str | None = None
        self.notes: list[str] = []
        self.forecast: dict[str, Any] | None = None
        self._forecast_warned = False
        self._max_step_flops = 0
        self._last_sync_step, self._last_sync_flops, self._last_sync_global_step = 0, 0, 0
        self._nvml = None
        self._model_ref: Any = None
        self._gpu: str | None = None  # the CUDA device name when the model trains on one
        self._started = self._ended = None
        self._sagemaker = sagemaker_env()
        self.threshold = None
        ensure_log_handler()
        if model is not None:
            self.attach(model)

    # -- set-up --------------------------------------------------------------------------------------------------

    def attach(self, model: Any) -> FlopsMeter:
        """Read the model's config and training setup; install the counting hooks (unless hook=False)."""
        policy = read_policy(model, note=self._note_once)
        self.streams, self.cost, self.model_info = policy.streams, policy.streams[0].cost, policy.model_info
        self._policy_index = {s.part: i for i, s in enumerate(self.streams)}
        self.notes.extend(policy.notes)
        if self.precision is None:
            self.precision = precision_of(model)
        self._model_ref = model  # its device is read at start: the Trainer moves the model after attach
        self.threshold, self.pretrain_source, note = run_threshold(
            policy.name, self.pretrain_flops, systemic_risk=self.original_systemic_risk
        )
        if note is not None:
            self.notes.append(note)
        self._pad_token_id = policy.pad_token_id
        if self.use_hook:
            from meter.runtime.introspect import unwrap

            self._probe = AdapterProbe(unwrap(model), policy.adapter)
            self._hooks.install(model, functools.partial(self._count_pass, self._policy_stream))
        return self

    def watch(self, model: Any, role: str) -> FlopsMeter:
        """Count the forward passes of a separate model of the run: ``role`` "reference" or "reward".

        Call before ``start()``. Its passes are forward-only, counted with its own config; while the policy is
        in eval mode they count as evaluation.
        """
        if role not in ROLES:
            raise MeterError(f"unknown role {role!r} for a watched model: use one of {', '.join(ROLES)}")
        if self.cost is None or self.counter is not None:
            raise MeterError("FlopsMeter.watch after attach(model) and before start()")
        label = f"{role}{len([w for w in self.watched if w['role'] == role]) or ''}"
        streams, entry = read_watched(model, role, label, note=self._note_once)
        index = len(self.streams)
        self.streams += streams
        self.watched.append(entry)
        if self.use_hook:

            def stream_of(module: Any, batch: dict[str, Any]) -> int:
                return index + (0 if self._policy_training() else 1)

            self._hooks.install(model, functools.partial(self._count_pass, stream_of))
        return self

    def _policy_training(self) -> bool:
        return bool(getattr(self._model_ref, "training", True))

    def _policy_stream(self, module: Any, batch: dict[str, Any]) -> int:
        return self._policy_index[policy_part(module, batch, self._probe)]

    @property
    def setup(self) -> TrainingSetup:
        return self.cost.setup

    @property
    def budget(self) -> float | None:
        """The compute at which the guard stops training: budget_flops, or stop_at_fraction × threshold."""
        limits = [] if self.budget_flops is None else [self.budget_flops]
        if self.stop_at_fraction is not None and self.threshold is not None:
            limits.append(float(self.stop_at_fraction) * self.threshold.flops)
        return min(limits, default=None)

    # -- counting --------------------------------------------------------------------------------------------------

    def _count_pass(self, stream_of, module, args, kwargs) -> None:
        """Count one outermost forward pass in the stream ``stream_of`` says (meter.runtime.hooks calls this)."""
        if self.counter is None:  # not started
            return
        try:
            batch = dict(kwargs)
            if args and "input_ids" not in batch:
                batch["input_ids"] = args[0]
            stream = stream_of(module, batch)
            past = cache_length(batch.get("past_key_values")) if batch.get("attention_mask") is None else 0
            whole_rows = self._whole_rows(module, batch)
            self.counter.observe(batch, stream, backward=self.streams[stream].backward, past=past,
                                 whole_rows=whole_rows)  # fmt: skip
        except Exception as e:  # never break the forward pass
            self.uncounted_passes += 1
            self._degrade(f"a forward pass could not be counted ({type(e).__name__}: {e}): the count is a lower bound")

    def _whole_rows(self, model: Any, batch: dict[str, Any]) -> bool:
        """Whether ``model`` attends this batch's packed rows across the whole row (counter.attends_whole_row);
        said once. Never raises: when it cannot tell, the rows stay per document and the count a lower bound."""
        try:
            why = attends_whole_row(model, batch)
        except Exception as e:
            self._degrade(f"could not tell how packed rows are attended ({type(e).__name__}: {e}): counted per "
                          "document, the count is a lower bound")  # fmt: skip
            return False
        if why is not None:
            self._note_once(why)
        return why is not None

    def observe(self, batch: dict[str, Any], part: str = "training") -> None:
        """Count one forward pass explicitly (for loops that do not use the hooks): a training micro-batch, or a
        forward-only pass of the policy (``part`` "policy_forward", "generation", "evaluation")."""
        if self.cost is None:
            raise MeterError("FlopsMeter.observe before attach(model): give the model to FlopsMeter(model)")
        if self._hooks:
            raise MeterError("this meter counts batches through its model hooks: create it with hook=False to observe")
        if self.counter is None:
            raise MeterError("FlopsMeter.observe before start(): use `with meter:` or call meter.start()")
        index = next((i for i, s in enumerate(self.streams) if s.part == part), None)
        if index is None:
            raise MeterError(f"unknown part {part!r}: use one of {', '.join(PARTS)}")
        from meter.runtime.introspect import unwrap

        whole_rows = self._whole_rows(unwrap(self._model_ref), batch)
        self.counter.observe(batch, index, backward=self.streams[index].backward, whole_rows=whole_rows)

    @property
    def stats(self) -> TokenStats:
        """Token statistics of the training steps (the policy's training stream)."""
        return self.stream_stats[0] if self.stream_stats else TokenStats()

    def step(self, global_step: int | None = None) -> bool:
        """Mark one optimizer step; read back every log_every steps. Returns True when it synced."""
        self.steps += 1
        self.global_step = self.global_step + 1 if global_step is None else global_step
        if self.steps % self.log_every == 0 or self._near_budget():
            self.sync()
            return True
        return False

    def sync(self) -> RunCount:
        """Read the device counters (one all-reduce), update totals, timeline, forecast; write journal and log."""
        read = self.counter.read()
        self.stream_stats = [a + b for a, b in zip(self.stream_stats, read, strict=True)]
        self.count = self._count()
        done = self.steps - self._last_sync_step
        if done > 0:
            per_step = (self.count.regulatory_flops - self._last_sync_flops) / done
            self._max_step_flops = max(self._max_step_flops, math.ceil(per_step))
        self._last_sync_step, self._last_sync_flops = self.steps, self.count.regulatory_flops
        self._last_sync_global_step = self.global_step
        self._update_forecast()
        self._append_timeline()
        if self.is_main:
            log.info(
                "flops_meter: cumulative_flops=%d executed_flops=%d tokens=%d step=%d",
                self.count.regulatory_flops,
                self.count.executed_flops,
                self.stats.tokens,
                self.global_step,
            )
            self._write_journal()
        return self.count

    def _append_timeline(self) -> None:
        if len(self.timeline) >= _TIMELINE_MAX:
            self.timeline = self.timeline[::2]
        self.timeline.append(
            {
                "step": self.global_step,
                "seconds": round(time.time() - self._started, 3) if self._started else 0.0,
                "tokens": self.stats.tokens,
                "regulatory_flops": self.regulatory_flops,
                "executed_flops": self.executed_flops,
            }
        )

    def _count(self, stream_stats: list[TokenStats] | None = None) -> RunCount:
        return count_streams(self.streams, stream_stats or self.stream_stats, self.regulatory_scope)

    def _degrade(self, reason: str) -> None:
        """The count is no longer exact: say why, once, in the record and in one log line."""
        if reason not in self.degraded:
            self.degraded.append(reason)
        self._note_once(reason)

    @property
    def regulatory_flops(self) -> int:
        return self.count.regulatory_flops if self.count else 0

    @property
    def executed_flops(self) -> int:
        return self.count.executed_flops if self.count else 0

    # -- budget and forecast ---------------------------------------------------------------------------------------

    def _near_budget(self) -> bool:
        """Estimated total within two of the largest steps seen of the budget: read back every step from here."""
        budget = self.budget
        if budget is None or self._max_step_flops == 0:
            return budget is not None and self.steps <= 1  # learn the step size right away
        pending = (self.steps - self._last_sync_step) * self._max_step_flops
        return self.regulatory_flops + pending + 2 * self._max_step_flops > budget

    def should_stop(self) -> bool:
        """After a sync: would the next step cross the budget (at the largest step seen, +10 %)? Then stop."""
        budget = self.budget
        if budget is None or self.count is None or self._last_sync_step != self.steps:
            return False
        if self.regulatory_flops + 1.1 * self._max_step_flops > budget:
            self.stop_reason = (
                f"budget guard: {two_significant(self.regulatory_flops)} counted, the next step (up to "
                f"{two_significant(1.1 * self._max_step_flops)}) would exceed the budget {two_significant(budget)}"
            )
            self.status = "stopped_by_budget"
            log.warning("flops_meter: stopping training: %s", self.stop_reason)
            return True
        return False

    def _update_forecast(self) -> None:
        if self.max_steps is None or self.max_steps <= 0 or self.steps == 0 or self.count is None:
            return
        remaining = max(self.max_steps - self.global_step, 0)
        per_step = self.count.regulatory_flops / max(self.steps, 1)
        final = self.count.regulatory_flops + remaining * per_step
        crosses = self.threshold.crossed_by(final)
        self.forecast = {
            "final_regulatory_flops": final,
            "max_steps": self.max_steps,
            "at_step": self.global_step,
            "crosses_threshold": crosses,
        }
        if crosses and not self._forecast_warned and self.is_main:
            self._forecast_warned = True
            log.warning(
                "flops_meter: the run is forecast to use %s, above the threshold %s (%s). It is now known that the "
                "threshold will be met: Art. 52(1) notification runs from now if the original has systemic risk. %s",
                two_significant(final),
                two_significant(self.threshold.flops),
                self.threshold.rule,
                NOT_LEGAL_ADVICE,
            )

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> FlopsMeter:
        if self.cost is None:
            raise MeterError("FlopsMeter.start before attach(model): give the model to FlopsMeter(model)")
        windows = set().union(*(s.cost.windows for s in self.streams))
        self.counter = TokenCounter(windows, streams=len(self.streams), pad_token_id=self._pad_token_id)
        if len(self.stream_stats) != len(self.streams):
            self.stream_stats = [TokenStats() for _ in self.streams]
        self._started = time.time()
        self._gpu = cuda_device_name() if on_cuda(self._model_ref) else None
        self.status = "running"
        if self.use_nvml and self.local_rank == 0 and self._gpu:
            from meter.runtime.nvml import NvmlSampler

            self._nvml = NvmlSampler().start()
        return self

    def stop(self, status: str | None = None) -> dict[str, Any]:
        """Final read-back, stop NVML, write the record. Returns the record. A failed read-back is recorded (the
        count becomes a lower bound), not raised."""
        try:
            if self.world_size > 1 or self.counter.pending or self.steps != self._last_sync_step or self.count is None:
                self.sync()  # every rank takes part when distributed: ranks may hold batches rank 0 has not seen
        except Exception as e:
            self._degrade(f"final read-back failed: {type(e).__name__}: {e}")
        self._ended = time.time()
        if status is not None:
            self.status = status
        elif self.status == "running":
            self.status = "completed"
        energy = run_energy(
            self._nvml, use_nvml=self.use_nvml, device=self._gpu, seconds=self._seconds(), world_size=self.world_size
        )
        self.remove_hooks()
        record = self.record(energy)
        if self.is_main:
            self._write_json(self.output_path, record)
            self._write_journal(final=True)
            say_where(record, self.output_path)
        return record

    def _seconds(self) -> float:
        return (self._ended or time.time()) - (self._started or time.time())

    def remove_hooks(self) -> None:
        self._hooks.remove()

    def __enter__(self) -> FlopsMeter:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop("failed" if exc_type is not None else None)

    # -- resume ----------------------------------------------------------------------------------------------------

    def state_snapshot(self) -> dict[str, Any]:
        """What a checkpoint must keep: totals as of the last read-back, and the steps they cover.

        No collective here: the Trainer asks only the main process when it saves, so the read-back must already
        have happened on every rank (the callback syncs whenever a save is due).
        """
        return {
            "run_id": self.run_id,
            **resume.totals(self.streams, self.stream_stats),
            "steps": self._last_sync_step,
            "global_step": self._last_sync_global_step,
            "resumes": self.resumes,
            "max_step_flops": self._max_step_flops,
        }

    def load_state(self, state: dict[str, Any], global_step: int) -> None:
        """Resume from a checkpoint taken at ``global_step``; count steps redone since then as consumed compute.

        The journal (written at every read-back next to the checkpoints) holds the totals as of the last read-back
        before the interruption; steps after the checkpoint up to then were computed and are counted. What cannot be
        trusted is not used, and the record says the count is a lower bound (meter.runtime.resume).
        """
        checkpoint = resume.read_checkpoint(
            state, global_step, run_id=self.run_id, streams=self.streams, degrade=self._degrade
        )
        self.global_step = global_step
        if checkpoint is None:
            return
        self.run_id, self.stream_stats, self.steps = checkpoint.run_id, checkpoint.stream_stats, checkpoint.steps
        self.resumes, self._max_step_flops = checkpoint.resumes, checkpoint.max_step_flops
        entry, self.stream_stats, self.steps = resume.redone_after(
            checkpoint, global_step, journal_path=self.journal_path, streams=self.streams, count=self._count,
            degrade=self._degrade,
        )  # fmt: skip
        self.resumes.append(entry)
        if self.world_size > 1:  # every rank must hold rank 0's totals, or budget decisions would differ
            self.stream_stats, self.steps, self.resumes = resume.broadcast(
                self.streams, self.stream_stats, self.steps, self.resumes
            )
        self.count = self._count()
        self._last_sync_step, self._last_sync_flops = self.steps, self.count.regulatory_flops
        self._last_sync_global_step = global_step
        if self.is_main:
            resume.log_resumed(global_step, self.count, entry)

    def _write_journal(self, final: bool = False) -> None:
        if self.journal_path is not None:
            doc = resume.journal_entry(self.run_id, self.global_step, self.steps, self.streams, self.stream_stats,
                                       self.regulatory_flops, final=final)  # fmt: skip
            self._write_json(self.journal_path, doc)

    # -- the record ------------------------------------------------------------------------------------------------

    def record(self, energy: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run record (written to flops_meter.json; assembled by meter.runtime.record)."""
        energy = energy if energy is not None else {"available": False, "reason": "run not stopped yet"}
        seconds = self._seconds()
        count = self.count or self._count(self.stream_stats or [TokenStats() for _ in self.streams])
        hardware = hardware_bound(
            energy, device=self._gpu, precision=self.precision, seconds=seconds, world_size=self.world_size
        )
        return run_record(self, count, energy=energy, hardware=hardware, started=self._started, ended=self._ended,
                          seconds=seconds, sagemaker=self._sagemaker)  # fmt: skip

    def _write_json(self, path: Path, doc: dict[str, Any]) -> None:
        """Atomic write; a failure is noted in the record and logged, never raised into the job."""
        error = write_json(path, doc)
        if error is not None:
            self._note_once(f"could not write {path}: {error}")

    def _note_once(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning("flops_meter: %s", message)
