"""The run record (flops_meter.json): assembled from a meter's state by pure functions, written atomically.

``run_record`` lays out every section in one place, so the record's structure reads top to bottom; the meter
(meter.runtime.meter) decides when to assemble and write it. ``write_not_counted`` is the record of a run the meter
could not count at all.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from meter.engine.count import CostModel, TrainingSetup, target_names
from meter.engine.tokens import TokenStats
from meter.jsonfile import write_atomic
from meter.policy.parts import policy
from meter.policy.thresholds import NOT_LEGAL_ADVICE, two_significant
from meter.runtime.attribution import RunCount
from meter.runtime.log import log
from meter.timestamps import utc_timestamp

if TYPE_CHECKING:
    from meter.policy.original import OriginalCompute
    from meter.policy.thresholds import Threshold
    from meter.runtime.introspect import ObservedSetup

METHODOLOGY = (
    "architecture-based (Guidelines Annex A): forward and backward matrix products from "
    "the model config, over the real tokens of every pass; causal attention pairs; recomputation "
    "excluded. Forward-only passes (reference, generation with a KV cache, reward scoring) are counted "
    "forward only; the regulatory count sums the parts its scope includes (see parts). Executed count: "
    "padding, kernel attention and recomputation included, evaluation excluded."
)


class RunState(Protocol):
    """What the record reads off a meter (``FlopsMeter`` is one)."""

    run_id: str
    status: str
    stop_reason: str | None
    model_info: dict[str, Any]
    regulatory_scope: str
    degraded: list[str]
    uncounted_passes: int
    watched: list[dict[str, Any]]
    threshold: Threshold
    pretrain_source: OriginalCompute
    forecast: dict[str, Any] | None
    stop_at_fraction: float | None
    steps: int
    global_step: int
    resumes: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    notes: list[str]

    @property
    def setup(self) -> TrainingSetup: ...

    @property
    def stats(self) -> TokenStats: ...

    @property
    def budget(self) -> float | None: ...


def run_record(
    run: RunState,
    count: RunCount,
    *,
    energy: dict[str, Any],
    hardware: dict[str, Any],
    started: float | None,
    ended: float | None,
    seconds: float,
    sagemaker: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run record: what was counted, against which threshold, on what hardware, with what energy."""
    t = run.threshold
    setup = run.setup
    kwh = energy.get("energy_kwh")
    return {
        "record_type": "flops_meter.run",
        "record_version": 1,
        "run_id": run.run_id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "model": run.model_info,
        "method": {
            "setup": setup.describe(),
            "method": setup.method,
            "lora_r": setup.lora_r if setup.uses_lora else None,
            "lora_targets": target_names(setup.lora_targets) if setup.uses_lora else None,
            "gradient_checkpointing": setup.gradient_checkpointing,
            "attn_implementation": setup.attn_implementation,
        },
        "tokens": run.stats.to_dict(),
        "flops": {
            "regulatory": count.regulatory_flops,
            "executed": count.executed_flops,
            "regulatory_parts": count.regulatory.__dict__,
            "executed_parts": count.executed.__dict__,
            "regulatory_2sf": two_significant(count.regulatory_flops),
            "per_token": count.flops_per_token,
            "regulatory_scope": run.regulatory_scope,
            "parts": parts_record(count, run.regulatory_scope),
            "confidence": "lower_bound" if run.degraded else "exact",
            "degraded": list(run.degraded),
            "uncounted_passes": run.uncounted_passes,
            "methodology": METHODOLOGY,
        },
        "watched_models": run.watched,
        "threshold": {
            "flops": t.flops,
            "rule": t.rule,
            "citation": t.citation,
            "original_flops": t.original_flops,
            "original": run.pretrain_source.to_dict(),
            "fraction": count.regulatory_flops / t.flops,
            "crossed_by_this_run": t.crossed_by(count.regulatory_flops),
            "notes": list(t.notes),
        },
        "forecast": run.forecast,
        "budget": {"budget_flops": run.budget, "stop_at_fraction": run.stop_at_fraction},
        "steps": {
            "optimizer_steps": run.steps,
            "last_global_step": run.global_step,
            "micro_batches": run.stats.passes,
            "resumes": run.resumes,
            "redone_steps": sum(r.get("redone_steps", 0) for r in run.resumes),
        },
        "hardware": hardware,
        "energy": {**energy, "energy_kwh_2sf": None if kwh is None else f"{kwh:.2g} kWh"},
        "time": {
            "started": None if started is None else utc_timestamp(started),
            "ended": None if ended is None else utc_timestamp(ended),
            "wall_seconds": seconds,
        },
        "timeline": run.timeline,
        "software": software(),
        "sagemaker": sagemaker,
        "notes": run.notes,
        "disclaimer": NOT_LEGAL_ADVICE,
    }


def parts_record(count: RunCount, scope: str) -> dict[str, Any]:
    """Each part of the run that saw passes: tokens, both counts, whether the regulatory count includes it."""
    rules, stats = policy(scope), count.statistics
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


def model_info(observed: ObservedSetup, cost: Any, *, name: str, trainable: int) -> dict[str, Any]:
    """The record's model section: what the engine read off the config (or the generic path measured)."""
    spec = getattr(cost, "spec", None)
    config = observed.config
    return {
        "name": name,
        "model_type": config.get("model_type"),
        "parameters": spec.parameter_count() if spec is not None else cost.parameters,
        "trainable_parameters": trainable,
        "trainable_parameters_reported": observed.trainable_numel,
        "quantized": observed.quantized,
        "layers": spec.num_layers if spec is not None else config.get("num_hidden_layers"),
        "hidden_size": spec.hidden_size if spec is not None else config.get("hidden_size"),
        "vocab_size": spec.vocab_size if spec is not None else config.get("vocab_size"),
        "moe": None if spec is None or spec.moe is None else {"experts": spec.moe.num_experts, "top_k": spec.moe.top_k},
        "counted_by": "analytic engine" if spec is not None else "measured on the meta device (generic path)",
    }


def watched_model(role: str, name: str, observed: ObservedSetup, cost: Any, stream: str) -> dict[str, Any]:
    """One entry of the record's watched_models: a separate model of the run (reference, reward)."""
    parameters = cost.spec.parameter_count() if isinstance(cost, CostModel) else cost.parameters
    return {"role": role, "name": name, "model_type": observed.config.get("model_type"), "parameters": parameters,
            "stream": stream}  # fmt: skip


def write_json(path: Path, doc: dict[str, Any]) -> OSError | None:
    """Atomic write (meter.jsonfile.write_atomic): a reader never sees half a record; a device or pipe given as the
    path (/dev/null, /dev/stdout) is written to, never renamed over. Returns the failure, never raises it."""
    text = json.dumps(doc, indent=2, default=str)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    except OSError as e:
        return e
    return None


def write_not_counted(path: Path, reason: str) -> dict[str, Any]:
    """The record of a run the meter could not count: no figures, and why. Classification refuses it."""
    record = {
        "record_type": "flops_meter.run",
        "record_version": 1,
        "run_id": uuid.uuid4().hex,
        "status": "not_counted",
        "reason": reason,
        "flops": {"regulatory": None, "executed": None, "confidence": "none"},
        "software": software(),
        "sagemaker": sagemaker_env(),
        "disclaimer": NOT_LEGAL_ADVICE,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2))  # a reader sees no record or all of it
    except OSError as e:
        log.warning("flops_meter: could not write %s: %s", path, e)
    return record


def software() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("flops-meter", "torch", "transformers", "peft", "trl", "accelerate", "deepspeed"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def sagemaker_env() -> dict[str, Any] | None:
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
