"""The step entrypoints run on one machine with OPT_ML pointing at a temp dir, chained as the pipeline chains them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "steps" / "recipes" / "demo.yaml"
DATA = ROOT / "steps" / "demo" / "train.jsonl"


def step(name: str, opt_ml: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "OPT_ML": str(opt_ml),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "FLOPS_METER_NVML": "0",
        **(env or {}),
    }
    return subprocess.run([sys.executable, "-m", f"steps.{name}", *args], env=environment, cwd=opt_ml,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def place(src: Path, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / src.name)


def test_the_four_steps_on_one_machine(tmp_path) -> None:
    store = f"file://{tmp_path / 'audit'}"

    est = tmp_path / "estimate"
    place(RECIPE, est / "processing/input/recipe")
    place(DATA, est / "processing/input/dataset")
    done = step("estimate_flops", est, "--pretrain-flops", "", "--allow-planned-crossing", "false")
    assert done.returncode == 0, done.stderr
    estimate = json.loads((est / "processing/output/estimate/estimate.json").read_text())
    assert estimate["gate_passed"] and not estimate["crosses"] and estimate["threshold_rule"] == "fallback_gpai"

    train = tmp_path / "train"
    place(RECIPE, train / "input/data/recipe")
    place(DATA, train / "input/data/train")
    done = step("train_with_meter", train)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((train / "output/data/flops_meter.json").read_text())
    assert (train / "model/flops_meter.json").is_file() and (train / "model/config.json").is_file()
    assert "flops_meter: cumulative_flops=" in done.stdout
    # the plan and the run agree: same data, same epochs, one process, no padding in the regulatory count
    assert record["flops"]["regulatory"] == estimate["planned_regulatory_flops"]

    cls = tmp_path / "classify"
    shutil.copytree(train / "model", cls / "processing/input/run")
    done = step("classify_compliance", cls, "--store-uri", store, "--lineage", "demo/tiny")
    assert done.returncode == 0, done.stderr
    compliance = json.loads((cls / "processing/output/compliance/compliance.json").read_text())
    assert compliance["crossed"] is False and compliance["status"] == "downstream_modifier"
    assert compliance["regulatory_flops"] == record["flops"]["regulatory"] and compliance["threshold_flops"] > 0

    pub = tmp_path / "publish"
    shutil.copytree(train / "model", pub / "processing/input/run")
    place(cls / "processing/output/compliance/compliance.json", pub / "processing/input/compliance")
    place(DATA, pub / "processing/input/dataset")
    done = step("publish_audit", pub, "--store-uri", store, "--dataset-uri", "s3://demo/train.jsonl")
    assert done.returncode == 0, done.stderr
    audit = json.loads((pub / "processing/output/audit/audit.json").read_text())
    assert audit["created"] and audit["lineage"] == "demo/tiny" and audit["sequence"] == 1
    from meter.audit.store import open_store

    stored = open_store(store).get(audit["record_sha256"])
    assert stored["dataset"]["sha256"] and stored["dataset"]["uri"] == "s3://demo/train.jsonl"
    assert open_store(store).verify().ok

    # a tiny known original compute: the plan crosses and the gate closes before training
    done = step("estimate_flops", est, "--pretrain-flops", "1e9")
    gate = json.loads((est / "processing/output/estimate/estimate.json").read_text())
    assert done.returncode == 0 and gate["crosses"] and not gate["gate_passed"]
    done = step("estimate_flops", est, "--pretrain-flops", "1e9", "--allow-planned-crossing", "true")
    assert json.loads((est / "processing/output/estimate/estimate.json").read_text())["gate_passed"]


def test_bad_input_ends_a_step_with_one_line_and_a_failure_file(tmp_path) -> None:
    (tmp_path / "processing/input/recipe").mkdir(parents=True)
    (tmp_path / "processing/input/recipe/r.yaml").write_text("compute_flops: true\nmethod: sft\n")
    place(DATA, tmp_path / "processing/input/dataset")
    done = step("estimate_flops", tmp_path)
    assert done.returncode == 2 and "recipe method 'sft'" in done.stderr and "Traceback" not in done.stderr
    assert "recipe method 'sft'" in (tmp_path / "output/failure").read_text()
    done = step("classify_compliance", tmp_path)
    assert done.returncode == 2 and "no run record" in done.stderr
    done = step("estimate_flops", tmp_path, "--instance-count=0")
    assert done.returncode == 2 and "InstanceCount 0: give 1 or more" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "instance, count, processes",
    [("ml.m5.xlarge", 1, 1), ("ml.g5.12xlarge", 2, 8), ("ml.p5.48xlarge", 1, 8), ("ml.x99.huge", 1, 8)],
)
def test_a_max_steps_plan_counts_every_process(tmp_path, instance, count, processes) -> None:
    """max_steps × per-device batch × accumulation × processes sequences: the GPUs of the instance type count."""
    est = tmp_path / "estimate"
    recipe = est / "processing/input/recipe/r.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(RECIPE.read_text() + "max_steps: 3\ngradient_accumulation_steps: 2\n")
    place(DATA, est / "processing/input/dataset")
    done = step("estimate_flops", est, f"--instance-type={instance}", f"--instance-count={count}")
    assert done.returncode == 0, done.stderr
    estimate = json.loads((est / "processing/output/estimate/estimate.json").read_text())
    assert estimate["planned_sequences"] == 3 * 4 * 2 * processes
    assert bool(estimate["notes"]) == (instance == "ml.x99.huge")  # a guess is said


def _tiny_unmeasurable_model(directory: Path) -> None:
    """A model channel the meter cannot count (JetMoE: experts outside transformers' dispatch), with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_families import build

    build("jetmoe").save_pretrained(directory)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{chr(c): c for c in range(33, 127)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")
    tokenizer.save_pretrained(directory)


def test_an_uncounted_run_keeps_its_model_and_fails_the_step(tmp_path) -> None:
    """Training runs (never broken by the meter), the model is saved, and then the step fails with the reason, so
    the pipeline registers no unmetered model."""
    train = tmp_path / "train"
    _tiny_unmeasurable_model(train / "input/data/model")
    recipe = train / "input/data/recipe/recipe.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(RECIPE.read_text().replace("base_model_id: tiny-llama", "base_model_id: example/tiny-jetmoe")
                      .replace("attn_implementation: sdpa", "attn_implementation: eager"))  # fmt: skip
    place(DATA, train / "input/data/train")
    done = step("train_with_meter", train)
    assert done.returncode == 2, done.stderr[-3000:]
    assert (train / "model/config.json").is_file() and (train / "model/flops_meter.json").is_file()
    assert "not counted" in done.stderr and "no unmetered model is registered" in done.stderr
    assert "Traceback" not in done.stderr
    assert "not counted" in (train / "output/failure").read_text()
    assert json.loads((train / "model/flops_meter.json").read_text())["status"] == "not_counted"
