"""`FlopsMeterCallback`: the meter inside Hugging Face `Trainer` and TRL's trainers, no arguments needed.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[FlopsMeterCallback()])

At ``on_train_begin`` it reads the model (plain, PEFT, 4-bit) and its config, detects the training method and installs
forward hooks that attribute every forward pass to a part of the run (training step, generation, reference pass,
forward-only pass, evaluation: see meter.policy.parts) and count it on its device. The trainer's separate models — TRL's
``ref_model`` and ``reward_funcs`` that are modules — are found on the trainer and counted in their parts. It reads the
counts back every ``log_every`` steps and whenever the Trainer logs, saves or stops (all ranks alike, so collectives
stay matched), adds them to the ``logs`` the reporting integrations receive (W&B, MLflow, TensorBoard, the console) and
to ``state.log_history``, prints ``flops_meter: cumulative_flops=<n>`` lines for SageMaker metric definitions, keeps its
totals in every checkpoint (``stateful_callbacks``) and a journal next to them, and writes the run record at
``on_train_end``.

It never breaks the job it measures: every event is guarded. A failure degrades the count (the record says
``confidence: lower_bound`` and why, in one log line) or, if the model cannot be read at all, writes a record with
status ``not_counted`` that the pipeline refuses to classify.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from meter.policy.parts import DEFAULT_SCOPE
from meter.runtime.meter import FlopsMeter
from meter.runtime.options import JOURNAL_NAME, check_options, default_output_path, nvml_option
from meter.runtime.record import write_not_counted

log = logging.getLogger("flops_meter")
LOG_KEYS = ("flops_meter/regulatory_flops", "flops_meter/executed_flops", "flops_meter/tokens")


def _guarded(event):
    """No exception from the meter reaches the Trainer: it is logged once and recorded."""

    @functools.wraps(event)
    def wrapper(self, args, state, control, **kwargs):
        try:
            return event(self, args, state, control, **kwargs)
        except Exception as e:
            self._failed(event.__name__, e)
            return None

    return wrapper


class FlopsMeterCallback(TrainerCallback, ExportableState):
    def __init__(
        self,
        output_path: str | None = None,
        pretrain_flops: float | None = None,
        budget_flops: float | None = None,
        stop_at_fraction: float | None = None,
        log_every: int = 10,
        nvml: bool | None = None,
        original_systemic_risk: bool = False,
        regulatory_scope: str = DEFAULT_SCOPE,
        watch_trainer_models: bool = True,
    ):
        """``regulatory_scope``: "conservative" (default: training, generation, reference and reward passes) or
        "updates_only" (training steps alone); see meter.policy.parts. ``watch_trainer_models``: count the trainer's
        reference and reward models too."""
        check_options(
            log_every=log_every,
            stop_at_fraction=stop_at_fraction,
            pretrain_flops=pretrain_flops,
            budget_flops=budget_flops,
            regulatory_scope=regulatory_scope,
            nvml=nvml,
        )
        self.output_path = output_path
        self.pretrain_flops = pretrain_flops
        self.budget_flops = budget_flops
        self.stop_at_fraction = stop_at_fraction
        self.log_every = log_every
        self.nvml = nvml
        self.original_systemic_risk = original_systemic_risk
        self.regulatory_scope = regulatory_scope
        self.watch_trainer_models = watch_trainer_models
        self.meter: FlopsMeter | None = None
        self._state: dict[str, Any] | None = None
        self.record: dict[str, Any] | None = None

    # ExportableState: what goes into each checkpoint's trainer_state.json
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "output_path": self.output_path,
                "pretrain_flops": self.pretrain_flops,
                "budget_flops": self.budget_flops,
                "stop_at_fraction": self.stop_at_fraction,
                "log_every": self.log_every,
                "nvml": self.nvml,
                "original_systemic_risk": self.original_systemic_risk,
                "regulatory_scope": self.regulatory_scope,
            },
            "attributes": {"_state": self._state},
        }

    @_guarded
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.meter = meter = FlopsMeter(
            model,
            output_path=self.output_path,
            journal_path=Path(args.output_dir) / JOURNAL_NAME,
            pretrain_flops=self.pretrain_flops,
            original_systemic_risk=self.original_systemic_risk,
            budget_flops=self.budget_flops,
            stop_at_fraction=self.stop_at_fraction,
            log_every=self.log_every,
            nvml=nvml_option(self.nvml, fallback=True),  # checked above; training runs now: never fail on it
            precision=_precision(args),
            max_steps=state.max_steps,
            regulatory_scope=self.regulatory_scope,
        )
        trainer = _find_trainer()
        if trainer is not None:
            _report_first(trainer, self)
            if self.watch_trainer_models:
                for role, other in _separate_models(trainer, model):
                    try:
                        meter.watch(other, role)
                    except Exception as e:  # the policy is still counted; this model's passes are not
                        meter._degrade(f"the {role} model is not counted ({type(e).__name__}: {e}): the count is a "
                                       "lower bound")  # fmt: skip
        if state.global_step > 0:
            saved = _saved_state(state)
            if saved is not None:
                meter.load_state(saved, state.global_step)
            else:
                meter._degrade(
                    f"resumed at step {state.global_step} from a checkpoint without meter state: "
                    "compute before the checkpoint is not included, the count is a lower bound"
                )
        meter.start()

    @_guarded
    def on_step_end(self, args, state, control, **kwargs):
        meter = self.meter
        if meter is None:
            return None
        synced = meter.step(state.global_step)
        must_sync = control.should_save or control.should_log or control.should_training_stop
        if not synced and (must_sync or state.global_step >= state.max_steps):
            meter.sync()
        if meter.should_stop():
            control.should_training_stop = True
            control.should_save = True
        self._state = meter.state_snapshot()
        return control

    @_guarded
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.meter is None or self.meter.count is None:
            return
        values = dict(zip(LOG_KEYS, (self.meter.regulatory_flops, self.meter.executed_flops, self.meter.stats.tokens),
                          strict=True))  # fmt: skip
        if logs is not None:  # the dict the reporting integrations after this callback receive
            logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    @_guarded
    def on_train_end(self, args, state, control, **kwargs):
        if self.meter is None:
            return
        self.record = self.meter.stop()
        self._state = self.meter.state_snapshot()

    def _failed(self, event: str, error: Exception) -> None:
        meter = self.meter
        reason = f"{event} failed: {type(error).__name__}: {error}"
        if meter is not None and meter.counter is not None:  # running: keep counting what can be counted
            meter._degrade(f"{reason}; the count is a lower bound")
            if event == "on_train_end":
                self.record = meter.stop("failed")
            return
        # the model could not be read or the meter not started: nothing is counted, and the record says so
        if meter is not None:
            meter.remove_hooks()
        self.meter = None
        log.warning("flops_meter: the run is NOT counted: %s", reason)
        if event == "on_train_begin":
            self.record = write_not_counted(Path(self.output_path) if self.output_path else default_output_path(),
                                            reason)  # fmt: skip


def _find_trainer():
    """The Trainer running this callback, from the call stack (Trainer -> CallbackHandler -> callback)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def _report_first(trainer, callback) -> None:
    """Run right after the Trainer's flow control, before the reporting integrations and the progress printer, so
    that the metrics added in on_log reach W&B, MLflow, TensorBoard and the console (a new list: the handler may be
    iterating over the old one)."""
    from transformers.trainer_callback import DefaultFlowCallback

    handler = getattr(trainer, "callback_handler", None)
    callbacks = list(getattr(handler, "callbacks", []) or [])
    if callback not in callbacks:
        return
    others = [c for c in callbacks if c is not callback]
    flow = [i for i, c in enumerate(others) if isinstance(c, DefaultFlowCallback)]
    at = flow[-1] + 1 if flow else 0
    handler.callbacks = [*others[:at], callback, *others[at:]]


def _separate_models(trainer, policy) -> list[tuple[str, Any]]:
    """TRL's conventions: ``ref_model`` (DPO, KTO, GRPO, RLOO …) and module ``reward_funcs`` / ``reward_model``."""
    import torch

    from meter.runtime.introspect import unwrap

    found: list[tuple[str, Any]] = []
    seen = {id(unwrap(policy))}
    candidates = [("reference", getattr(trainer, "ref_model", None))]
    candidates += [("reward", getattr(trainer, "reward_model", None))]
    candidates += [("reward", f) for f in (getattr(trainer, "reward_funcs", None) or [])]
    for role, model in candidates:
        if isinstance(model, torch.nn.Module) and id(unwrap(model)) not in seen:
            seen.add(id(unwrap(model)))
            found.append((role, model))
    return found


def _saved_state(state) -> dict[str, Any] | None:
    saved = (state.stateful_callbacks or {}).get(FlopsMeterCallback.__name__)
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    if not saved or not isinstance(saved, dict):
        return None
    attributes = saved.get("attributes") or {}
    return attributes.get("_state") if isinstance(attributes, dict) else None


def _precision(args) -> str | None:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "tf32", False):
        return "tf32"
    return None
