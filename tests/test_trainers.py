"""The meter under the trainers people use: every part of the run against FlopCounterMode around its passes.

Each test trains a tiny random-initialised Llama (eager attention) through a real trainer with the callback, and
measures the same run independently with tests.pass_truth (FlopCounterMode around the whole run and around each
kind of pass, told apart at the trainers' call sites). Every recorded part must match its truth within 0.5 % (they
agree to the FLOP), and the regulatory count must be the documented sum of the parts its scope includes.
"""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from meter import FlopsMeter, FlopsMeterCallback  # noqa: E402
from meter.policy.parts import SCOPES  # noqa: E402
from tests.pass_truth import PassTruth  # noqa: E402
from tests.reference import TINY_CONFIGS  # noqa: E402
from tests.trainer_jobs import (  # noqa: E402
    PadCollator,
    read_record,
    sequences,
    tiny_model,
    word_tokenizer,
    words,
)

LORA = dict(r=4, target_modules=["q_proj", "v_proj"])


def common(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    return {**settings, **overrides}


def check(record, truth: PassTruth, parts: set[str]) -> None:
    """Every part within 0.5 % of its truth; the regulatory count is the sum of the parts its scope includes."""
    recorded = record["flops"]["parts"]
    assert {p for p, v in recorded.items() if v["passes"]} == parts
    assert {p for p, v in truth.parts.items() if v} == parts
    for part in parts:
        got, want = recorded[part]["executed_flops"], truth.parts[part]
        assert abs(got - want) <= 0.005 * want, (part, got, want)
    scope = record["flops"]["regulatory_scope"]
    assert record["flops"]["regulatory"] == sum(
        v["regulatory_flops"] for p, v in recorded.items() if p in SCOPES[scope]
    )
    assert all(v["included"] == (p in SCOPES[scope]) for p, v in recorded.items())
    assert record["flops"]["executed"] == sum(v["executed_flops"] for p, v in recorded.items() if p != "evaluation")
    assert record["flops"]["confidence"] == "exact" and record["status"] == "completed"


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": words(rng, 3, 12), "chosen": " " + words(rng, 2, 10), "rejected": " " + words(rng, 2, 10)}
            for _ in range(n)]  # fmt: skip


def train(trainer, *, reference=None, rewards=()) -> PassTruth:
    truth = PassTruth().policy(trainer.model)
    if reference is not None:
        truth.model(reference, "reference_forward")
    for model in rewards:
        truth.model(model, "reward_forward")
    with truth:
        trainer.train()
    return truth


@pytest.mark.parametrize("peft", [True, False], ids=["peft", "ref-model"])
def test_dpo(tmp_path, peft) -> None:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = DPOTrainer(
        model=tiny_model(),
        ref_model=None if peft else tiny_model(seed=1),
        args=DPOConfig(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA) if peft else None,
    )
    truth = train(trainer, reference=trainer.ref_model)
    record = read_record(tmp_path / "m.json")
    check(record, truth, {"training", "reference_forward"})
    if not peft:
        assert [w["role"] for w in record["watched_models"]] == ["reference"]


@pytest.mark.parametrize("peft", [True, False], ids=["peft", "ref-model"])
def test_kto(tmp_path, peft) -> None:
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer

    rng = random.Random(0)
    rows = [{"prompt": words(rng, 3, 12), "completion": " " + words(rng, 2, 10), "label": i % 2 == 0}
            for i in range(8)]  # fmt: skip
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = KTOTrainer(
        model=tiny_model(),
        ref_model=None if peft else tiny_model(seed=1),
        args=KTOConfig(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA) if peft else None,
    )
    truth = train(trainer, reference=trainer.ref_model)
    # the KL pass on the policy runs under no_grad: forward only
    check(read_record(tmp_path / "m.json"), truth, {"training", "reference_forward", "policy_forward"})


def reward_length(completions, **kwargs):
    return [float(len(c)) for c in completions]


def tiny_reward_model():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = {k: v for k, v in TINY_CONFIGS["llama"].items() if k != "model_type"}
    model = LlamaForSequenceClassification(LlamaConfig(**config, num_labels=1, pad_token_id=2,
                                                       attn_implementation="eager"))  # fmt: skip
    model.config._name_or_path = "tiny-reward"
    return model


