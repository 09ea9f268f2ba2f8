"""The governed pipeline on one machine: the three demo paths, LoRA, and the runner's errors and interruption."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("sagemaker") is None:
    pytest.skip("needs the SageMaker SDK (pip install 'flops-meter[pipeline]')", allow_module_level=True)
pytest.importorskip("transformers")

from meter.audit.store import open_store
from meter.errors import MeterError
from pipelines.local import LocalRegistry, LocalRunner
from pipelines.local.governed import load_execution, run_governed

ROOT = Path(__file__).resolve().parent.parent


def statuses(execution) -> dict[str, str]:
    return {name: s.status for name, s in execution.states.items()}


def property_file(execution, step: str, file: str) -> dict:
    return execution.states[step].property_files[file]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's three paths, in order, on one local home (the lineage adds up across them)."""
    home = tmp_path_factory.mktemp("home")
    lines: list[str] = []
    below = run_governed(home, {}, quiet=True, echo=lines.append)
    preflight = run_governed(home, {"PretrainFlops": "1e9"}, quiet=True, echo=lines.append)
    crossing = run_governed(home, {"PretrainFlops": "1e9", "AllowPlannedCrossing": "true"}, quiet=True)
    return home, below, preflight, crossing, lines


def test_below_the_threshold_registers_for_approval(demo) -> None:
    home, below, *_ = demo
    assert below.status == "Succeeded" and below.exit_code == 0
    assert statuses(below) == {
        "EstimateFLOPs": "Succeeded",
        "PreflightGate": "Succeeded",
        "PlanCrossesThreshold": "Skipped",
        "TrainWithMeter": "Succeeded",
        "ClassifyCompliance": "Succeeded",
        "PublishAudit": "Succeeded",
        "RegistrationGate": "Succeeded",
        "RegisterModel": "Succeeded",
        "RegistrationBlocked": "Skipped",
    }
    compliance = property_file(below, "ClassifyCompliance", "ComplianceReport")
    audit = property_file(below, "PublishAudit", "AuditReport")
    estimate = property_file(below, "EstimateFLOPs", "EstimateReport")
    assert compliance["crossed"] is False and compliance["regulatory_flops"] == estimate["planned_regulatory_flops"]
    [package] = LocalRegistry(home / "registry.db").packages("flops-meter-models")
    assert package["approval_status"] == "PendingManualApproval"
    assert package["metadata"]["flops_meter:regulatory_flops"] == str(compliance["regulatory_flops"])
    assert package["metadata"]["flops_meter:record_sha256"] == audit["record_sha256"]
    assert package["model_data_url"].endswith("/output/model.tar.gz")
    assert (home / "objects" / package["model_data_url"][5:]).is_file()
    record = open_store(f"file://{home / 'audit'}").get(audit["record_sha256"])
    assert record["run"]["flops"]["regulatory"] == compliance["regulatory_flops"]


def test_a_crossing_plan_stops_before_training(demo) -> None:
    _, _, preflight, *_ = demo
    assert preflight.status == "Failed" and preflight.exit_code == 1
    s = statuses(preflight)
    assert s["PlanCrossesThreshold"] == "Failed" and s["TrainWithMeter"] == "Skipped" and s["PublishAudit"] == "Skipped"
    assert "Pre-flight gate" in preflight.failure and "AllowPlannedCrossing=true" in preflight.failure
    assert not (preflight.run_dir / "steps" / "TrainWithMeter").exists()  # no training was paid for


def test_an_allowed_crossing_trains_publishes_and_is_blocked(demo) -> None:
    home, _, _, crossing, _ = demo
    assert crossing.status == "Failed" and crossing.exit_code == 1
    s = statuses(crossing)
    assert s["TrainWithMeter"] == s["PublishAudit"] == "Succeeded"
    assert s["RegistrationBlocked"] == "Failed" and s["RegisterModel"] == "Skipped"
    audit = property_file(crossing, "PublishAudit", "AuditReport")
    assert "Registration blocked" in crossing.failure and audit["record_uri"] in crossing.failure
    compliance = property_file(crossing, "ClassifyCompliance", "ComplianceReport")
    assert compliance["crossed"] and compliance["prior_lineage_flops"] > 0  # the first run counts in the lineage
    assert len(LocalRegistry(home / "registry.db").packages()) == 1  # only the first run was registered
    store = open_store(f"file://{home / 'audit'}")
    assert store.verify().ok and audit["sequence"] == 2
    # the blocked run is flagged for a decision: its record, its report, the model that was not registered
    (item,) = store.documents("flagged")
    assert audit["flagged_item"] == item["id"] == audit["record_sha256"][:12]
    assert item["verdict"] == compliance["status"] and item["blocked"] is True
    assert item["record_sha256"] == audit["record_sha256"] and item["record_uri"] == audit["record_uri"]
    model = crossing.states["TrainWithMeter"].properties["ModelArtifacts.S3ModelArtifacts"]
    assert item["model_uri"] == model and model.endswith("model.tar.gz")
    assert item["report_uri"].endswith("/compliance/compliance.json")
    assert property_file(demo[1], "PublishAudit", "AuditReport")["flagged_item"] == ""  # below: nothing to decide


