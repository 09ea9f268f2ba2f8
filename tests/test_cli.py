"""`flops-meter estimate`: human and JSON output, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from meter.cli import main
from tests.reference import TINY_CONFIGS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output(capsys) -> None:
    code, out, _ = run(
        capsys, "estimate", "--model", "meta-llama/Llama-2-7b-hf", "--sequences", "1000", "--seq-len", "4096", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    for key in ("regulatory_flops", "executed_flops", "flops_per_token", "method", "model"):
        assert key in doc
    assert doc["method"] == "full" and doc["model"] == "meta-llama/Llama-2-7b-hf"
    assert doc["threshold"]["flops"] == pytest.approx(2.8e22) and doc["threshold"]["rule"] == "one_third_of_known"
    assert doc["tokens"] == 4_096_000 and doc["crosses_threshold"] is False
    assert set(doc["comparison"]) == {"full", "lora", "freeze"}
    assert doc["headroom_tokens"] == pytest.approx(doc["headroom_flops"] / doc["flops_per_token"])


def test_methods_and_options_change_the_count(capsys) -> None:
    base = ["estimate", "--model", "Qwen/Qwen2.5-7B", "--tokens", "1e6", "--seq-len", "2048", "--json"]
    full = json.loads(run(capsys, *base)[1])
    lora = json.loads(run(capsys, *base, "--method", "lora", "--lora-r", "8", "--lora-targets", "all-linear")[1])
    gc = json.loads(run(capsys, *base, "--gradient-checkpointing")[1])
    assert lora["regulatory_flops"] < full["regulatory_flops"] and lora["trainable_parameters"] < full["parameters"]
    assert gc["regulatory_flops"] == full["regulatory_flops"] and gc["executed_flops"] > full["executed_flops"]
    assert full["tokens"] == 1_000_000  # 488 full sequences and a remainder


def test_human_output(capsys) -> None:
    code, out, _ = run(
        capsys,
        "estimate",
        "--model",
        "meta-llama/Llama-3.1-405B-Instruct",
        "--sequences",
        "100",
        "--seq-len",
        "8192",
        "--method",
        "lora",
    )
    assert code == 0
    assert "1.3e+25 FLOP" in out  # one third of the reported 3.8e25
    assert "systemic risk" in out and "not legal advice" in out
    assert "lora r16" in out and "Below the threshold" in out


def test_crossing_plan_and_given_pretrain_compute(capsys) -> None:
    code, out, _ = run(
        capsys, "estimate", "--model", "tiny-llama", "--sequences", "10", "--seq-len", "64", "--pretrain-flops", "1e9"
    )
    assert code == 0 and "crosses the threshold" in out


def test_measure_fallback(capsys, tmp_path) -> None:
    pytest.importorskip("transformers")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(model_type="starcoder2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, vocab_size=256)))  # fmt: skip
    code, auto, err = run(capsys, "estimate", "--model", str(cfg), "--sequences", "2", "--seq-len", "32", "--json")
    assert code == 0, err  # outside the engine: measured on the meta device without being asked
    code, out, _ = run(
        capsys, "estimate", "--model", str(cfg), "--sequences", "2", "--seq-len", "32", "--json", "--measure"
    )
    assert code == 0 and json.loads(out)["regulatory_flops"] > 0
    assert json.loads(auto)["regulatory_flops"] == json.loads(out)["regulatory_flops"]
    code, _, err = run(capsys, "estimate", "--model", str(cfg), "--trainer", "dpo", "--sequences", "2",
                       "--prompt-len", "8", "--completion-len", "8")  # fmt: skip
    assert code == 2 and "unknown model_type 'starcoder2'" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seq-len", "0", "--sequences", "4"], "--seq-len must be a positive integer"),
        (["--tokens", "-5", "--seq-len", "8"], "--tokens must be a positive integer"),
        (["--sequences", "4", "--seq-len", "8", "--pretrain-flops", "nan"], "--pretrain-flops must be a finite"),
        (["--sequences", "4", "--seq-len", "8", "--pretrain-flops=-3e22"], "--pretrain-flops must be a finite"),
        (["--sequences", "4"], "--seq-len is required"),
        (["--sequences", "4", "--tokens", "9", "--seq-len", "8"], "exactly one of"),
        (["--sequences", "4", "--seq-len", "8", "--method", "freeze"], "--trainable"),
        (
            ["--sequences", "4", "--seq-len", "8", "--method", "lora", "--lora-targets", "nothing_here"],
            "match no linear",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message) -> None:
    code, _out, err = run(capsys, "estimate", "--model", "tiny-llama", *argv)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_config_missing_a_field_and_unknown_ids(capsys, tmp_path) -> None:
    cfg = dict(TINY_CONFIGS["llama"])
    del cfg["num_hidden_layers"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for model, message in [
        (str(tmp_path / "config.json"), "missing required field(s): num_hidden_layers"),
        ("acme/unknown-7b", "huggingface.co/acme/unknown-7b"),
        ("unknown-7b", "unknown model 'unknown-7b'"),
    ]:
        code, _, err = run(capsys, "estimate", "--model", model, "--sequences", "1", "--seq-len", "8")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_models_listing(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0 and "meta-llama/Llama-3.1-405B" in out and "3.8e+25" in out


def test_console_script_entrypoint() -> None:
    exe = shutil.which("flops-meter") or shutil.which(
        "flops-meter", path=str(__import__("pathlib").Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("package not installed (pip install -e .)")
    done = subprocess.run(
        [exe, "estimate", "--model", "tiny-llama", "--sequences", "2", "--seq-len", "0"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    done = subprocess.run(
        [exe, "estimate", "--model", "tiny-llama", "--sequences", "2", "--seq-len", "16", "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["tokens"] == 32
