"""Training data as the steps read it: JSON Lines with ``input_ids`` (pre-tokenized) or ``text``.

The bundled demo model has no tokenizer on any hub: it uses a byte-level tokenizer built here (ids = UTF-8 bytes
+ 3; 2 is end-of-sequence and padding, as for Llama). Other models use their own tokenizer
(``AutoTokenizer.from_pretrained``), which SageMaker can download.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meter.errors import MeterError

EOS = PAD = 2
DEMO_MODELS = ("tiny-llama",)


class ByteTokenizer:
    eos_token_id = pad_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")] + [EOS]


def tokenizer_for(model_id: str, model_path: Path | None = None):
    if model_id in DEMO_MODELS and model_path is None:
        return ByteTokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path or model_id))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _encode(tokenizer, text: str) -> list[int]:
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]


def rows(directory: Path) -> Iterator[dict[str, Any]]:
    files = [directory] if directory.is_file() else sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if not files:
        raise MeterError(f"no training data in {directory}: expected *.jsonl files")
    for path in files:
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise MeterError(f"{path.name} line {number} is not valid JSON") from None
                if not isinstance(row, dict) or not ("input_ids" in row or "text" in row):
                    raise MeterError(f"{path.name} line {number}: each line needs 'input_ids' or 'text'")
                yield row


def sequences(directory: Path, tokenizer, max_length: int) -> list[list[int]]:
    """Token id lists, truncated to max_length as training will see them."""
    out = []
    for row in rows(directory):
        ids = row["input_ids"] if "input_ids" in row else _encode(tokenizer, row["text"])
        if ids:
            out.append(list(ids)[:max_length])
    if not out:
        raise MeterError(f"the training data in {directory} holds no sequence")
    return out


class PadCollator:
    """Right-pads a batch of ``input_ids`` rows with the EOS id (as for Llama: pad = EOS); ``attention_mask`` marks
    the real tokens and ``labels`` ignore the padding. ``pad_to``: a fixed row length instead of the longest row."""

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