def test_lora_counts_differently_with_the_same_verdict_logic(demo, tmp_path) -> None:
    _, below, *_ = demo
    lora = run_governed(tmp_path, {"TrainingMethod": "lora"}, quiet=True)
    assert lora.status == "Succeeded"
    full_flops = property_file(below, "ClassifyCompliance", "ComplianceReport")["regulatory_flops"]
    lora_report = property_file(lora, "ClassifyCompliance", "ComplianceReport")
    assert lora_report["crossed"] is False and 0 < lora_report["regulatory_flops"] < full_flops
    assert (
        lora_report["regulatory_flops"]
        == property_file(lora, "EstimateFLOPs", "EstimateReport")["planned_regulatory_flops"]
    )
    # what is registered can be served: the adapter merged into a whole model at the top (TGI loads HF_MODEL_ID
    # /opt/ml/model, where SageMaker unpacks model.tar.gz), the adapter alone under adapter/
    import tarfile

    from transformers import AutoModelForCausalLM

    archive = lora.run_dir / "steps" / "TrainWithMeter" / "model.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "served", filter="data")
    assert {"config.json", "model.safetensors", "adapter/adapter_config.json", "flops_meter.json"} <= {
        n.removeprefix("./") for n in names
    }
    assert not (tmp_path / "served" / "adapter_config.json").exists()
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "served")
    assert not any("lora" in name for name, _ in served.named_parameters())


def test_progress_and_logs(demo) -> None:
    home, below, _, _, lines = demo
    assert "▶ TrainWithMeter (Training)" in lines and any(line.startswith("✔ TrainWithMeter") for line in lines)
    # quiet: the steps' output stays in their logs, but the meter's progress lines are shown
    assert any(line.startswith("  TrainWithMeter │ flops_meter: cumulative_flops=") for line in lines)
    log = (below.run_dir / "steps" / "TrainWithMeter" / "log.txt").read_text()
    assert "flops_meter: cumulative_flops=" in log
    doc = load_execution(below.execution_id, home)
    assert doc["status"] == "Succeeded" and doc["steps"][0]["name"] == "EstimateFLOPs"


# -- the runner's errors --------------------------------------------------------------------------------------------


def processing(name: str, code: str, outputs: tuple[str, ...] = (), **extra) -> dict:
    return {
        "Name": name,
        "Type": "Processing",
        "Arguments": {
            "AppSpecification": {"ContainerEntrypoint": ["python3", "-c", code], "ImageUri": "local"},
            "ProcessingInputs": [],
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": o,
                        "S3Output": {"S3Uri": f"s3://b/{name}/{o}", "LocalPath": f"/opt/ml/processing/output/{o}"},
                    }
                    for o in outputs
                ]
            },
        },
        **extra,
    }


def definition(*steps, parameters=()) -> dict:
    return {"Version": "2020-12-01", "Parameters": list(parameters), "Steps": list(steps)}


def test_unknown_step_type_is_named(tmp_path) -> None:
    bad = definition(processing("A", "pass"), {"Name": "Tune", "Type": "Tuning", "Arguments": {}})
    with pytest.raises(MeterError, match="step Tune: type Tuning is not supported"):
        LocalRunner(tmp_path).run(bad)


def test_a_cycle_is_named(tmp_path) -> None:
    a = processing("A", "pass", DependsOn=["B"])
    b = processing("B", "pass", DependsOn=["A"])
    with pytest.raises(MeterError, match="dependency cycle among steps A, B"):
        LocalRunner(tmp_path).run(definition(a, b))


def test_a_missing_parameter_is_named(tmp_path) -> None:
    d = definition(processing("A", "pass"), parameters=[{"Name": "DatasetS3Uri", "Type": "String"}])
    with pytest.raises(MeterError, match="parameter DatasetS3Uri has no default: give --param DatasetS3Uri=VALUE"):
        LocalRunner(tmp_path).run(d)
    with pytest.raises(MeterError, match="unknown parameter"):
        LocalRunner(tmp_path).run(d, {"Nope": "1", "DatasetS3Uri": "s3://x"})


