"""TRL's SFTTrainer: the callback works unchanged, with padding and with padding-free packing."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from meter import CostModel, FlopsMeterCallback, TokenStats, TrainingSetup, spec_from_config  # noqa: E402
from tests.pass_truth import PassTruth  # noqa: E402
from tests.reference import TINY_CONFIGS  # noqa: E402
from tests.trainer_jobs import lengths, read_record, sequences, tiny_model, word_tokenizer  # noqa: E402


@pytest.mark.parametrize("padding_free", [False, True])
def test_sft_trainer(tmp_path, padding_free) -> None:
    from trl import SFTConfig, SFTTrainer

    rows = sequences(12)
    dataset = datasets.Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        padding_free=padding_free,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        seed=0,
        data_seed=0,
    )
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    trainer = SFTTrainer(
        model=tiny_model(), args=args, train_dataset=dataset, processing_class=word_tokenizer(), callbacks=[callback]
    )
    truth = PassTruth().policy(trainer.model)
    with truth:
        trainer.train()
    record = read_record(tmp_path / "m.json")
    assert record["flops"]["executed"] == truth.parts["training"]
    # TRL's fused LM head scores the s - 1 positions of each sequence that have a next-token label
    spec = spec_from_config(TINY_CONFIGS["llama"])
    stats = TokenStats.from_lengths(lengths(rows))
    stats = dataclasses.replace(stats, head_tokens=stats.tokens - stats.sequences)
    want = CostModel(spec, TrainingSetup()).count(stats).regulatory_flops
    assert record["tokens"]["tokens"] == sum(lengths(rows))
    assert record["flops"]["regulatory"] == want
