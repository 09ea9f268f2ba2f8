"""Rates the generic path measured once, shipped for the bundled configs outside the analytic engine.

Measuring a config on the meta device (meter.engine.measure) takes a second or so and needs torch and
transformers; the bundled configs are known in advance, so their rates for the setups a config-only estimate
starts from (full fine-tuning and LoRA on all linear layers, each with and without gradient checkpointing) are
measured when the package is built and kept in ``meter/data/measured_rates.json``. A config-only estimate of a
bundled model then reads them (a few milliseconds, no torch). A test measures every entry again and requires the
same numbers, so the file cannot drift from what the generic path measures with the installed transformers.

Entries are keyed by the SHA-256 of the canonical JSON of the config (its architecture keys, not the ``_``
metadata) and of the setup fields the measurement depends on: an edited config or another setup is measured.

Refresh with ``python -m meter.engine.measured_rates`` after changing the generic path or a bundled config.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from meter.engine.count import PassFlops, Rates, TrainingSetup

FORMAT = 2  # 2: per-row rates
_FILE = "measured_rates.json"


def _path() -> Path:
    from meter.engine.catalog import data_dir

    return data_dir() / _FILE


def setups() -> dict[str, TrainingSetup]:
    """The setups measured for each bundled config: what ``estimate`` builds for --method full/lora by default."""
    return {
        "full": TrainingSetup(),
        "full, checkpointing": TrainingSetup(gradient_checkpointing=True),
        "lora": TrainingSetup(method="lora"),
        "lora, checkpointing": TrainingSetup(method="lora", gradient_checkpointing=True),
    }


def key(config: dict[str, Any], setup: TrainingSetup) -> str:
    """The entry's key: the architecture (config without ``_`` metadata) and what the measurement depends on."""
    targets = setup.lora_targets
    what = {
        "format": FORMAT,
        "config": {k: v for k, v in config.items() if not k.startswith("_")},
        "setup": {
            "method": setup.method,
            "lora_r": setup.lora_r if setup.uses_lora else None,
            "lora_targets": (targets if isinstance(targets, str) or targets is None else list(targets))
            if setup.uses_lora
            else None,
            "dora": setup.dora,
            "trainable": list(setup.trainable),
            "gradient_checkpointing": setup.gradient_checkpointing,
            "reentrant": setup.reentrant_checkpointing if setup.gradient_checkpointing else None,
        },
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@cache
def _entries() -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return doc.get("entries", {}) if doc.get("format") == FORMAT else {}


def lookup(config: dict[str, Any], setup: TrainingSetup) -> dict[str, Any] | None:
    """The shipped measurement of ``config`` under ``setup``, or None."""
    return _entries().get(key(config, setup))


def cost_model(config: dict[str, Any], setup: TrainingSetup, *, name: str = ""):
    """The generic path's cost model of ``config`` under ``setup``: the shipped rates where there are some (no
    torch needed), else measured now (meter.engine.measure)."""
    from meter.engine.measure import MeasuredCostModel
    from meter.engine.spec import refuse_multimodal

    refuse_multimodal(config)
    entry = lookup(config, setup)
    if entry is None:
        return MeasuredCostModel(config, setup, name=name)
    return MeasuredCostModel.of_rates(
        setup,
        name or str(config.get("_name_or_path") or config.get("model_type")),
        windows=entry["windows"],
        parameters=entry["parameters"],
        trainable=entry["trainable"],
        executed=rates(entry, "executed"),
        regulatory=rates(entry, "regulatory"),
        source=f"when the package was built (meter/data/{_FILE})",
    )


def to_entry(model) -> dict[str, Any]:
    """What a MeasuredCostModel measured, as JSON."""
    return {
        "windows": sorted(model.windows),
        "parameters": model.parameters,
        "trainable": model.trainable,
        "executed": _rates_json(model.executed),
        "regulatory": _rates_json(model.regulatory),
    }


def rates(entry: dict[str, Any], which: str) -> Rates:
    doc = entry[which]
    return Rates(
        per_token=PassFlops(*doc["per_token"]),
        per_pair={(None if w == "causal" else int(w)): PassFlops(*f) for w, f in doc["per_pair"].items()},
        per_pass=PassFlops(*doc["per_pass"]),
        per_head=PassFlops(*doc["per_head"]),
        per_row=PassFlops(*doc["per_row"]),
    )


def _rates_json(r: Rates) -> dict[str, Any]:
    def flops(p: PassFlops) -> list[int]:
        return [p.forward, p.backward, p.recompute]

    return {
        "per_token": flops(r.per_token),
        "per_pair": {("causal" if w is None else str(w)): flops(f) for w, f in r.per_pair.items()},
        "per_pass": flops(r.per_pass),
        "per_head": flops(r.per_head),
        "per_row": flops(r.per_row),
    }


def outside_engine() -> list[tuple[str, dict[str, Any]]]:
    """(model id, config) of every bundled config the analytic engine cannot read and ``estimate`` does not refuse
    (multimodal): the ones the generic path counts, which must have shipped rates."""
    from meter.engine.catalog import bundled_configs
    from meter.engine.spec import refuse_multimodal, spec_from_config
    from meter.errors import MeterError, UnknownArchitecture

    found = []
    for path in sorted(set(bundled_configs().values())):
        config = json.loads(path.read_text(encoding="utf-8"))
        try:
            refuse_multimodal(config)
            spec_from_config(config)
        except UnknownArchitecture:
            found.append((path.stem.replace("--", "/"), config))
        except MeterError:
            pass  # multimodal: estimate refuses it
    return found


def refresh() -> Path:
    """Measure every bundled config outside the analytic engine under every setup, and write the file."""
    import time

    import transformers

    from meter.engine.measure import MeasuredCostModel

    entries: dict[str, Any] = {}
    models = []
    for name, config in outside_engine():
        for label, setup in setups().items():
            t0 = time.perf_counter()
            entry_key = key(config, setup)
            if entry_key in entries:  # the same architecture under another name (DeepSeek-R1 is DeepSeek-V3's)
                entries[entry_key]["models"].append(name)
                continue
            measured = MeasuredCostModel(config, setup, name=name)
            entries[entry_key] = {"models": [name], "setup": label, **to_entry(measured)}
            print(f"{name:48} {label:22} {time.perf_counter() - t0:5.2f} s", flush=True)
        models.append(name)
    doc = {"format": FORMAT, "transformers": transformers.__version__, "models": models, "entries": entries}
    out = _path()
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _entries.cache_clear()
    return out


if __name__ == "__main__":
    print(f"wrote {refresh()}")