@pytest.mark.parametrize(
    "case",
    ["peft-beta", "full-unequal-prompts-reward-model", "one-prompt"],
)
def test_grpo(tmp_path, case) -> None:
    """Generation with a KV cache (prompts of unequal length: left padding, full-context masks at decode steps),
    the reference with adapters disabled, a reward model scoring the rollouts."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    rng = random.Random(0)
    rows = [{"prompt": words(rng, 2, 9)} for _ in range(8)]
    if case == "one-prompt":
        rows = [rows[0]] * 8
    peft = case == "peft-beta"
    funcs: list = [reward_length]
    if case.endswith("reward-model"):
        funcs.append(tiny_reward_model())
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = GRPOTrainer(
        model=tiny_model(),
        reward_funcs=funcs,
        args=GRPOConfig(**common(tmp_path), num_generations=2, max_completion_length=6, beta=0.1 if peft else 0.0),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA) if peft else None,
        reward_processing_classes=[None, word_tokenizer()] if len(funcs) > 1 else None,
    )
    truth = train(trainer, rewards=[f for f in trainer.reward_funcs if isinstance(f, torch.nn.Module)])
    record = read_record(tmp_path / "m.json")
    parts = {"training", "generation"} | ({"reference_forward"} if peft else set())
    check(record, truth, parts | ({"reward_forward"} if len(funcs) > 1 else set()))
    assert record["steps"]["last_global_step"] == 2  # trained to the end


def test_rloo(tmp_path) -> None:
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    rng = random.Random(1)
    rows = [{"prompt": words(rng, 2, 9)} for _ in range(8)]
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = RLOOTrainer(
        model=tiny_model(),
        reward_funcs=[reward_length],
        args=RLOOConfig(**common(tmp_path), num_generations=2, max_completion_length=5, beta=0.05),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA),
    )
    truth = train(trainer)
    # RLOO scores old log-probs in a no_grad pass on the policy
    check(read_record(tmp_path / "m.json"), truth, {"training", "generation", "reference_forward", "policy_forward"})


@pytest.mark.parametrize("name", ["orpo", "cpo"])
def test_reference_free_preference(tmp_path, name) -> None:
    """ORPO and CPO need no reference: their passes are training steps only."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config, trainer_class = {"orpo": (ORPOConfig, ORPOTrainer), "cpo": (CPOConfig, CPOTrainer)}[name]
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = trainer_class(
        model=tiny_model(),
        args=config(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[callback],
    )
    truth = train(trainer)
    check(read_record(tmp_path / "m.json"), truth, {"training"})


def test_reward_trainer(tmp_path) -> None:
    """A reward model trains with a score head (hidden × num_labels), not an LM head."""
    from trl import RewardConfig, RewardTrainer

    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = RewardTrainer(
        model=tiny_reward_model(),
        args=RewardConfig(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[callback],
    )
    truth = train(trainer)
    record = read_record(tmp_path / "m.json")
    check(record, truth, {"training"})
    assert record["model"]["parameters"] < sum(p.numel() for p in tiny_model().parameters())  # no LM head


def test_sft_padding_free_pad_to_multiple(tmp_path) -> None:
    """Padding-free packing padded to a multiple: the padding slots are not 1-token sequences."""
    from trl import SFTConfig, SFTTrainer

    rows = sequences(12)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = SFTTrainer(
        model=tiny_model(),
        args=SFTConfig(
            **common(tmp_path),
            padding_free=True,
            pad_to_multiple_of=64,
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
        ),
        train_dataset=datasets.Dataset.from_list(rows[:8]),
        processing_class=word_tokenizer(),
        callbacks=[callback],
    )
    truth = train(trainer)
    record = read_record(tmp_path / "m.json")
    check(record, truth, {"training"})
    assert record["tokens"]["sequences"] == 8
    assert record["tokens"]["tokens"] == sum(len(r["input_ids"]) for r in rows[:8])
    assert (
        record["tokens"]["padded_tokens"] % 64 == 0 and record["tokens"]["padded_tokens"] > record["tokens"]["tokens"]
    )


def test_trainer_evaluation_is_reported_not_counted(tmp_path) -> None:
    """Trainer.evaluate runs in eval mode without gradients: its own part, outside both totals."""
    from transformers import Trainer

    from tests.trainer_jobs import training_args

    rows = sequences(12)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path / "out", eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4),
        train_dataset=rows,
        eval_dataset=rows[:8],
        data_collator=PadCollator(),
        callbacks=[callback],
    )
    truth = PassTruth().policy(trainer.model)
    with truth:
        trainer.train()
    record = read_record(tmp_path / "m.json")
    evaluation = record["flops"]["parts"]["evaluation"]
    assert evaluation["passes"] == 4 and not evaluation["included"]  # 2 evaluations of 2 batches
    # the truth harness sees evaluation as forward-only passes of the policy (no_grad)
    assert evaluation["executed_flops"] == truth.parts["policy_forward"]
    assert record["flops"]["executed"] == truth.parts["training"]


def test_logs_reach_the_reporting_integrations(tmp_path) -> None:
    """Integrations (W&B, MLflow, TensorBoard) receive the logs dict: the meter's values are in it."""
    from transformers import Trainer, TrainerCallback

    from tests.trainer_jobs import training_args

    class Integration(TrainerCallback):  # stands where report_to puts the integrations: before user callbacks
        def __init__(self) -> None:
            self.seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    integration = Integration()
    trainer = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path / "out"),
        train_dataset=sequences(16),
        data_collator=PadCollator(),
        callbacks=[integration, FlopsMeterCallback(output_path=str(tmp_path / "m.json"))],
    )
    trainer.train()
    record = read_record(tmp_path / "m.json")
    logged = [s for s in integration.seen if "flops_meter/regulatory_flops" in s]
    assert len(logged) == len(integration.seen) == 3  # two logging steps and the final summary
    assert logged[-1]["flops_meter/regulatory_flops"] == record["flops"]["regulatory"]


