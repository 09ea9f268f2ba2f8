"""The models of a run read into streams: each model's cost model, and the parts it is counted in.

A stream (meter.runtime.attribution) is one model counted in one part. The policy is counted in its training steps
(forward + backward) and its forward-only passes with its adapters on; with adapters, a reference pass with them
disabled runs the bare base model. A separate model (reference, reward) is counted in its role's part, or as
evaluation while the policy is in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meter.engine.count import CostModel, TrainingSetup
from meter.engine.spec import spec_from_config
from meter.errors import UnknownArchitecture
from meter.policy.parts import ROLES
from meter.runtime.attribution import Stream
from meter.runtime.record import model_info, watched_model

if TYPE_CHECKING:
    from meter.runtime.introspect import ObservedSetup

Note = Callable[[str], None]


@dataclass(frozen=True)
class Policy:
    """The policy as the meter reads it off the model."""

    name: str
    streams: list[Stream]  # training first
    model_info: dict[str, Any]  # the record's model section
    notes: list[str]  # where the model and the engine disagree, and what the model's reading found
    pad_token_id: int | None
    adapter: Any  # the PEFT adapter, if any


def read_policy(model: Any, *, note: Note) -> Policy:
    """Read the policy's config and training setup into its streams; ``note`` is told what is said at once."""
    from meter.runtime.introspect import observe_model

    observed = observe_model(model)
    name = model_name(observed)
    streams = policy_streams(observed, name, model, note=note)
    engine_trainable = streams[0].cost.trainable_parameters()
    pad = observed.config.get("pad_token_id")
    return Policy(
        name=name,
        streams=streams,
        model_info=model_info(observed, streams[0].cost, name=name, trainable=engine_trainable),
        notes=[*trainable_note(observed, engine_trainable), *observed.notes],
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else None,
        adapter=observed.adapter,
    )


def read_watched(model: Any, role: str, label: str, *, note: Note) -> tuple[list[Stream], dict[str, Any]]:
    """A separate model's streams (its role's part, then evaluation) and its entry in the record's watched_models."""
    from meter.runtime.introspect import observe_model

    observed = observe_model(model)
    name = model_name(observed)
    cost = cost_model(observed, name, model, note=note)
    streams = [Stream(f"{label}/{ROLES[role]}", ROLES[role], cost), Stream(f"{label}/evaluation", "evaluation", cost)]
    return streams, watched_model(role, name, observed, cost, label)


def model_name(observed: ObservedSetup) -> str:
    return str(observed.config.get("_name_or_path") or observed.config.get("model_type"))


def cost_model(observed: ObservedSetup, name: str, model: Any, *, note: Note, bare: bool = False) -> Any:
    """The analytic engine for the families it knows; else the generic path (meter.engine.measure), told ``note``."""
    setup = TrainingSetup(attn_implementation=observed.setup.attn_implementation) if bare else observed.setup
    try:
        spec = spec_from_config(observed.config, name=name)
    except UnknownArchitecture:
        from meter.engine.measure import MeasuredCostModel

        cost = MeasuredCostModel(observed.config, setup, name=name, model=model, bare=bare)
        note(
            f"model_type '{observed.config.get('model_type')}' is outside the analytic engine: its rates were "
            "measured with FlopCounterMode on a meta-device copy prepared as it trains ("
            "sliding windows and attention chunks credited, MoE experts as routed, executed attention counted as eager)"
        )
        return cost
    return CostModel(spec, setup, trainable=None if bare else observed.trainable)


def policy_streams(observed: ObservedSetup, name: str, model: Any, *, note: Note) -> list[Stream]:
    """The policy's streams, training first: training steps, forward-only passes, reference passes if adapters."""
    cost = cost_model(observed, name, model, note=note)
    streams = [Stream("policy/training", "training", cost, backward=True)]
    streams += [Stream(f"policy/{p}", p, cost) for p in ("generation", "policy_forward", "evaluation")]
    if observed.adapter is not None:  # reference passes with the adapters disabled run the bare base model
        bare = cost_model(observed, name, model, note=note, bare=True)
        streams.append(Stream("policy/reference_forward", "reference_forward", bare))
    return streams


def trainable_note(observed: ObservedSetup, engine_trainable: int) -> list[str]:
    """A note when the model reports another number of trainable parameters than the engine counts (none else)."""
    reported = observed.trainable_numel
    if observed.quantized or not reported or reported == engine_trainable:
        return []
    return [
        f"trainable parameters: engine {engine_trainable:,}, model reports {reported:,} "
        "(sharded or packed parameters report less; the engine reads the config)"
    ]
