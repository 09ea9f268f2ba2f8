"""The single flag: a training recipe with ``compute_flops: true`` switches the meter on.

    callback = from_recipe("recipe.yaml")          # FlopsMeterCallback, or None when compute_flops is off
    trainer = Trainer(..., callbacks=[c for c in [callback] if c])

Meter options may sit under a ``flops_meter:`` mapping (output_path, pretrain_flops, budget_flops,
stop_at_fraction, log_every, nvml, original_systemic_risk, regulatory_scope). The environment variables of the
AWS sample keep their meaning: PRETRAIN_FLOPS, FLOPS_METER_OUT (record path), FLOPS_METER_NVML (0 turns NVML
sampling off).
A malformed recipe is an error before training starts — running unmetered by accident would lose the record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meter.errors import MeterError

log = logging.getLogger("flops_meter")

OPTIONS = (
    "output_path",
    "pretrain_flops",
    "budget_flops",
    "stop_at_fraction",
    "log_every",
    "nvml",
    "original_systemic_risk",
    "regulatory_scope",
)


def load_recipe(recipe: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(recipe, Mapping):
        return dict(recipe)
    import yaml

    path = Path(recipe)
    if not path.is_file():
        raise MeterError(f"recipe file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MeterError(f"recipe {path} is not valid YAML{where}: fix the syntax") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise MeterError(f"recipe {path} must be a YAML mapping of settings, got a {type(doc).__name__}")
    return doc


def meter_options(recipe: Mapping[str, Any]) -> dict[str, Any] | None:
    """The FlopsMeterCallback options of a recipe, or None when compute_flops is absent or false."""
    flag = recipe.get("compute_flops")
    if flag is None or flag is False:
        return None
    if flag is not True:
        raise MeterError(f"recipe compute_flops must be true or false, got {flag!r}")
    section = recipe.get("flops_meter") or {}
    if not isinstance(section, Mapping):
        raise MeterError("recipe flops_meter: must be a mapping of meter options")
    unknown = sorted(set(section) - set(OPTIONS))
    if unknown:
        raise MeterError(f"unknown flops_meter option(s) {', '.join(unknown)}: use {', '.join(OPTIONS)}")
    options = {k: section[k] for k in OPTIONS if k in section}
    for key in ("pretrain_flops", "budget_flops"):  # YAML reads 1e23 as a string
        if isinstance(options.get(key), str):
            from meter.policy.thresholds import check_flops

            options[key] = check_flops(options[key], f"flops_meter.{key}")
    return options


def from_recipe(recipe: str | os.PathLike | Mapping[str, Any]):
    """A FlopsMeterCallback when the recipe says ``compute_flops: true``, else None."""
    options = meter_options(load_recipe(recipe))
    if options is None:
        log.info("flops_meter: compute_flops is not set in the recipe: the meter is off")
        return None
    from meter.runtime.callback import FlopsMeterCallback

    return FlopsMeterCallback(**options)
