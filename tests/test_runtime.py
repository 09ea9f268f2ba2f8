"""The meter inside real Trainer jobs (CPU, tiny random-initialised models).

Every recorded count is compared with the engine's count computed independently from the dataset's sequence
lengths — the meter has to see exactly the batches that ran.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch

from meter import CostModel, FlopsMeter, FlopsMeterCallback, TokenStats, TrainingSetup, spec_from_config
from tests.reference import TINY_CONFIGS
from tests.trainer_jobs import EOS, PAD, lengths, read_record, run, sequences, tiny_model

SPEC = spec_from_config(TINY_CONFIGS["llama"])


def expected(rows, setup: TrainingSetup | None = None) -> int:
    return CostModel(SPEC, setup or TrainingSetup()).count(TokenStats.from_lengths(lengths(rows))).regulatory_flops


def test_full_fine_tuning_is_counted_exactly(tmp_path, capsys) -> None:
    rows = sequences(16)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "flops_meter.json"), log_every=3)
    trainer = run(tiny_model(), rows, tmp_path / "out", [callback])
    record = read_record(tmp_path / "flops_meter.json")
    assert record["flops"]["regulatory"] == expected(rows)
    assert record["tokens"]["tokens"] == sum(lengths(rows)) and record["status"] == "completed"
    assert record["method"]["method"] == "full" and record["model"]["parameters"] == SPEC.parameter_count()
    # executed: what ran (padding, L² eager attention) is more than what the rule counts
    assert record["flops"]["executed"] > record["flops"]["regulatory"]
    # SageMaker metric lines and the Trainer's own history
    out = capsys.readouterr().out
    assert f"flops_meter: cumulative_flops={record['flops']['regulatory']}" in out
    logged = [h for h in trainer.state.log_history if "flops_meter/regulatory_flops" in h]
    assert logged and logged[-1]["flops_meter/regulatory_flops"] <= record["flops"]["regulatory"]
    assert [t["step"] for t in record["timeline"]][-1] == 4
    assert record["energy"]["energy_kwh"] is None and record["energy"]["reason"]  # no GPU here: said so
    # a model built from a config has no hub id: the fallback threshold applies, and the record says why
    assert record["threshold"]["rule"] == "fallback_gpai"
    assert any("not in the table of published facts" in note for note in record["notes"])


def test_pad_equal_to_eos_is_counted(tmp_path) -> None:
    """Every sequence ends with EOS and pads with EOS: counting input_ids != pad_id would drop real tokens."""
    rows = sequences(12)
    assert all(r["input_ids"][-1] == EOS == PAD for r in rows)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    run(tiny_model(), rows, tmp_path / "out", [callback], max_steps=3)
    record = read_record(tmp_path / "m.json")
    assert record["tokens"]["tokens"] == sum(lengths(rows))
    assert record["flops"]["regulatory"] == expected(rows)


def test_packed_batches(tmp_path) -> None:
    from transformers import DataCollatorWithFlattening

    rows = sequences(12)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    run(tiny_model(), rows, tmp_path / "out", [callback], collator=DataCollatorWithFlattening(), max_steps=3)
    record = read_record(tmp_path / "m.json")
    assert record["tokens"]["sequences"] == 12 and record["tokens"]["tokens"] == sum(lengths(rows))
    assert record["flops"]["regulatory"] == expected(rows)  # packing does not change the regulatory count
    assert record["tokens"]["padded_tokens"] == sum(lengths(rows))  # one row per batch, no padding


def test_lora_run(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    rows = sequences(12)
    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    run(model, rows, tmp_path / "out", [callback], max_steps=3)
    record = read_record(tmp_path / "m.json")
    lora = TrainingSetup(method="lora", lora_r=4, lora_targets=("q_proj", "v_proj"))
    assert record["method"]["method"] == "lora" and record["method"]["lora_targets"] == ["q_proj", "v_proj"]
    assert record["flops"]["regulatory"] == expected(rows, lora) < expected(rows)
    assert record["model"]["trainable_parameters"] == record["model"]["trainable_parameters_reported"]


def test_gradient_checkpointing_changes_executed_not_regulatory(tmp_path) -> None:
    rows = sequences(8)
    plain, ckpt = tmp_path / "a.json", tmp_path / "b.json"
    run(tiny_model(), rows, tmp_path / "o1", [FlopsMeterCallback(output_path=str(plain))], max_steps=2)
    run(
        tiny_model(),
        rows,
        tmp_path / "o2",
        [FlopsMeterCallback(output_path=str(ckpt))],
        max_steps=2,
        gradient_checkpointing=True,
    )
    a, b = read_record(plain), read_record(ckpt)
    assert a["flops"]["regulatory"] == b["flops"]["regulatory"]
    assert b["flops"]["executed"] > a["flops"]["executed"] and b["flops"]["executed_parts"]["recompute"] > 0
    assert b["method"]["gradient_checkpointing"] is True


class _Crash(Exception):
    pass


class _CrashAt(FlopsMeterCallback.__mro__[1]):  # a plain TrainerCallback
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"killed at step {self.step}")


def test_kill_and_resume_counts_redone_steps(tmp_path) -> None:
    """Interrupted after step 6 with a checkpoint at step 4: the resumed record is the uninterrupted total plus
    steps 5 and 6, computed twice, and says so."""
    rows = sequences(40, seed=3)
    common = dict(max_steps=10, save_strategy="steps", save_steps=4, per_device_train_batch_size=2)

    whole = tmp_path / "whole.json"
    run(tiny_model(), rows, tmp_path / "w", [FlopsMeterCallback(output_path=str(whole), log_every=1)], **common)
    uninterrupted = read_record(whole)
    timeline = {t["step"]: t["regulatory_flops"] for t in uninterrupted["timeline"]}
    redone = timeline[6] - timeline[4]

    record = tmp_path / "resumed.json"
    with pytest.raises(_Crash):
        run(
            tiny_model(),
            rows,
            tmp_path / "r",
            [FlopsMeterCallback(output_path=str(record), log_every=1), _CrashAt(6)],
            **common,
        )
    run(
        tiny_model(),
        rows,
        tmp_path / "r",
        [FlopsMeterCallback(output_path=str(record), log_every=1)],
        resume=str(tmp_path / "r" / "checkpoint-4"),
        **common,
    )
    resumed = read_record(record)
    assert resumed["flops"]["regulatory"] == uninterrupted["flops"]["regulatory"] + redone
    assert resumed["steps"]["redone_steps"] == 2
    (resume,) = resumed["steps"]["resumes"]
    assert resume["from_step"] == 4 and resume["redone_regulatory_flops"] == redone
    assert resumed["run_id"] == read_record(tmp_path / "r" / "flops_meter.journal.json")["run_id"]


def test_budget_guard_stops_before_the_budget(tmp_path) -> None:
    rows = [{"input_ids": [5] * 32} for _ in range(40)]  # equal steps: the guard's bound is tight
    per_step = CostModel(SPEC).count(TokenStats.uniform(4, 32)).regulatory_flops
    budget = 2.5 * per_step
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"), budget_flops=budget, log_every=50)
    trainer = run(tiny_model(), rows, tmp_path / "out", [callback], max_steps=10, save_strategy="steps", save_steps=100)
    record = read_record(tmp_path / "m.json")
    assert record["status"] == "stopped_by_budget" and "budget guard" in record["stop_reason"]
    assert record["flops"]["regulatory"] == 2 * per_step <= budget
    assert trainer.state.global_step == 2
    assert (tmp_path / "out" / "checkpoint-2").is_dir()  # stopped cleanly, with a checkpoint


def test_forecast_warns_when_the_run_will_cross(tmp_path, capsys) -> None:
    rows = sequences(16)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"), pretrain_flops=1e9, log_every=1)
    run(tiny_model(), rows, tmp_path / "out", [callback], max_steps=4)
    record = read_record(tmp_path / "m.json")
    assert record["forecast"]["crosses_threshold"] is True
    assert "forecast to use" in capsys.readouterr().out
    assert record["threshold"]["rule"] == "one_third_of_known" and record["threshold"]["crossed_by_this_run"]


def test_plain_pytorch_loop(tmp_path) -> None:
    """FlopsMeter without Trainer: the hook counts training forwards only; eval forwards are not counted."""
    from tests.trainer_jobs import PadCollator

    rows = sequences(8)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    collate = PadCollator()
    with FlopsMeter(model, output_path=tmp_path / "m.json", log_every=2, nvml=False) as meter:
        for i in range(0, 8, 4):
            model.train()
            model(**collate(rows[i : i + 4])).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            meter.step()
            model.eval()
            with torch.no_grad():
                model(**collate(rows[i : i + 4]))  # evaluation: not training compute
    record = read_record(tmp_path / "m.json")
    assert record["flops"]["regulatory"] == expected(rows)


def test_observe_without_hook(tmp_path) -> None:
    from tests.trainer_jobs import PadCollator

    rows = sequences(4)
    meter = FlopsMeter(tiny_model(), output_path=tmp_path / "m.json", hook=False, nvml=False).start()
    meter.observe(PadCollator()(rows))
    meter.step()
    assert meter.stop()["flops"]["regulatory"] == expected(rows)


def test_a_device_or_pipe_as_output_is_written_to_not_replaced(tmp_path) -> None:
    """Atomic rename must never replace a special file (as /dev/null would be): a FIFO stands in for it here."""
    import json
    import os
    import stat
    import threading

    from tests.trainer_jobs import PadCollator

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    rows = sequences(4)
    meter = FlopsMeter(tiny_model(), output_path=fifo, hook=False, nvml=False).start()
    meter.observe(PadCollator()(rows))
    meter.step()
    meter.stop()
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a pipe
    assert json.loads(received[0])["flops"]["regulatory"] == expected(rows)
