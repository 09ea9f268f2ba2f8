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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from meter.engine.count import CostModel, TrainingSetup, target_names
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats, stats_from_dict
from meter.errors import MeterError, UnknownArchitecture
from meter.policy.parts import DEFAULT_SCOPE, PARTS, ROLES, check_scope, policy
from meter.policy.thresholds import NOT_LEGAL_ADVICE, check_flops, threshold_for, two_significant
from meter.runtime.attribution import AdapterProbe, RunCount, Stream, cache_length, count_streams, policy_part
from meter.runtime.counter import TokenCounter

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


def check_options(
    *,
    log_every: int = 10,
    stop_at_fraction: float | None = None,
    pretrain_flops: float | None = None,
    budget_flops: float | None = None,
    regulatory_scope: str = DEFAULT_SCOPE,
) -> None:
    """MeterError for a bad option: checked where the meter is configured, before any training starts."""
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every <= 0:
        raise MeterError(f"log_every must be a positive integer, got {log_every!r}")
    if stop_at_fraction is not None:
        try:
            fraction = math.nan if isinstance(stop_at_fraction, bool) else float(stop_at_fraction)
        except (TypeError, ValueError):
            fraction = math.nan
        if not 0 < fraction <= 1:  # NaN fails too
            raise MeterError(f"stop_at_fraction must be a number in (0, 1], got {stop_at_fraction!r}")
    for name, value in (("pretrain_flops", pretrain_flops), ("budget_flops", budget_flops)):
        if value is not None:
            check_flops(value, name)
    check_scope(regulatory_scope)


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
        self._hooks: list[Any] = []
        # depth > 0 inside a counted forward: nested calls (PEFT -> base model) are not counted again. Per thread:
        # nn.DataParallel runs its replicas' forwards (and these hooks) in threads, each on its slice of the batch
        self._local = threading.local()
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
        self._sagemaker = _sagemaker_env()
        self.threshold = None
        _ensure_log_handler()
        if model is not None:
            self.attach(model)

    # -- set-up --------------------------------------------------------------------------------------------------

    def attach(self, model: Any) -> FlopsMeter:
        """Read the model's config and training setup; install the counting hooks (unless hook=False)."""
        from meter.runtime.introspect import observe_model

        observed = observe_model(model)
        name = str(observed.config.get("_name_or_path") or observed.config.get("model_type"))
        self.cost = self._cost_model(observed, name, model)
        spec = getattr(self.cost, "spec", None)
        # the policy's streams: training steps (forward + backward), forward-only passes with its adapters on
        self.streams = [Stream("policy/training", "training", self.cost, backward=True)]
        self.streams += [Stream(f"policy/{p}", p, self.cost) for p in ("generation", "policy_forward", "evaluation")]
        if observed.adapter is not None:  # reference passes with the adapters disabled run the bare base model
            bare = self._cost_model(observed, name, model, bare=True)
            self.streams.append(Stream("policy/reference_forward", "reference_forward", bare))
        self._policy_index = {s.part: i for i, s in enumerate(self.streams)}
        engine_trainable = self.cost.trainable_parameters()
        if not observed.quantized and observed.trainable_numel and observed.trainable_numel != engine_trainable:
            self.notes.append(
                f"trainable parameters: engine {engine_trainable:,}, model reports {observed.trainable_numel:,} "
                "(sharded or packed parameters report less; the engine reads the config)"
            )
        self.notes.extend(observed.notes)
        config = observed.config
        self.model_info = {
            "name": name,
            "model_type": config.get("model_type"),
            "parameters": spec.parameter_count() if spec is not None else self.cost.parameters,
            "trainable_parameters": engine_trainable,
            "trainable_parameters_reported": observed.trainable_numel,
            "quantized": observed.quantized,
            "layers": spec.num_layers if spec is not None else config.get("num_hidden_layers"),
            "hidden_size": spec.hidden_size if spec is not None else config.get("hidden_size"),
            "vocab_size": spec.vocab_size if spec is not None else config.get("vocab_size"),
            "moe": None
            if spec is None or spec.moe is None
            else {"experts": spec.moe.num_experts, "top_k": spec.moe.top_k},
            "counted_by": "analytic engine" if spec is not None else "measured on the meta device (generic path)",
        }
        if self.precision is None:
            self.precision = _precision_of(model)
        self._model_ref = model  # its device is read at start: the Trainer moves the model after attach
        self.threshold, self.pretrain_source = self._threshold(name)
        pad = observed.config.get("pad_token_id")
        self._pad_token_id = pad if isinstance(pad, int) and not isinstance(pad, bool) else None
        if self.use_hook:
            from meter.runtime.introspect import unwrap

            self._probe = AdapterProbe(unwrap(model), observed.adapter)
            self._install_hooks(model, self._policy_stream)
        return self

    def _cost_model(self, observed, name: str, model: Any, *, bare: bool = False):
        """The analytic engine for the families it knows; else the generic path (meter.engine.measure), said once."""
        setup = TrainingSetup(attn_implementation=observed.setup.attn_implementation) if bare else observed.setup
        try:
            spec = spec_from_config(observed.config, name=name)
        except UnknownArchitecture:
            from meter.engine.measure import MeasuredCostModel

            cost = MeasuredCostModel(observed.config, setup, name=name, model=model, bare=bare)
            self._note_once(
                f"model_type '{observed.config.get('model_type')}' is outside the analytic engine: its rates were "
                "measured with FlopCounterMode on a meta-device copy prepared as it trains ("
                "sliding windows credited, MoE experts as routed, executed attention counted as eager)"
            )
            return cost
        return CostModel(spec, setup, trainable=None if bare else observed.trainable)

    def watch(self, model: Any, role: str) -> FlopsMeter:
        """Count the forward passes of a separate model of the run: ``role`` "reference" or "reward".

        Call before ``start()``. Its passes are forward-only, counted with its own config; while the policy is
        in eval mode they count as evaluation.
        """
        from meter.runtime.introspect import observe_model

        if role not in ROLES:
            raise MeterError(f"unknown role {role!r} for a watched model: use one of {', '.join(ROLES)}")
        if self.cost is None or self.counter is not None:
            raise MeterError("FlopsMeter.watch after attach(model) and before start()")
        observed = observe_model(model)
        name = str(observed.config.get("_name_or_path") or observed.config.get("model_type"))
        cost = self._cost_model(observed, name, model)
        label = f"{role}{len([w for w in self.watched if w['role'] == role]) or ''}"
        index = len(self.streams)
        self.streams += [Stream(f"{label}/{ROLES[role]}", ROLES[role], cost), Stream(f"{label}/evaluation",
                         "evaluation", cost)]  # fmt: skip
        parameters = cost.spec.parameter_count() if isinstance(cost, CostModel) else cost.parameters
        self.watched.append({"role": role, "name": name, "model_type": observed.config.get("model_type"),
                             "parameters": parameters, "stream": label})  # fmt: skip
        if self.use_hook:
            self._install_hooks(model, lambda module, batch: index + (0 if self._policy_training() else 1))
        return self

    def _policy_training(self) -> bool:
        return bool(getattr(self._model_ref, "training", True))

    def _install_hooks(self, model: Any, stream_of) -> None:
        """Hooks on the model and on its base under a PEFT wrapper (generate() calls the base directly).

        The outermost counted forward counts the pass; forwards nested in it (PEFT -> base) are skipped.
        """
        from meter.runtime.introspect import unwrap

        top = unwrap(model)
        targets = [top]
        base = top.get_base_model() if hasattr(top, "get_base_model") else top
        if base is not top:
            targets.append(base)
        for target in targets:
            self._hooks.append(
                target.register_forward_pre_hook(lambda m, a, k: self._pre_hook(m, a, k, stream_of), with_kwargs=True)
            )
            self._hooks.append(target.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True))

    def _policy_stream(self, module: Any, batch: dict[str, Any]) -> int:
        return self._policy_index[policy_part(module, batch, self._probe)]

    def _threshold(self, name: str):
        from meter.policy.original import resolve_original

        original = resolve_original(name, self.pretrain_flops, systemic_risk=self.original_systemic_risk or None,
                                    label="pretrain_flops")  # fmt: skip
        if original.flops is None:
            # a local path (as on SageMaker) is not a model id: say so, the fallback may be above the true third
            self.notes.append(
                f"the original model '{name}' is not in the table of published facts: the fallback threshold "
                "applies. If its training compute is known or can be estimated (Guidelines Annex A.2), give it "
                "(pretrain_flops or PRETRAIN_FLOPS): one third of a known compute can be lower than the fallback "
                "(Llama-2-7B: 2.8e22 < 3.3e22)"
            )
        return threshold_for(original.flops, original_systemic_risk=original.is_systemic_risk), original

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

    def _pre_hook(self, module, args, kwargs, stream_of):
        depth = self._local.depth = getattr(self._local, "depth", 0) + 1
        if depth > 1 or self.counter is None:  # nested in a counted pass, or not started
            return None
        try:
            batch = dict(kwargs)
            if args and "input_ids" not in batch:
                batch["input_ids"] = args[0]
            stream = stream_of(module, batch)
            past = cache_length(batch.get("past_key_values")) if batch.get("attention_mask") is None else 0
            self.counter.observe(batch, stream, backward=self.streams[stream].backward, past=past)
        except Exception as e:  # never break the forward pass
            self.uncounted_passes += 1
            self._degrade(f"a forward pass could not be counted ({type(e).__name__}: {e}): the count is a lower bound")
        return None

    def _post_hook(self, module, args, kwargs, output):
        self._local.depth = max(getattr(self._local, "depth", 1) - 1, 0)
        return None

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
        self.counter.observe(batch, index, backward=self.streams[index].backward)

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
        self._gpu = _cuda_device_name() if _on_cuda(self._model_ref) else None
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
        energy = self._energy()
        self.remove_hooks()
        record = self.record(energy)
        if self.is_main:
            self._write_json(self.output_path, record)
            self._write_journal(final=True)
            self._say_where(record)
        return record

    def _say_where(self, record: dict[str, Any]) -> None:
        """One line at the end: the count, this run against the threshold, and where the record is."""
        threshold = record["threshold"]
        crossed = "CROSSES" if threshold["crossed_by_this_run"] else "below"
        log.info(
            "flops_meter: %s: %.1e regulatory FLOP (%s), %.1f%% of the threshold %.1e: this run alone is %s it "
            "(the lineage's total decides: flops-meter classify %s); record %s",
            record["status"], record["flops"]["regulatory"], record["flops"]["confidence"],
            100 * threshold["fraction"], threshold["flops"], crossed, self.output_path, self.output_path,
        )  # fmt: skip

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> FlopsMeter:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop("failed" if exc_type is not None else None)

    # -- resume ----------------------------------------------------------------------------------------------------

    def _totals(self) -> dict[str, Any]:
        """Statistics per stream by name (and the training stream's under "stats", as records before parts had)."""
        return {
            "stats": self.stats.to_dict(),
            "streams": {s.name: st.to_dict() for s, st in zip(self.streams, self.stream_stats, strict=True)},
        }

    def _read_totals(self, doc: dict[str, Any]) -> list[TokenStats]:
        """Stream statistics from a checkpoint or journal; MeterError when malformed or of another run's streams."""
        streams = doc.get("streams")
        if streams is None:  # written before parts: the training stream only
            streams = {self.streams[0].name: doc.get("stats")}
        if not isinstance(streams, dict):
            raise MeterError(f"streams must be an object, got {type(streams).__name__}")
        unknown = set(streams) - {s.name for s in self.streams}
        if unknown:
            raise MeterError(f"streams {', '.join(sorted(unknown))} are not counted by this run")
        return [stats_from_dict(streams[s.name]) if s.name in streams else TokenStats() for s in self.streams]

    def state_snapshot(self) -> dict[str, Any]:
        """What a checkpoint must keep: totals as of the last read-back, and the steps they cover.

        No collective here: the Trainer asks only the main process when it saves, so the read-back must already
        have happened on every rank (the callback syncs whenever a save is due).
        """
        return {
            "run_id": self.run_id,
            **self._totals(),
            "steps": self._last_sync_step,
            "global_step": self._last_sync_global_step,
            "resumes": self.resumes,
            "max_step_flops": self._max_step_flops,
        }

    def load_state(self, state: dict[str, Any], global_step: int) -> None:
        """Resume from a checkpoint taken at ``global_step``; count steps redone since then as consumed compute.

        The journal (written at every read-back next to the checkpoints) holds the totals as of the last read-back
        before the interruption; steps after the checkpoint up to then were computed and are counted. A checkpoint
        state or journal that is malformed, or a journal that counts less than the checkpoint, is not used: the
        count goes on from what can be trusted and the record says it is a lower bound.
        """
        try:
            checkpoint = self._read_totals(state)
            steps = _int(state.get("steps", global_step), "steps")
            run_id = state.get("run_id", self.run_id)
            resumes = state.get("resumes", [])
            if not isinstance(resumes, list) or not isinstance(run_id, str):
                raise MeterError("run_id must be a string and resumes a list")
            max_step = _int(state.get("max_step_flops", 0), "max_step_flops")
        except (MeterError, AttributeError, TypeError) as e:
            self._degrade(f"the checkpoint's meter state is unreadable ({e}): compute before step {global_step} "
                          "is not counted, the count is a lower bound")  # fmt: skip
            self.global_step = global_step
            return
        self.run_id, self.stream_stats, self.steps = run_id, checkpoint, steps
        self.global_step = global_step
        self.resumes = list(resumes)
        self._max_step_flops = max_step
        resume = {"from_step": global_step, "redone_steps": 0, "redone_regulatory_flops": 0, "redone_executed_flops": 0}
        journal = self._journal_after(global_step, checkpoint)
        if journal is not None:
            consumed, journal_step, journal_steps = journal
            before, after = self._count(checkpoint), self._count(consumed)
            resume.update(
                redone_steps=journal_step - global_step,
                redone_regulatory_flops=after.regulatory_flops - before.regulatory_flops,
                redone_executed_flops=after.executed_flops - before.executed_flops,
            )
            self.stream_stats, self.steps = consumed, journal_steps
        elif self.journal_path is not None and not self.journal_path.is_file():
            resume["note"] = "no journal found: steps redone after the checkpoint could not be counted"
        self.resumes.append(resume)
        self._broadcast_resume()
        self.count = self._count()
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

    def _journal_after(self, global_step: int, checkpoint: list[TokenStats]):
        """(stats, global_step, steps) of this run's journal when it is past the checkpoint and consistent with it."""
        journal = self._read_journal()
        if not journal or journal.get("run_id") != self.run_id:
            return None
        try:
            step = _int(journal.get("global_step"), "global_step")
            if step <= global_step:
                return None
            consumed = self._read_totals(journal)
            steps = _int(journal.get("steps"), "steps")
        except (MeterError, AttributeError, TypeError) as e:
            self._degrade(f"journal {self.journal_path} is malformed ({e}): steps redone after the checkpoint are "
                          "not counted, the count is a lower bound")  # fmt: skip
            return None
        if not all(_covers(c, k) for c, k in zip(consumed, checkpoint, strict=True)):
            self._degrade(f"journal {self.journal_path} counts less than the checkpoint it follows: ignored, steps "
                          "redone after the checkpoint are not counted, the count is a lower bound")  # fmt: skip
            return None
        return consumed, step, steps

    def _broadcast_resume(self) -> None:
        """Every rank must hold rank 0's totals, or budget decisions would differ and ranks would hang."""
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        box = [{**self._totals(), "steps": self.steps, "resumes": self.resumes}]
        dist.broadcast_object_list(box, src=0)
        self.stream_stats, self.steps, self.resumes = self._read_totals(box[0]), box[0]["steps"], box[0]["resumes"]

    def _read_journal(self) -> dict[str, Any] | None:
        if self.journal_path is None or not self.journal_path.is_file():
            return None
        try:
            doc = json.loads(self.journal_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self._degrade(f"journal {self.journal_path} unreadable: {e}")
            return None
        if not isinstance(doc, dict):
            self._degrade(f"journal {self.journal_path} is not a JSON object: ignored")
            return None
        return doc

    def _write_journal(self, final: bool = False) -> None:
        if self.journal_path is None:
            return
        doc = {
            "run_id": self.run_id,
            "global_step": self.global_step,
            "steps": self.steps,
            **self._totals(),
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
        from meter.runtime.hardware import identify

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
        from meter.runtime.hardware import peak_flops

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
        count = self.count or self._count(self.stream_stats or [TokenStats() for _ in self.streams])
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
                "regulatory_scope": self.regulatory_scope,
                "parts": self._parts_record(count),
                "confidence": "lower_bound" if self.degraded else "exact",
                "degraded": list(self.degraded),
                "uncounted_passes": self.uncounted_passes,
                "methodology": "architecture-based (Guidelines Annex A): forward and backward matrix products from "
                "the model config, over the real tokens of every pass; causal attention pairs; recomputation "
                "excluded. Forward-only passes (reference, generation with a KV cache, reward scoring) are counted "
                "forward only; the regulatory count sums the parts its scope includes (see parts). Executed count: "
                "padding, kernel attention and recomputation included, evaluation excluded.",
            },
            "watched_models": self.watched,
            "threshold": {
                "flops": t.flops,
                "rule": t.rule,
                "citation": t.citation,
                "original_flops": t.original_flops,
                "original": self.pretrain_source.to_dict(),
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

    def _parts_record(self, count: RunCount) -> dict[str, Any]:
        """Each part of the run that saw passes: tokens, both counts, whether the regulatory count includes it."""
        rules, stats = policy(self.regulatory_scope), count.statistics
        return {
            part: {
                **rules[part],
                "tokens": stats[part].tokens,
                "passes": stats[part].passes,
                "statistics": stats[part].to_dict(),
                "regulatory_flops": c.regulatory_flops,
                "executed_flops": c.executed_flops,
                "regulatory": c.regulatory.__dict__,
                "executed": c.executed.__dict__,
            }
            for part, c in count.parts.items()
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


def write_not_counted(path: Path, reason: str) -> dict[str, Any]:
    """The record of a run the meter could not count: no figures, and why. Classification refuses it."""
    record = {
        "record_type": "flops_meter.run",
        "record_version": 1,
        "run_id": uuid.uuid4().hex,
        "status": "not_counted",
        "reason": reason,
        "flops": {"regulatory": None, "executed": None, "confidence": "none"},
        "software": _software(),
        "sagemaker": _sagemaker_env(),
        "disclaimer": NOT_LEGAL_ADVICE,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
    except OSError as e:
        log.warning("flops_meter: could not write %s: %s", path, e)
    return record


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