def plain_loop(out) -> PassTruth:
    """Three training steps of a plain loop, then a validation forward under no_grad without model.eval(); the
    record goes to ``out``/m.json (also run by bench/trainers.py)."""
    model = tiny_model()
    collate = PadCollator()
    batches = [collate(sequences(16)[i : i + 4]) for i in range(0, 16, 4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    truth = PassTruth().policy(model)
    meter = FlopsMeter(model, output_path=out / "m.json", nvml=False)
    with truth, meter:
        model.train()
        for batch in batches[:3]:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            meter.step()
        with torch.no_grad():
            model(**batches[3])
    return truth


def test_plain_loop_with_validation_under_no_grad(tmp_path) -> None:
    """Validation under no_grad without model.eval(): forward only, no backward counted."""
    truth = plain_loop(tmp_path)
    check(json.loads((tmp_path / "m.json").read_text()), truth, {"training", "policy_forward"})


def test_updates_only_scope(tmp_path) -> None:
    """The narrow reading counts training steps alone; the setting is in the record."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"), regulatory_scope="updates_only")
    trainer = DPOTrainer(
        model=tiny_model(),
        args=DPOConfig(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA),
    )
    truth = train(trainer)
    record = read_record(tmp_path / "m.json")
    check(record, truth, {"training", "reference_forward"})
    parts = record["flops"]["parts"]
    assert record["flops"]["regulatory"] == parts["training"]["regulatory_flops"]
    assert not parts["reference_forward"]["included"] and "updates_only" in parts["reference_forward"]["why"]


def test_parts_reach_the_audit_record_and_report(tmp_path, capsys) -> None:
    """A DPO run's record through classify, publish and report: the parts are in the published record (schema
    checked on publish) and the report lists them."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from meter.cli import main

    run_record = tmp_path / "m.json"
    trainer = DPOTrainer(
        model=tiny_model(),
        args=DPOConfig(**common(tmp_path)),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[FlopsMeterCallback(output_path=str(run_record))],
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    store = f"file://{tmp_path / 'audit'}"
    compliance = str(tmp_path / "c.json")
    assert main(["classify", str(run_record), "--pretrain-flops", "1e20", "--out", compliance, "--store", store]) == 0
    capsys.readouterr()
    assert main(["audit", "publish", str(run_record), "--compliance", compliance, "--store", store, "--json"]) == 0
    published = json.loads(capsys.readouterr().out)
    sha = published.get("record_sha256") or published["record"]["record_sha256"]
    report = tmp_path / "report.md"
    assert main(["report", sha, "--store", store, "--format", "md", "--out", str(report)]) == 0
    text = report.read_text()
    assert "Parts of the run (conservative)" in text and "reference forward" in text


def test_dpo_with_gradient_accumulation_and_checkpointing(tmp_path) -> None:
    """Micro-batches of an accumulated step and checkpointed layers (executed recompute) are counted as run."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = DPOTrainer(
        model=tiny_model(),
        args=DPOConfig(
            **common(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2),
            gradient_checkpointing=True,
        ),
        train_dataset=datasets.Dataset.from_list(preference_rows(8)),
        processing_class=word_tokenizer(),
        callbacks=[callback],
        peft_config=LoraConfig(**LORA),
    )
    truth = train(trainer)
    record = read_record(tmp_path / "m.json")
    check(record, truth, {"training", "reference_forward"})
    assert record["flops"]["parts"]["training"]["passes"] == 4  # 2 steps × 2 micro-batches
    assert record["method"]["gradient_checkpointing"] and record["flops"]["executed_parts"]["recompute"] > 0


def test_accelerate_loop(tmp_path) -> None:
    """An accelerate loop with gradient accumulation, then an evaluation in eval mode."""
    from accelerate import Accelerator

    model = tiny_model()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    rows = sequences(16)
    loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=PadCollator())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    truth = PassTruth().policy(model)
    meter = FlopsMeter(model, output_path=tmp_path / "m.json", nvml=False)
    with truth, meter:
        model.train()
        for batch in loader:
            with accelerator.accumulate(model):
                accelerator.backward(model(**batch).loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                meter.step()
        model.eval()
        with torch.no_grad():
            model(**next(iter(loader)))
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["steps"]["optimizer_steps"] == 2 and record["flops"]["parts"]["training"]["passes"] == 4
    evaluation = record["flops"]["parts"]["evaluation"]
    assert evaluation["executed_flops"] == truth.parts["policy_forward"] and not evaluation["included"]
    assert record["flops"]["executed"] == truth.parts["training"]
