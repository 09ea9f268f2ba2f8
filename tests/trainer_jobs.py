"""Real Trainer jobs on tiny random-initialised models, for the runtime tests (and the torchrun script)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from meter.reference import TINY_CONFIGS

PAD = EOS = 2  # as for Llama: the pad token is the end-of-sequence token


def tiny_model(family: str = "llama", seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(TINY_CONFIGS[family])
    model_type = cfg.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg), attn_implementation="eager")


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


class PadCollator:
    """Right-pads with the EOS id; attention_mask marks real tokens; labels ignore padding."""

    def __init__(self, pad_to: int | None = None):
        self.pad_to = pad_to

    def __call__(self, rows):
        import torch

        length = self.pad_to or max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), length), PAD)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


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


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
