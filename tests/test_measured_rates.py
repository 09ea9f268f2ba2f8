"""The rates shipped for bundled configs outside the analytic engine (meter/data/measured_rates.json).

They are a memo of the generic path, so the truth they answer to is the generic path itself, which the family
tests check against FlopCounterMode on real modules: every entry must be what the generic path measures now, with
the installed transformers, and every bundled config the engine cannot read must have its entries.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meter.engine import measured_rates
from meter.engine.catalog import resolve_model
from meter.engine.measure import MeasuredCostModel
from meter.engine.tokens import TokenStats


def _outside_engine() -> list[str]:
    return [name for name, _ in measured_rates.outside_engine()]


def _entries() -> list[tuple[str, str]]:
    return [(model, label) for model in _outside_engine() for label in measured_rates.setups()]


def test_the_bundle_has_configs_outside_the_engine() -> None:
    names = _outside_engine()
    must = ("deepseek-ai/DeepSeek-V3", "openai/gpt-oss-120b", "google/gemma-3-1b-pt", "moonshotai/Kimi-K2-Instruct")
    assert set(must) <= set(names)


@pytest.mark.parametrize(("model", "label"), _entries())
def test_every_bundled_config_outside_the_engine_has_its_rates(model, label) -> None:
    config = resolve_model(model).config
    entry = measured_rates.lookup(config, measured_rates.setups()[label])
    assert entry is not None, f"{model} ({label}): run python -m meter.engine.measured_rates"
    assert model in entry["models"] and entry["setup"] == label


def _distinct() -> list[tuple[str, str]]:
    """One (model, setup) per entry: architectures shipped under two names (DeepSeek-R1, V3) are measured once."""
    seen: dict[str, tuple[str, str]] = {}
    for model, label in _entries():
        seen.setdefault(measured_rates.key(resolve_model(model).config, measured_rates.setups()[label]), (model, label))
    return list(seen.values())


@pytest.mark.parametrize(("model", "label"), _distinct())
def test_every_shipped_entry_is_what_the_generic_path_measures_now(model, label) -> None:
    config, setup = resolve_model(model).config, measured_rates.setups()[label]
    shipped = measured_rates.cost_model(config, setup, name=model)
    assert shipped.source.startswith("when the package was built")
    measured = MeasuredCostModel(config, setup, name=model)
    assert measured_rates.to_entry(shipped) == measured_rates.to_entry(measured)
    stats = TokenStats.from_lengths([4096, 1000], padded_to=4096, rows=2, windows=measured.windows)
    assert shipped.count(stats) == measured.count(stats)


def test_an_edited_config_is_measured_not_read() -> None:
    config = dict(resolve_model("openai/gpt-oss-20b").config)
    setup = measured_rates.setups()["full"]
    assert measured_rates.lookup(config, setup) is not None
    config["num_hidden_layers"] = 2
    assert measured_rates.lookup(config, setup) is None
    assert measured_rates.lookup({**resolve_model("openai/gpt-oss-20b").config, "_name_or_path": "x"}, setup)


def test_another_setup_is_measured_not_read() -> None:
    from meter.engine.count import TrainingSetup

    config = resolve_model("openai/gpt-oss-20b").config
    for setup in (TrainingSetup(method="lora", lora_r=8), TrainingSetup(method="lora", dora=True),
                  TrainingSetup(gradient_checkpointing=True, reentrant_checkpointing=True)):  # fmt: skip
        assert measured_rates.lookup(config, setup) is None


def test_a_config_only_estimate_of_a_bundled_model_needs_no_torch() -> None:
    """The estimate of a model outside the engine reads its shipped rates: no torch, no transformers imported."""
    code = (
        "import contextlib, io, json, sys\n"
        "from meter.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    rc = main(['estimate', '--model', 'deepseek-ai/DeepSeek-V3', '--tokens', '1000000000',"
        " '--seq-len', '4096', '--json'])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules,"
        " 'plan': json.loads(out.getvalue())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["rc"], result["torch"], result["transformers"]) == (0, False, False)
    assert result["plan"]["model"] == "deepseek-ai/DeepSeek-V3"
