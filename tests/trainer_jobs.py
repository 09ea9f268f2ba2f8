"""Real Trainer jobs on tiny random-initialised models, for the runtime tests (and the torchrun script)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from steps.data import EOS, PAD, PadCollator  # pad = EOS = 2, as for Llama
from tests.reference import TINY_CONFIGS

__all__ = ["EOS", "PAD", "PadCollator"]


def tiny_model(family: str = "llama", seed: int = 0):
    import torch

    from meter.engine.measure import model_from_config

    torch.manual_seed(seed)
    return model_from_config(TINY_CONFIGS[family], attn_implementation="eager")


def sequences(n: int, low: int = 5, high: int = 40, seed: int = 0, eos: bool = True) -> list[dict[str, list[int]]]:
    """Token sequences of random lengths, each ending with EOS (= the pad id)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        body = [rng.randint(3, 500) for _ in range(rng.randint(low, high) - 1)]
        rows.append({"input_ids": [*body, EOS] if eos else [*body, rng.randint(3, 500)]})
    return rows


def lengths(rows: list[dict[str, list[int]]]) -> list[int]:
    return [len(r["input_ids"]) for r in rows]


def training_args(out: Path, **overrides: Any):
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def run(model, rows, out: Path, callbacks, collator=None, resume: str | None = None, **overrides):
    from transformers import Trainer

    trainer = Trainer(
        model=model,
        args=training_args(out, **overrides),
        train_dataset=rows,
        data_collator=collator or PadCollator(),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def word_tokenizer():
    """A word-level tokenizer built in code (no hub): words t0..t511 are ids 0..511, pad = EOS = 2, BOS = 0."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(512)}, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t2", eos_token="t2", bos_token="t0")


def words(rng: random.Random, low: int, high: int) -> str:
    """Text of low..high random words of word_tokenizer's vocabulary, one token each (t300..t499: no word starts
    with the special tokens t0 and t2, which the tokenizer would split off)."""
    return " ".join(f"t{rng.randint(300, 499)}" for _ in range(rng.randint(low, high)))


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
