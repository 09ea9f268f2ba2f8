"""`FlopsMeter`: counts the compute of a training run as it happens, framework-agnostic.

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

import json
import logging
import math
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from meter.count import CostModel, FlopsCount, TrainingSetup, target_names
from meter.counter import TokenCounter
from meter.errors import MeterError
from meter.spec import spec_from_config
from meter.thresholds import NOT_LEGAL_ADVICE, check_flops, threshold_for, two_significant
from meter.tokens import TokenStats, stats_from_dict

log = logging.getLogger("flops_meter")
RECORD_NAME = "flops_meter.json"
JOURNAL_NAME = "flops_meter.journal.json"
_TIMELINE_MAX = 4096  # entries; decimated by half when full, so a week-long job keeps a bounded record


def default_output_path() -> Path:
    """FLOPS_METER_OUT, else SageMaker's output data dir (SM_OUTPUT_DATA_DIR), else ./flops_meter.json."""
    if os.environ.get("FLOPS_METER_OUT"):
        return Path(os.environ["FLOPS_METER_OUT"])
    if os.environ.get("SM_OUTPUT_DATA_DIR"):
        return Path(os.environ["SM_OUTPUT_DATA_DIR"]) / RECORD_NAME
    return Path(RECORD_NAME)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _rank() -> tuple[int, int, int]:
    """(global rank, local rank, world size) from torch.distributed or the launcher's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (test runners and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _ensure_log_handler() -> None:
    """Metric lines must reach stdout for SageMaker's metric_definitions, whatever the root logger does."""
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


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
    ):
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every <= 0:
            raise MeterError(f"log_every must be a positive integer, got {log_every!r}")
        if stop_at_fraction is not None and not (0 < float(stop_at_fraction) <= 1):
            raise MeterError(f"stop_at_fraction must be in (0, 1], got {stop_at_fraction!r}")
        env_pretrain = os.environ.get("PRETRAIN_FLOPS", "").strip()
        if pretrain_flops is None and env_pretrain:
            pretrain_flops = check_flops(env_pretrain, "PRETRAIN_FLOPS")
        elif pretrain_flops is not None:
            pretrain_flops = check_flops(pretrain_flops, "pretrain_flops")
        self.pretrain_flops = pretrain_flops
        self.original_systemic_risk = original_systemic_risk
        self.budget_flops = None if budget_flops is None else check_flops(budget_flops, "budget_flops")
        self.stop_at_fraction = stop_at_fraction
        self.log_every = log_every
        self.use_nvml = _env_flag("FLOPS_METER_NVML", True) if nvml is None else nvml
        self.use_hook = hook
        self.precision = precision
        self.max_steps = max_steps
        self.output_path = Path(output_path) if output_path else default_output_path()
        self.journal_path = Path(journal_path) if journal_path else None
        self.run_id = uuid.uuid4().hex
        self.rank, self.local_rank, self.world_size = _rank()
        self.is_main = self.rank == 0

        self.cost: CostModel | None = None
        self.counter: TokenCounter | None = None
        self.model_info: dict[str, Any] = {}
        self.stats = TokenStats()  # totals of this run since the last read-back (incl. earlier attempts)
        self.count: FlopsCount | None = None
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
        self._hook_handle = None
        self._nvml = None
        self._model_ref: Any = None
        self._gpu: str | None = None  # the CUDA device name when the model trains on one
        self._started = self._ended = None
        self._sagemaker = _sagemaker_env()
        self.threshold = None
        _ensure_log_handler()
        if model is not None:
            self.attach(model)

    # -- set-up --------------------------------------------------------------------------------------------------

    def attach(self, model: Any) -> FlopsMeter:
        """Read the model's config and training setup; install the counting hook (unless hook=False)."""
        from meter.introspect import observe_model, unwrap

        observed = observe_model(model)
        name = str(observed.config.get("_name_or_path") or observed.config.get("model_type"))
        spec = spec_from_config(observed.config, name=name)
        self.cost = CostModel(spec, observed.setup, trainable=observed.trainable)
        self.counter = TokenCounter(self.cost.windows)
        engine_trainable = self.cost.trainable_parameters()
        if not observed.quantized and observed.trainable_numel and observed.trainable_numel != engine_trainable:
            self.notes.append(
                f"trainable parameters: engine {engine_trainable:,}, model reports {observed.trainable_numel:,} "
                "(sharded or packed parameters report less; the engine reads the config)"
            )
        self.notes.extend(observed.notes)
        self.model_info = {
            "name": name,
            "model_type": spec.model_type,
            "parameters": spec.parameter_count(),
            "trainable_parameters": engine_trainable,
            "trainable_parameters_reported": observed.trainable_numel,
            "quantized": observed.quantized,
            "layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "vocab_size": spec.vocab_size,
            "moe": None if spec.moe is None else {"experts": spec.moe.num_experts, "top_k": spec.moe.top_k},
        }
        if self.precision is None:
            self.precision = _precision_of(model)
        self._model_ref = model  # its device is read at start: the Trainer moves the model after attach
        self.threshold, self.pretrain_source = self._threshold(name)
        if self.use_hook:
            target = unwrap(model)
            self._hook_handle = target.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def _threshold(self, name: str):
        from meter.catalog import pretrain_compute

        if self.pretrain_flops is not None:
            return threshold_for(self.pretrain_flops, original_systemic_risk=self.original_systemic_risk), None
        published = pretrain_compute(name)
        original = published.flops if published is not None else None
        if published is None:
            # a local path (as on SageMaker) is not a model id: say so, the fallback may be above the true third
            self.notes.append(
                f"the original model '{name}' is not in the published-compute table: the fallback threshold applies. "
                "If its training compute is known, give it (pretrain_flops or PRETRAIN_FLOPS): one third of a known "
                "compute can be lower than the fallback (Llama-2-7B: 2.8e22 < 3.3e22)"
            )
        return threshold_for(original, original_systemic_risk=self.original_systemic_risk), published

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

    def _pre_hook(self, module, args, kwargs):
        if not module.training:
            return None
        try:
            batch = dict(kwargs)
            if args and "input_ids" not in batch:
                batch["input_ids"] = args[0]
            self.counter.observe(batch)
        except Exception as e:  # never break the forward pass
            self._note_once(f"a batch could not be counted: {type(e).__name__}: {e}")
        return None

    def observe(self, batch: dict[str, Any]) -> None:
        """Count one micro-batch explicitly (for loops that do not use the hook)."""
        if self.counter is None:
            raise MeterError("FlopsMeter.observe before attach(model): give the model to FlopsMeter(model)")
        if self._hook_handle is not None:
            raise MeterError("this meter counts batches through its model hook: create it with hook=False to observe")
        self.counter.observe(batch)

    def step(self, global_step: int | None = None) -> bool:
        """Mark one optimizer step; read back every log_every steps. Returns True when it synced."""
        self.steps += 1
        self.global_step = self.global_step + 1 if global_step is None else global_step
        if self.steps % self.log_every == 0 or self._near_budget():
            self.sync()
            return True
        return False

    def sync(self) -> FlopsCount:
        """Read the device counters (one all-reduce), update totals, timeline, forecast; write journal and log."""
        self.stats = self.stats + self.counter.read()
        self.count = self.cost.count(self.stats)
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
        self._started = time.time()
        self._gpu = _cuda_device_name() if _on_cuda(self._model_ref) else None
        self.status = "running"
        if self.use_nvml and self.local_rank == 0 and self._gpu:
            from meter.nvml import NvmlSampler

            self._nvml = NvmlSampler().start()
        return self

    def stop(self, status: str | None = None) -> dict[str, Any]:
        """Final read-back, stop NVML, write the record. Returns the record."""
        try:
            if self.world_size > 1 or self.counter.pending or self.steps != self._last_sync_step or self.count is None:
                self.sync()  # every rank takes part when distributed: ranks may hold batches rank 0 has not seen
        except Exception as e:
            self._note_once(f"final read-back failed: {type(e).__name__}: {e}")
        self._ended = time.time()
        if status is not None:
            self.status = status
        elif self.status == "running":
            self.status = "completed"
        energy = self._energy()
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        record = self.record(energy)
        if self.is_main:
            self._write_json(self.output_path, record)
            self._write_journal(final=True)
        return record

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
            "stats": self.stats.to_dict(),
            "steps": self._last_sync_step,
            "global_step": self._last_sync_global_step,
            "resumes": self.resumes,
            "max_step_flops": self._max_step_flops,
        }

    def load_state(self, state: dict[str, Any], global_step: int) -> None:
        """Resume from a checkpoint taken at ``global_step``; count steps redone since then as consumed compute.

        The journal (written at every read-back next to the checkpoints) holds the totals as of the last read-back
        before the interruption; steps after the checkpoint up to then were computed and are counted.
        """
        self.run_id = state.get("run_id", self.run_id)
        checkpoint = stats_from_dict(state["stats"])
        self.stats, self.steps = checkpoint, int(state.get("steps", global_step))
        self.global_step = global_step
        self.resumes = list(state.get("resumes", []))
        self._max_step_flops = int(state.get("max_step_flops", 0))
        journal = self._read_journal()
        resume = {"from_step": global_step, "redone_steps": 0, "redone_regulatory_flops": 0, "redone_executed_flops": 0}
        if journal and journal.get("run_id") == self.run_id and journal.get("global_step", 0) > global_step:
            consumed = stats_from_dict(journal["stats"])
            before, after = self.cost.count(checkpoint), self.cost.count(consumed)
            resume.update(
                redone_steps=int(journal["global_step"]) - global_step,
                redone_regulatory_flops=after.regulatory_flops - before.regulatory_flops,
                redone_executed_flops=after.executed_flops - before.executed_flops,
            )
            self.stats, self.steps = consumed, int(journal.get("steps", self.steps))
        elif journal is None and self.journal_path is not None:
            resume["note"] = "no journal found: steps redone after the checkpoint could not be counted"
        self.resumes.append(resume)
        self._broadcast_resume()
        self.count = self.cost.count(self.stats)
        self._last_sync_step, self._last_sync_flops = self.steps, self.count.regulatory_flops
        self._last_sync_global_step = global_step
        if self.is_main:
            log.info(
                "flops_meter: resumed at step %d with %s counted; %d steps redone after the checkpoint (%s)",
                global_step,
                two_significant(self.count.regulatory_flops),
                resume["redone_steps"],
                two_significant(resume["redone_regulatory_flops"]),
            )

    def _broadcast_resume(self) -> None:
        """Every rank must hold rank 0's totals, or budget decisions would differ and ranks would hang."""
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        box = [{"stats": self.stats.to_dict(), "steps": self.steps, "resumes": self.resumes}]
        dist.broadcast_object_list(box, src=0)
        self.stats, self.steps, self.resumes = stats_from_dict(box[0]["stats"]), box[0]["steps"], box[0]["resumes"]

    def _read_journal(self) -> dict[str, Any] | None:
        if self.journal_path is None or not self.journal_path.is_file():
            return None
        try:
            return json.loads(self.journal_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            self._note_once(f"journal {self.journal_path} unreadable: {e}")
            return None

    def _write_journal(self, final: bool = False) -> None:
        if self.journal_path is None:
            return
        doc = {
            "run_id": self.run_id,
            "global_step": self.global_step,
            "steps": self.steps,
            "stats": self.stats.to_dict(),
            "regulatory_flops": self.regulatory_flops,
            "final": final,
        }
        self._write_json(self.journal_path, doc)

    # -- the record ------------------------------------------------------------------------------------------------

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

    def _energy(self) -> dict[str, Any]:
        seconds = (self._ended or time.time()) - (self._started or time.time())
        measured = self._nvml.stop() if self._nvml is not None else None
        measured = _sum_over_nodes(measured, self.world_size)
        if measured and measured.get("available"):
            return {**measured, "estimated": measured["energy_method"] != "nvml_energy_counter"}
        reason = (measured or {}).get("reason") or (
            "NVML disabled (nvml=False or FLOPS_METER_NVML=0)"
            if not self.use_nvml
            else "NVML sampled on local rank 0 only"
        )
        device = self._gpu
        if device is None:
            return {"available": False, "reason": f"{reason}; no GPU in use", "energy_kwh": None}
        from meter.hardware import identify

        chip = identify(device)
        if chip is None or chip.tdp_watts is None:
            return {"available": False, "reason": f"{reason}; no board power known for {device}", "energy_kwh": None}
        kwh = chip.tdp_watts * seconds * self.world_size / 3.6e6
        return {
            "available": False,
            "reason": reason,
            "energy_kwh": kwh,
            "energy_method": "tdp_times_time",
            "estimated": True,
            "note": f"{chip.key} board power {chip.tdp_watts} W × {seconds:.0f} s × {self.world_size} devices: "
            "an upper estimate, not a measurement",
        }

    def _hardware(self, energy: dict[str, Any], seconds: float) -> dict[str, Any]:
        from meter.hardware import peak_flops

        device = self._gpu
        gpus = energy.get("gpus") or []
        info: dict[str, Any] = {
            "device": device or platform.processor() or "cpu",
            "world_size": self.world_size,
            "precision": self.precision,
            "gpu_hours": seconds * self.world_size / 3600 if device else None,
        }
        if device is None:
            return {**info, "hardware_bound_flops": None, "reason": "no GPU: the hardware-based method does not apply"}
        peak = peak_flops(device, self.precision or "bf16")
        util = sum(g["utilization_mean"] for g in gpus) / len(gpus) if gpus else None
        bound = None
        if peak.flops is not None:
            bound = self.world_size * seconds * peak.flops * (util if util is not None else 1.0)
        return {
            **info,
            "chip": peak.chip,
            "peak_flops_per_device": peak.flops,
            "peak_source": peak.source,
            "utilization_mean": util,
            "hardware_bound_flops": bound,
            "hardware_bound_method": "N·L·H·U (Guidelines Annex A); U is NVML kernel-busy time, so this is an upper "
            "bound" + ("" if util is not None else "; U unknown (no NVML): taken as 1"),
        }

    def record(self, energy: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run record (written to flops_meter.json)."""
        energy = energy if energy is not None else {"available": False, "reason": "run not stopped yet"}
        seconds = (self._ended or time.time()) - (self._started or time.time())
        count = self.count or self.cost.count(self.stats)
        t = self.threshold
        kwh = energy.get("energy_kwh")
        return {
            "record_type": "flops_meter.run",
            "record_version": 1,
            "run_id": self.run_id,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "model": self.model_info,
            "method": {
                "setup": self.setup.describe(),
                "method": self.setup.method,
                "lora_r": self.setup.lora_r if self.setup.uses_lora else None,
                "lora_targets": target_names(self.setup.lora_targets) if self.setup.uses_lora else None,
                "gradient_checkpointing": self.setup.gradient_checkpointing,
                "attn_implementation": self.setup.attn_implementation,
            },
            "tokens": self.stats.to_dict(),
            "flops": {
                "regulatory": count.regulatory_flops,
                "executed": count.executed_flops,
                "regulatory_parts": count.regulatory.__dict__,
                "executed_parts": count.executed.__dict__,
                "regulatory_2sf": two_significant(count.regulatory_flops),
                "per_token": count.flops_per_token,
                "methodology": "architecture-based (Guidelines Annex A): forward and backward matrix products from "
                "the model config, over the real tokens of every batch; causal attention pairs; recomputation "
                "excluded. Executed count: padding, kernel attention and recomputation included.",
            },
            "threshold": {
                "flops": t.flops,
                "rule": t.rule,
                "citation": t.citation,
                "original_flops": t.original_flops,
                "original_source": None if self.pretrain_source is None else self.pretrain_source.to_dict(),
                "fraction": count.regulatory_flops / t.flops,
                "crossed_by_this_run": t.crossed_by(count.regulatory_flops),
                "notes": list(t.notes),
            },
            "forecast": self.forecast,
            "budget": {"budget_flops": self.budget, "stop_at_fraction": self.stop_at_fraction},
            "steps": {
                "optimizer_steps": self.steps,
                "last_global_step": self.global_step,
                "micro_batches": self.stats.passes,
                "resumes": self.resumes,
                "redone_steps": sum(r.get("redone_steps", 0) for r in self.resumes),
            },
            "hardware": self._hardware(energy, seconds),
            "energy": {**energy, "energy_kwh_2sf": None if kwh is None else f"{kwh:.2g} kWh"},
            "time": {
                "started": _iso(self._started),
                "ended": _iso(self._ended),
                "wall_seconds": seconds,
            },
            "timeline": self.timeline,
            "software": _software(),
            "sagemaker": self._sagemaker,
            "notes": self.notes,
            "disclaimer": NOT_LEGAL_ADVICE,
        }

    def _write_json(self, path: Path, doc: dict[str, Any]) -> None:
        """Atomic write (temp file + rename): a reader never sees half a record. Failures are logged, not raised.

        Only a regular file is replaced: a device or pipe given as the path (/dev/null, /dev/stdout) is written to,
        never renamed over.
        """
        text = json.dumps(doc, indent=2, default=str)
        try:
            if path.exists() and not path.is_file():
                with open(path, "w") as f:
                    f.write(text)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as e:
            self._note_once(f"could not write {path}: {e}")

    def _note_once(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning("flops_meter: %s", message)


# --------------------------------------------------------------------------------------------------------------


def _precision_of(model: Any) -> str:
    """The precision most of the weights compute in (LoRA adapters are often fp32 on bf16 weights)."""
    sizes: dict[str, int] = {}
    for p in model.parameters():
        sizes[str(p.dtype)] = sizes.get(str(p.dtype), 0) + p.numel()
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    dtype = str(compute) if compute is not None else max(sizes, key=sizes.get, default="torch.float32")
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(dtype, "fp32")


def _on_cuda(model: Any) -> bool:
    """Whether the model computes on a CUDA device (a CPU run on a GPU machine must not claim the GPU's energy)."""
    for p in model.parameters() if hasattr(model, "parameters") else ():
        if p.device.type != "meta":
            return p.device.type == "cuda"
    return False


def _cuda_device_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception as e:
        log.debug("flops_meter: no CUDA device name: %s", e)
    return None


def _sum_over_nodes(measured: dict[str, Any] | None, world_size: int) -> dict[str, Any] | None:
    """Each node's local rank 0 measures its GPUs; sum the energy of all nodes (collective on every rank)."""
    if world_size <= 1:
        return measured
    try:
        import torch.distributed as dist

        if not dist.is_initialized():
            return measured
        box: list[Any] = [None] * world_size
        dist.all_gather_object(box, measured)
    except Exception as e:
        log.warning("flops_meter: could not gather energy from other nodes: %s", e)
        return measured
    nodes = [m for m in box if m and m.get("available")]
    if not nodes:
        return measured
    gpus = [g for m in nodes for g in m["gpus"]]
    methods = {m["energy_method"] for m in nodes}
    return {**nodes[0], "gpus": gpus, "energy_kwh": sum(m["energy_kwh"] for m in nodes),
            "energy_method": methods.pop() if len(methods) == 1 else "mixed", "nodes": len(nodes)}  # fmt: skip


def _software() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("flops-meter", "torch", "transformers", "peft", "trl", "accelerate", "deepspeed"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def _sagemaker_env() -> dict[str, Any] | None:
    """Job name, instance type and hosts when running in a SageMaker training job."""
    raw = os.environ.get("SM_TRAINING_ENV")
    env: dict[str, Any] = {}
    if raw:
        try:
            env = json.loads(raw)
        except json.JSONDecodeError:
            env = {}
    job = env.get("job_name") or os.environ.get("TRAINING_JOB_NAME")
    if not job and not os.environ.get("SM_CURRENT_HOST"):
        return None
    return {
        "training_job_name": job,
        "instance_type": env.get("current_instance_type") or os.environ.get("SM_CURRENT_INSTANCE_TYPE"),
        "current_host": env.get("current_host") or os.environ.get("SM_CURRENT_HOST"),
        "hosts": env.get("hosts"),
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
