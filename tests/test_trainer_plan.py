"""Plans of preference and RL runs (`flops-meter estimate --trainer`) against the real runs they describe.

Each test trains through a real TRL trainer on data of uniform shape (no padding, completions of fixed length) and
checks that every planned part equals what the meter recorded for it, part by part. The recorded parts themselves
are checked against FlopCounterMode in tests/test_trainers.py.
"""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from meter import CostModel, TrainingSetup, spec_from_config  # noqa: E402
from meter.cli import main  # noqa: E402
from meter.engine.trainer_plan import TrainerPlan, plan_parts  # noqa: E402
from meter.errors import MeterError  # noqa: E402
from tests.reference import TINY_CONFIGS  # noqa: E402
from tests.trainer_jobs import read_record, tiny_model, word_tokenizer, words  # noqa: E402

SPEC = spec_from_config(TINY_CONFIGS["llama"])
LORA = TrainingSetup(method="lora", lora_r=4, lora_targets=("q_proj", "v_proj"), attn_implementation="eager")
BARE = CostModel(SPEC, TrainingSetup(attn_implementation="eager"))


def text(rng: random.Random, n: int) -> str:
    return words(rng, n, n)


def args(tmp_path, **kw):
    return dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, report_to=[],
                use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, **kw)  # fmt: skip


def regulatory_parts(record) -> dict[str, int]:
    return {p: v["regulatory_flops"] for p, v in record["flops"]["parts"].items() if v["passes"]}


def test_dpo_plan_is_the_run(tmp_path) -> None:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from meter import FlopsMeterCallback

    rng = random.Random(0)
    rows = [{"prompt": text(rng, 6), "chosen": " " + text(rng, 4), "rejected": " " + text(rng, 4)} for _ in range(8)]
    trainer = DPOTrainer(
        model=tiny_model(),
        args=DPOConfig(**args(tmp_path)),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
        callbacks=[FlopsMeterCallback(output_path=str(tmp_path / "m.json"))],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    # the trainer appends EOS to each completion: 4 words + EOS
    planned, _ = plan_parts(CostModel(SPEC, LORA), BARE, TrainerPlan("dpo", prompt_len=6, completion_len=5), 8)
    assert {p: c.regulatory_flops for p, c in planned.parts.items()} == regulatory_parts(
        read_record(tmp_path / "m.json")
    )


def test_grpo_plan_is_the_run(tmp_path) -> None:
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from meter import FlopsMeterCallback

    rng = random.Random(1)
    rows = [{"prompt": text(rng, 5)} for _ in range(4)]
    trainer = GRPOTrainer(
        model=tiny_model(),
        reward_funcs=[lambda completions, **kw: [float(len(c)) for c in completions]],
        args=GRPOConfig(
            **args(tmp_path),
            num_generations=2,
            max_completion_length=6,
            beta=0.1,
            generation_kwargs={"min_new_tokens": 6},
        ),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
        callbacks=[FlopsMeterCallback(output_path=str(tmp_path / "m.json"))],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    record = read_record(tmp_path / "m.json")
    prompts = record["flops"]["parts"]["training"]["statistics"]["sequences"] // 2
    plan = TrainerPlan("grpo", prompt_len=5, completion_len=6, generations=2)
    planned, _ = plan_parts(CostModel(SPEC, LORA), BARE, plan, prompts)
    assert {p: c.regulatory_flops for p, c in planned.parts.items()} == regulatory_parts(record)


def test_estimate_cli_trainer_parts(capsys) -> None:
    code = main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--trainer", "grpo", "--sequences", "1000",
                 "--prompt-len", "256", "--completion-len", "512", "--method", "lora", "--json"])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trainer"] == "grpo" and set(doc["parts"]) == {"training", "generation", "reference_forward"}
    assert doc["regulatory_flops"] == sum(p["regulatory_flops"] for p in doc["parts"].values())
    narrow = main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--trainer", "grpo", "--sequences", "1000",
                   "--prompt-len", "256", "--completion-len", "512", "--method", "lora", "--json",
                   "--regulatory-scope", "updates_only"])  # fmt: skip
    assert narrow == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["regulatory_flops"] == doc["parts"]["training"]["regulatory_flops"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trainer", "dpo", "--sequences", "10"], "--prompt-len and --completion-len"),
        (["--trainer", "dpo", "--tokens", "1000", "--prompt-len", "5", "--completion-len", "5"], "give --sequences"),
    ],
)
def test_estimate_cli_trainer_errors(capsys, argv, message) -> None:
    assert main(["estimate", "--model", "meta-llama/Llama-3.1-8B", *argv]) == 2
    assert message in capsys.readouterr().err


def test_plan_rejects_unknown_trainer() -> None:
    with pytest.raises(MeterError, match="unknown trainer"):
        TrainerPlan("ppo", prompt_len=1, completion_len=1)
