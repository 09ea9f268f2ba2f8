"""What ships with the package: base-model configs (architecture only) and their published pretraining compute.

Both are looked up by Hugging Face model id, case-insensitively. Instruct/chat variants resolve to their base,
with a note: the post-training compute of the variant is not published and is not included (which makes the
one-third threshold lower, i.e. conservative).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from meter.errors import MeterError

_VARIANT = re.compile(r"-(instruct|chat|it)(?=-|$)", re.IGNORECASE)


def data_dir() -> Path:
    """Where the package keeps its data files."""
    return Path(str(resources.files("meter") / "data"))


@cache
def bundled_configs() -> dict[str, Path]:
    """Bundled config files by lower-cased model id (and by bare name: 'llama-3.1-8b', 'tiny-llama')."""
    index: dict[str, Path] = {}
    for path in sorted((data_dir() / "configs").glob("*.json")):
        model_id = path.stem.replace("--", "/")
        index[model_id.lower()] = path
        index.setdefault(model_id.rsplit("/", 1)[-1].lower(), path)
    return index


def _base_id(model_id: str) -> str:
    return _VARIANT.sub("", model_id)


def _base_candidates(model_id: str) -> list[str]:
    """Where a variant's base may be filed: 'gemma-3-4b-it' -> 'gemma-3-4b', 'gemma-3-4b-pt';
    'Mistral-Small-24B-Instruct-2501' -> 'Mistral-Small-24B-2501', 'Mistral-Small-24B-Base-2501'."""
    base = _base_id(model_id)
    if base == model_id:
        return []
    return [base, base + "-pt", _VARIANT.sub("-base", model_id)]


def _find(key: str, index) -> str | None:
    """The key itself, or the first base candidate that is filed."""
    return next((k for k in (key, *_base_candidates(key)) if k in index), None)


@dataclass(frozen=True)
class ResolvedModel:
    config: dict[str, Any]
    name: str
    source: str  # where the config came from
    note: str = ""


def resolve_model(model: str) -> ResolvedModel:
    """A model argument as the CLI takes it: a config.json path, a model directory, or a (bundled) HF model id."""
    path = Path(model)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long for the file system
        raise MeterError(
            f"--model: {e.strerror} ({len(model)} characters): give a shorter path or a model id"
        ) from None
    if exists:
        from meter.engine.spec import load_config

        cfg = load_config(path)
        return ResolvedModel(cfg, str(cfg.get("_name_or_path") or model), str(path))
    index = bundled_configs()
    key, note = model.lower(), ""
    found = _find(key, index)
    if found is not None and found != key:
        note = f"{model} uses the architecture of its base {index[found].stem.replace('--', '/')}"
    key = found or key
    if key not in index:
        if "/" in model or model.endswith(".json"):
            raise MeterError(
                f"model '{model}' is neither a file nor a bundled config: download its config.json "
                f"(https://huggingface.co/{model}/resolve/main/config.json; gated models need a token: "
                'curl -LH "Authorization: Bearer $HF_TOKEN") and pass the path to --model'
            )
        raise MeterError(f"unknown model '{model}': give a config.json path or a Hugging Face id (flops-meter models)")
    cfg = json.loads(index[key].read_text())
    return ResolvedModel(cfg, model if note else cfg["_name_or_path"], f"bundled {index[key].name}", note)


# --------------------------------------------------------------------------------------------------------------
# Published pretraining compute


@cache
def _pretrain_rows() -> dict[str, dict[str, Any]]:
    doc = json.loads((data_dir() / "pretrain_compute.json").read_text())
    rows: dict[str, dict[str, Any]] = {}
    for row in doc["models"]:
        for model_id in (row["id"], *row.get("aliases", ())):
            rows[model_id.lower()] = row
    return rows


def original_facts(model_id: str) -> tuple[dict[str, Any], str] | None:
    """The published facts of a model id (its row of pretrain_compute.json) and a note when a variant resolved to
    its base; None when the table has no row for it. meter.policy.original turns them into a figure."""
    rows = _pretrain_rows()
    key, note = model_id.lower(), ""
    found = _find(key, rows)
    if found is not None and found != key:
        key = found
        note = (
            f"{model_id} resolved to its base {rows[key]['id']}: the post-training compute of the variant is not "
            "published and is excluded, which lowers the threshold (conservative)"
        )
    row = rows.get(key)
    return None if row is None else (row, note)


def pretrain_table() -> list[dict[str, Any]]:
    return json.loads((data_dir() / "pretrain_compute.json").read_text())["models"]
