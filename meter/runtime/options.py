"""A meter's options, what they resolve to and what the environment says: file names, the checks run before
training, the original's compute and the threshold, the rank.

Options are checked where the meter is configured (``FlopsMeter(...)``, the callback, the recipe flag), so a bad one
is a MeterError before any training starts, never a failure inside the job.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from meter.booleans import parse_bool
from meter.errors import MeterError
from meter.policy.parts import DEFAULT_SCOPE, check_scope
from meter.policy.thresholds import Threshold, check_flops, threshold_for
from meter.runtime.log import log

if TYPE_CHECKING:
    from meter.policy.original import OriginalCompute

RECORD_NAME = "flops_meter.json"
JOURNAL_NAME = "flops_meter.journal.json"
NVML_ENV = "FLOPS_METER_NVML"


def default_output_path() -> Path:
    """FLOPS_METER_OUT, else SageMaker's output data dir (SM_OUTPUT_DATA_DIR), else ./flops_meter.json."""
    if os.environ.get("FLOPS_METER_OUT"):
        return Path(os.environ["FLOPS_METER_OUT"])
    if os.environ.get("SM_OUTPUT_DATA_DIR"):
        return Path(os.environ["SM_OUTPUT_DATA_DIR"]) / RECORD_NAME
    return Path(RECORD_NAME)


def nvml_option(nvml: bool | None, *, fallback: bool = False) -> bool:
    """Whether the meter samples the GPUs' energy with NVML: ``nvml``, else FLOPS_METER_NVML (on when unset).

    A word that is not a boolean is a MeterError naming the variable where options are checked; with ``fallback``
    (once training runs, where the meter must not fail) it is the default instead, said in one log line."""
    if nvml is not None:
        return nvml
    try:
        return parse_bool(os.environ.get(NVML_ENV), default=True, what=NVML_ENV)
    except MeterError as e:
        if not fallback:
            raise
        log.warning("flops_meter: %s; NVML sampling stays on (the default)", e)
        return True


def pretrain_flops_option(pretrain_flops: float | None) -> float | None:
    """The original's training compute: the argument, else PRETRAIN_FLOPS; MeterError when it is not a count."""
    env_pretrain = os.environ.get("PRETRAIN_FLOPS", "").strip()
    if pretrain_flops is None and env_pretrain:
        return check_flops(env_pretrain, "PRETRAIN_FLOPS")
    if pretrain_flops is not None:
        return check_flops(pretrain_flops, "pretrain_flops")
    return None


def run_threshold(
    name: str, pretrain_flops: float | None, *, systemic_risk: bool
) -> tuple[Threshold, OriginalCompute, str | None]:
    """The threshold of a run on the original ``name``, the original's compute it rests on, and a note when the
    original is not in the table of published facts (the fallback threshold applies then)."""
    from meter.policy.original import resolve_original

    original = resolve_original(name, pretrain_flops, systemic_risk=systemic_risk or None, label="pretrain_flops")
    note = None
    if original.flops is None:
        # a local path (as on SageMaker) is not a model id: say so, the fallback may be above the true third
        note = (
            f"the original model '{name}' is not in the table of published facts: the fallback threshold "
            "applies. If its training compute is known or can be estimated (Guidelines Annex A.2), give it "
            "(pretrain_flops or PRETRAIN_FLOPS): one third of a known compute can be lower than the fallback "
            "(Llama-2-7B: 2.8e22 < 3.3e22)"
        )
    return threshold_for(original.flops, original_systemic_risk=original.is_systemic_risk), original, note


def rank() -> tuple[int, int, int]:
    """(global rank, local rank, world size) from torch.distributed or the launcher's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def check_options(
    *,
    log_every: int = 10,
    stop_at_fraction: float | None = None,
    pretrain_flops: float | None = None,
    budget_flops: float | None = None,
    regulatory_scope: str = DEFAULT_SCOPE,
    nvml: bool | None = None,
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
    nvml_option(nvml)  # FLOPS_METER_NVML, when nvml is not given
