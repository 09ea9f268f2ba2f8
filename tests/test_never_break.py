"""No exception from the meter reaches a training job: damaged resume state, unknown models, bad options.

Each case trains for real and checks that the job ends normally while the record says what the meter could not
count (``confidence: lower_bound`` with the reason, or ``status: not_counted``), never a silently lower figure.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from meter import FlopsMeterCallback, from_recipe
from meter.cli import main
from meter.errors import MeterError
from tests.test_runtime import _Crash, _CrashAt
from tests.trainer_jobs import read_record, run, sequences, tiny_model

COMMON = dict(max_steps=10, save_strategy="steps", save_steps=4, per_device_train_batch_size=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    run(tiny_model(), sequences(40, seed=3), out / "w", [FlopsMeterCallback(output_path=str(out / "m.json"),
        log_every=1)], **COMMON)  # fmt: skip
    return read_record(out / "m.json")


def _damage(journal, how: str) -> None:
    doc = json.loads(journal.read_text())
    if how == "string step":
        doc["global_step"] = str(doc["global_step"])
    elif how == "zeroed stats":
        for stats in doc["streams"].values():
            for key, value in stats.items():
                if isinstance(value, int):
                    stats[key] = 0
        doc["stats"] = doc["streams"]["policy/training"]
    elif how == "not json":
        journal.write_text("{ half a journ")
        return
    elif how == "foreign streams":
        doc["streams"]["mystery/training"] = doc["streams"].pop("policy/training")
    journal.write_text(json.dumps(doc))


@pytest.mark.parametrize("how", ["string step", "zeroed stats", "not json", "foreign streams"])
def test_a_damaged_journal_never_breaks_the_resumed_run(tmp_path, uninterrupted, how) -> None:
    """The journal after a crash is damaged: the resumed run trains to the end and counts what it can trust (the
    checkpoint and the steps after it), marked as a lower bound: the redone steps are not counted."""
    rows, record = sequences(40, seed=3), tmp_path / "m.json"
    with pytest.raises(_Crash):
        run(tiny_model(), rows, tmp_path / "r", [FlopsMeterCallback(output_path=str(record), log_every=1),
            _CrashAt(6)], **COMMON)  # fmt: skip
    _damage(tmp_path / "r" / "flops_meter.journal.json", how)
    run(tiny_model(), rows, tmp_path / "r", [FlopsMeterCallback(output_path=str(record), log_every=1)],
        resume=str(tmp_path / "r" / "checkpoint-4"), **COMMON)  # fmt: skip
    resumed = read_record(record)
    assert resumed["status"] == "completed" and resumed["steps"]["last_global_step"] == 10
    assert resumed["flops"]["regulatory"] == uninterrupted["flops"]["regulatory"]  # never less
    assert resumed["flops"]["confidence"] == "lower_bound"
    assert any("journal" in reason for reason in resumed["flops"]["degraded"])


def test_damaged_checkpoint_state_never_breaks_the_resumed_run(tmp_path) -> None:
    """The meter's state inside the checkpoint is damaged: training resumes, the record says what is missing."""
    rows, record = sequences(40, seed=3), tmp_path / "m.json"
    run(tiny_model(), rows, tmp_path / "r", [FlopsMeterCallback(output_path=str(record))], max_steps=4,
        save_strategy="steps", save_steps=4, per_device_train_batch_size=2)  # fmt: skip
    state_file = tmp_path / "r" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["stateful_callbacks"]["FlopsMeterCallback"]["attributes"]["_state"]["streams"] = "garbage"
    state_file.write_text(json.dumps(state))
    (tmp_path / "r" / "flops_meter.journal.json").unlink()
    run(tiny_model(), rows, tmp_path / "r", [FlopsMeterCallback(output_path=str(record))],
        resume=str(tmp_path / "r" / "checkpoint-4"), **COMMON)  # fmt: skip
    resumed = read_record(record)
    assert resumed["status"] == "completed" and resumed["flops"]["confidence"] == "lower_bound"
    assert any("compute before step 4 is not counted" in r for r in resumed["flops"]["degraded"])


def test_a_model_that_cannot_be_counted_trains_and_is_recorded_as_not_counted(tmp_path, capsys) -> None:
    """A family the generic path cannot measure (JetMoE: experts outside transformers' experts dispatch, refused
    rather than guessed): training runs to the end, the record says why nothing was counted, classify refuses it
    in one line."""
    from tests.tiny_families import build

    model = build("jetmoe")
    record_path = tmp_path / "m.json"
    trainer = run(model, sequences(8), tmp_path / "out", [FlopsMeterCallback(output_path=str(record_path))],
                  max_steps=2)  # fmt: skip
    assert trainer.state.global_step == 2
    record = read_record(record_path)
    assert record["status"] == "not_counted" and "JetMoeParallelExperts does not dispatch" in record["reason"]
    assert record["flops"]["regulatory"] is None
    assert "the run is NOT counted" in capsys.readouterr().out
    assert main(["classify", str(record_path), "--out", str(tmp_path / "c.json"), "--pretrain-flops", "1e23"]) == 2
    err = capsys.readouterr().err
    assert "not counted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stop_at_fraction": "most"}, "stop_at_fraction"),
        ({"stop_at_fraction": float("nan")}, "stop_at_fraction"),
        ({"log_every": 0}, "log_every"),
        ({"budget_flops": -1}, "budget_flops"),
        ({"regulatory_scope": "lenient"}, "regulatory_scope"),
    ],
)
def test_bad_options_fail_before_training(options, message) -> None:
    """A bad setting is refused when the callback is built, not silently dropped once training runs."""
    with pytest.raises(MeterError, match=message):
        FlopsMeterCallback(**options)


def test_recipe_regulatory_scope() -> None:
    callback = from_recipe({"compute_flops": True, "flops_meter": {"regulatory_scope": "updates_only"}})
    assert callback.regulatory_scope == "updates_only"
    with pytest.raises(MeterError, match="regulatory_scope"):
        from_recipe({"compute_flops": True, "flops_meter": {"regulatory_scope": "most"}})