def test_a_property_file_the_step_did_not_write_fails_the_step(tmp_path) -> None:
    files = [{"PropertyFileName": "Report", "OutputName": "out", "FilePath": "report.json"}]
    d = definition(processing("Writes", "print('nothing written')", ("out",), PropertyFiles=files))
    execution = LocalRunner(tmp_path, quiet=True).run(d)
    assert execution.status == "Failed" and execution.exit_code == 1
    assert execution.failure == "step Writes: did not write property file Report (out/report.json)"


def test_sigint_leaves_a_consistent_run_and_names_the_step(tmp_path) -> None:
    first = processing("Quick", "print('done')")
    slow = processing("Slow", "import time; print('sleeping', flush=True); time.sleep(60)", DependsOn=["Quick"])
    path = tmp_path / "d.json"
    path.write_text(json.dumps(definition(first, slow)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "meter.cli", "pipeline", "run", "--local", "--definition", str(path)]
    proc = subprocess.Popen([*cmd, "--home", str(tmp_path / "home"), "--run-dir", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        state = run_dir / "execution.json"
        if state.is_file() and '"Executing"' in state.read_text() and "sleeping" in _log(run_dir / "steps/Slow"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    doc = json.loads((run_dir / "execution.json").read_text())
    assert doc["status"] == "Stopped" and doc["failure"] == "interrupted during step Slow"
    assert {s["name"]: s["status"] for s in doc["steps"]} == {"Quick": "Succeeded", "Slow": "Stopped"}
    assert "interrupted during step Slow" in out


def _log(step_dir: Path) -> str:
    log = step_dir / "log.txt"
    return log.read_text() if log.is_file() else ""


def test_cli_run_exit_codes_and_status(tmp_path, capsys) -> None:
    from meter.cli import main as cli

    d = definition(processing("A", "import sys; sys.exit(3)"))
    path = tmp_path / "d.json"
    path.write_text(json.dumps(d))
    home = tmp_path / "home"
    assert cli(["pipeline", "run", "--local", "--definition", str(path), "--home", str(home), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "step A: exit status 3" in out
    run_id = next((home / "runs").iterdir()).name
    assert cli(["pipeline", "status", run_id, "--home", str(home)]) == 1
    assert "Failed" in capsys.readouterr().out
    assert cli(["pipeline", "status", "nope", "--home", str(home)]) == 2
    assert "no run nope" in capsys.readouterr().err
    assert cli(["pipeline", "run", "--local", "--definition", str(tmp_path / "missing.json")]) == 2


def test_local_runs_and_the_audit_commands_share_one_default_store(demo, tmp_path, monkeypatch, capsys) -> None:
    """From one directory, `pipeline run --local` writes where `audit` (and `approvals`) read, with no flags."""
    import shutil

    from meter.cli import main
    from pipelines.config import DEFAULT_HOME
    from pipelines.local.governed import local_store_uri

    home = demo[0]
    monkeypatch.delenv("FLOPS_METER_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert local_store_uri(Path(DEFAULT_HOME)) == f"file://{tmp_path / DEFAULT_HOME / 'audit'}"
    shutil.copytree(home / "audit", tmp_path / DEFAULT_HOME / "audit")  # what the demo's runs wrote
    assert open_store().root.resolve() == tmp_path / DEFAULT_HOME / "audit"
    assert main(["audit", "verify"]) == 0
    assert "2 record" in capsys.readouterr().out
    monkeypatch.setenv("FLOPS_METER_STORE", "file://elsewhere")
    assert local_store_uri(Path(DEFAULT_HOME)) == "file://elsewhere"
    assert local_store_uri(Path(DEFAULT_HOME), "file://given") == "file://given"


def test_a_model_from_s3_trains_and_plans_without_the_hub(tmp_path) -> None:
    """ModelS3Uri: a private model directory in S3 (weights, config, tokenizer), no hub access at all."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pipelines.config import PipelineConfig

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = (ROOT / "steps" / "demo" / "train.jsonl").read_text()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    bucket = PipelineConfig().bucket
    model_dir = tmp_path / "objects" / bucket / "models" / "private-llama"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # any hub access fails
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run = run_governed(
            tmp_path,
            {"BaseModelId": "acme/private-llama", "ModelS3Uri": f"s3://{bucket}/models/private-llama",
             "PretrainFlops": "1e21"},
            quiet=True,
        )  # fmt: skip
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert run.status == "Succeeded", statuses(run)
    planned = property_file(run, "EstimateFLOPs", "EstimateReport")["planned_regulatory_flops"]
    assert planned == property_file(run, "ClassifyCompliance", "ComplianceReport")["regulatory_flops"] > 0
    # EstimateFLOPs received the config and tokenizer files, never the weights
    received = run.run_dir / "steps" / "EstimateFLOPs" / "opt_ml" / "processing" / "input"
    assert not list(received.rglob("*.safetensors")) and (received / "model" / "config.json").is_file()
