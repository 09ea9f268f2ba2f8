"""`FlopsMeterCallback`: the meter inside Hugging Face `Trainer` (and TRL's `SFTTrainer`), no arguments needed.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[FlopsMeterCallback()])

At ``on_train_begin`` it reads the model (plain, PEFT, 4-bit) and its config, detects the training method and
installs a forward pre-hook that counts every training micro-batch on its device. It reads the counts back every
``log_every`` steps and whenever the Trainer logs, saves or stops (all ranks alike, so collectives stay matched),
adds them to ``state.log_history``, prints ``flops_meter: cumulative_flops=<n>`` lines for SageMaker metric
definitions, keeps its totals in every checkpoint (``stateful_callbacks``) and a journal next to them, and writes
the run record at ``on_train_end``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from meter.runtime import JOURNAL_NAME, FlopsMeter


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
    ):
        self.output_path = output_path
        self.pretrain_flops = pretrain_flops
        self.budget_flops = budget_flops
        self.stop_at_fraction = stop_at_fraction
        self.log_every = log_every
        self.nvml = nvml
        self.original_systemic_risk = original_systemic_risk
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
            },
            "attributes": {"_state": self._state},
        }

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.meter = FlopsMeter(
            model,
            output_path=self.output_path,
            journal_path=Path(args.output_dir) / JOURNAL_NAME,
            pretrain_flops=self.pretrain_flops,
            original_systemic_risk=self.original_systemic_risk,
            budget_flops=self.budget_flops,
            stop_at_fraction=self.stop_at_fraction,
            log_every=self.log_every,
            nvml=self.nvml,
            precision=_precision(args),
            max_steps=state.max_steps,
        )
        if state.global_step > 0:
            saved = _saved_state(state)
            if saved is not None:
                self.meter.load_state(saved, state.global_step)
            else:
                self.meter.notes.append(
                    f"resumed at step {state.global_step} from a checkpoint without meter state: "
                    "compute before the checkpoint is not included"
                )
        self.meter.start()

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

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.meter is None or self.meter.count is None or not state.log_history:
            return
        state.log_history[-1].update(
            {
                "flops_meter/regulatory_flops": self.meter.regulatory_flops,
                "flops_meter/executed_flops": self.meter.executed_flops,
                "flops_meter/tokens": self.meter.stats.tokens,
            }
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.meter is None:
            return
        self.record = self.meter.stop()
        self._state = self.meter.state_snapshot()


def _saved_state(state) -> dict[str, Any] | None:
    saved = (state.stateful_callbacks or {}).get(FlopsMeterCallback.__name__)
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    if not saved:
        return None
    return (saved.get("attributes") or {}).get("_state")


def _precision(args) -> str | None:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "tf32", False):
        return "tf32"
    return None
