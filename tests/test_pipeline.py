"""The governed pipeline: its definition's structure, determinism and offline build; upsert and start via moto."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("sagemaker") is None:  # importing it here would build AWS clients: only look
    pytest.skip("needs the SageMaker SDK (pip install 'flops-meter[pipeline]')", allow_module_level=True)

from meter.cli import main as cli
from pipelines.config import PipelineConfig
from pipelines.governed import PARAMETERS, build
from tests.definitions import steps_by_name

ROOT = Path(__file__).resolve().parent.parent
PARAMETER_NAMES = [
    "BaseModelId",
    "PretrainFlops",
    "OriginalIsSystemicRisk",
    "TrainingMethod",
    "DatasetS3Uri",
    "RecipeS3Uri",
    "ModelS3Uri",
    "InstanceType",
    "InstanceCount",
    "ApproachingFraction",
    "AllowPlannedCrossing",
]


class NetworkCall(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt or name lookup fails the test."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise NetworkCall(f"network call during an offline build: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


@pytest.fixture(scope="module")
def governed():
    return build()


@pytest.fixture(scope="module")
def doc(governed):
    return json.loads(governed.definition)


def test_build_makes_no_network_call_and_leaves_logging_alone(no_network) -> None:
    import logging

    root = logging.getLogger()
    before = (root.level, list(root.handlers), logging.root.manager.disable)
    text = build(PipelineConfig(bucket="other-bucket")).definition
    assert no_network == [] and "s3://other-bucket/" in text
    assert (root.level, list(root.handlers), logging.root.manager.disable) == before


def test_parameters_are_the_documented_ones_with_demo_defaults(doc) -> None:
    params = {p["Name"]: p for p in doc["Parameters"]}
    assert list(params) == PARAMETER_NAMES == list(PARAMETERS)
    assert params["BaseModelId"]["DefaultValue"] == "tiny-llama"
    assert params["PretrainFlops"]["DefaultValue"] == ""
    assert params["AllowPlannedCrossing"]["DefaultValue"] == "false"
    assert params["InstanceCount"] == {"Name": "InstanceCount", "Type": "Integer", "DefaultValue": 1}
    assert params["ApproachingFraction"]["Type"] == "Float"
    # closed sets are enums: Studio offers only these, SageMaker refuses others at StartPipelineExecution
    assert params["TrainingMethod"]["EnumValues"] == ["recipe", "full", "lora"]
    assert params["TrainingMethod"]["DefaultValue"] == "recipe"  # the recipe's own method unless overridden
    assert params["AllowPlannedCrossing"]["EnumValues"] == params["OriginalIsSystemicRisk"]["EnumValues"]
    assert params["DatasetS3Uri"]["DefaultValue"].startswith("s3://flops-meter-artifacts/flops-meter/demo-dataset/")
    assert params["RecipeS3Uri"]["DefaultValue"].endswith("/demo.yaml")
    described = doc["Metadata"]["flops_meter"]["parameters"]
    assert set(described) == set(PARAMETER_NAMES) and all(len(t) > 10 for t in described.values())


def test_structure_four_steps_gates_and_registration(doc) -> None:
    steps = steps_by_name(doc)
    assert [s["Name"] for s in doc["Steps"]] == ["EstimateFLOPs", "PreflightGate"]
    assert {k: steps[k]["Type"] for k in steps} == {
        "EstimateFLOPs": "Processing",
        "PreflightGate": "Condition",
        "TrainWithMeter": "Training",
        "ClassifyCompliance": "Processing",
        "PublishAudit": "Processing",
        "RegistrationGate": "Condition",
        "RegisterModel": "RegisterModel",
        "RegistrationBlocked": "Fail",
        "PlanCrossesThreshold": "Fail",
    }
    # pre-flight gate: the plan's gate_passed, before training; the else branch fails the execution
    gate = steps["PreflightGate"]["Arguments"]
    assert gate["Conditions"] == [
        {
            "Type": "Equals",
            "LeftValue": {
                "Std:JsonGet": {
                    "PropertyFile": {"Get": "Steps.EstimateFLOPs.PropertyFiles.EstimateReport"},
                    "Path": "gate_passed",
                }
            },
            "RightValue": True,
        }
    ]
    assert [s["Name"] for s in gate["IfSteps"]] == [
        "TrainWithMeter",
        "ClassifyCompliance",
        "PublishAudit",
        "RegistrationGate",
    ]
    assert [s["Name"] for s in gate["ElseSteps"]] == ["PlanCrossesThreshold"]
    # registration gate on the sealed verdict's `crossed` (PublishAudit's, recomputed atomically with the append:
    # two jobs of one lineage classified at once cannot both pass), so the record exists either way
    reg = steps["RegistrationGate"]
    assert reg["Arguments"]["Conditions"][0]["LeftValue"] == {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.PublishAudit.PropertyFiles.AuditReport"},
            "Path": "crossed",
        }
    }
    assert reg["Arguments"]["Conditions"][0]["RightValue"] is False
    assert reg["DependsOn"] == ["PublishAudit"]
    assert [s["Name"] for s in reg["Arguments"]["IfSteps"]] == ["RegisterModel"]
    assert [s["Name"] for s in reg["Arguments"]["ElseSteps"]] == ["RegistrationBlocked"]
    register = steps["RegisterModel"]["Arguments"]
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    # the group the deployed roles allow, fixed: a free-text parameter failed at RegisterModel after training
    assert register["ModelPackageGroupName"] == "flops-meter-models"
    assert register["InferenceSpecification"]["Containers"][0]["Environment"] == {"HF_MODEL_ID": "/opt/ml/model"}
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == {
        "Get": "Steps.TrainWithMeter.ModelArtifacts.S3ModelArtifacts"
    }
    metadata = register["CustomerMetadataProperties"]
    assert set(metadata) >= {
        "flops_meter:regulatory_flops",
        "flops_meter:threshold_flops",
        "flops_meter:status",
        "flops_meter:record_uri",
        "flops_meter:record_sha256",
    }
    assert metadata["flops_meter:record_sha256"]["Std:JsonGet"]["PropertyFile"] == {
        "Get": "Steps.PublishAudit.PropertyFiles.AuditReport"
    }
    message = json.dumps(steps["RegistrationBlocked"]["Arguments"]["ErrorMessage"])
    assert "Registration blocked" in message and "record_uri" in message and "threshold" in message


def test_property_files_and_step_wiring(doc) -> None:
    steps = steps_by_name(doc)
    files = {
        name: [(p["PropertyFileName"], p["OutputName"], p["FilePath"]) for p in steps[name].get("PropertyFiles", [])]
        for name in ("EstimateFLOPs", "ClassifyCompliance", "PublishAudit")
    }
    assert files == {
        "EstimateFLOPs": [("EstimateReport", "estimate", "estimate.json")],
        "ClassifyCompliance": [("ComplianceReport", "compliance", "compliance.json")],
        "PublishAudit": [("AuditReport", "audit", "audit.json")],
    }
    for name in ("EstimateFLOPs", "ClassifyCompliance", "PublishAudit"):
        app = steps[name]["Arguments"]["AppSpecification"]
        module = "steps." + {"EstimateFLOPs": "estimate_flops", "ClassifyCompliance": "classify_compliance"}.get(
            name, "publish_audit"
        )
        assert app["ContainerEntrypoint"] == ["python3", "/opt/ml/processing/input/code/steps/launch.py", module]
    inputs = {
        i["InputName"]: i["S3Input"]["S3Uri"] for i in steps["ClassifyCompliance"]["Arguments"]["ProcessingInputs"]
    }
    # the run record alone (the job's output.tar.gz), never the model: a 70B model is not downloaded to read 10 KB
    assert inputs["run"] == {
        "Std:Join": {
            "On": "/",
            "Values": [
                {"Get": "Steps.TrainWithMeter.OutputDataConfig.S3OutputPath"},
                {"Get": "Steps.TrainWithMeter.TrainingJobName"},
                "output",
                "output.tar.gz",
            ],
        }
    }
    train = steps["TrainWithMeter"]["Arguments"]
    assert {"Name": "flops_meter:cumulative_flops", "Regex": "flops_meter: cumulative_flops=([0-9]+)"} in train[
        "AlgorithmSpecification"
    ]["MetricDefinitions"]
    assert train["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.InstanceCount"}
    channels = {c["ChannelName"] for c in train["InputDataConfig"]}
    assert channels == {"train", "recipe", "code", "sm_drivers", "model"}


def test_definition_is_small_and_byte_identical(governed) -> None:
    assert len(governed.definition) < 1_048_576
    assert build().definition == governed.definition
    # and in a fresh process, through the CLI (temp paths, hash seeds and import order differ there)
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-m", "meter.cli", "pipeline", "definition"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == governed.definition and out.stderr == ""


def test_code_address_covers_the_code(governed) -> None:
    from pipelines.code import code_bundle

    bundle = code_bundle()
    assert doc_code_sha(governed) == bundle.sha256
    assert "steps/launch.py" in bundle.files and "meter/schemas/audit_record.v1.json" in bundle.files
    assert not any("__pycache__" in p for p in bundle.files)
    changed = type(bundle)("code", {**bundle.files, "steps/launch.py": bundle.files["steps/launch.py"] + b"#"})
    assert changed.sha256 != bundle.sha256


def doc_code_sha(governed) -> str:
    return json.loads(governed.definition)["Metadata"]["flops_meter"]["code"]


def resolve(value, params: dict):
    """Parameters and Std:Join, as SageMaker resolves them in container arguments."""
    if isinstance(value, dict) and "Get" in value and value["Get"].startswith("Parameters."):
        return str(params[value["Get"].split(".", 1)[1]])
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        return join["On"].join(resolve(v, params) for v in join["Values"])
    return value


def test_estimate_step_runs_with_the_definitions_arguments(doc, tmp_path) -> None:
    """The container arguments as rendered (``--name=value``, empty values included) drive the real entrypoint."""
    steps = steps_by_name(doc)
    params = {p["Name"]: p["DefaultValue"] for p in doc["Parameters"]}
    app = steps["EstimateFLOPs"]["Arguments"]["AppSpecification"]
    arguments = [resolve(a, params) for a in app["ContainerArguments"]]
    arguments = [a for a in arguments if not a.startswith("--store-uri=")]  # the demo's S3 store: not here
    opt_ml = tmp_path / "opt_ml"
    (opt_ml / "processing/input/recipe").mkdir(parents=True)
    (opt_ml / "processing/input/recipe/demo.yaml").write_bytes((ROOT / "steps/recipes/demo.yaml").read_bytes())
    (opt_ml / "processing/input/dataset").mkdir(parents=True)
    (opt_ml / "processing/input/dataset/train.jsonl").write_bytes((ROOT / "steps/demo/train.jsonl").read_bytes())
    env = {**os.environ, "OPT_ML": str(opt_ml)}
    command = [
        sys.executable,
        str(ROOT / app["ContainerEntrypoint"][1].split("/input/code/")[1]),
        *app["ContainerEntrypoint"][2:],
    ]
    out = subprocess.run([*command, *arguments], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    estimate = json.loads((opt_ml / "processing/output/estimate/estimate.json").read_text())
    assert estimate["gate_passed"] is True and estimate["model"] == "tiny-llama"
    assert estimate["verdict"]["figures"]["threshold"] and estimate["threshold_rule"] == "fallback_gpai"


# -- against AWS APIs (moto server on 127.0.0.1) --------------------------------------------------------------------


@pytest.fixture
def account(moto_endpoint, tmp_path):
    import uuid

    import boto3

    name = f"fm-{uuid.uuid4().hex[:12]}"  # one moto server per session: names of this test's own
    config = {"bucket": name, "region": "eu-west-1", "pipeline_name": name}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config))
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    return path


ROLE = "arn:aws:iam::123456789012:role/pipeline"


def test_upsert_needs_the_code_uploaded_first(account, capsys) -> None:
    assert cli(["pipeline", "upsert", "--role", ROLE, "--config", str(account)]) == 2
    assert "run `flops-meter pipeline upload-code` first" in capsys.readouterr().err


def test_upload_upsert_start_against_moto(account, capsys) -> None:
    import boto3

    name = json.loads(account.read_text())["bucket"]

    assert cli(["pipeline", "upload-code", "--config", str(account)]) == 0
    first = capsys.readouterr().out
    assert f"code: s3://{name}/flops-meter/code/" in first and "uploaded" in first
    assert cli(["pipeline", "upload-code", "--config", str(account)]) == 0
    # code, sm_drivers, demo dataset and recipe, the hub stand-in: content-addressed, nothing written twice
    assert capsys.readouterr().out.count("already there") == 5

    s3 = boto3.client("s3", region_name="eu-west-1")
    code = build(PipelineConfig.load(account))
    key = next(k for k in code.artifacts if "/code/" in k)
    launcher = s3.get_object(Bucket=name, Key=f"{key}/steps/launch.py")["Body"].read()
    assert launcher == (ROOT / "steps/launch.py").read_bytes()

    assert cli(["pipeline", "upsert", "--role", ROLE, "--config", str(account)]) == 0
    assert "created arn:aws:sagemaker:eu-west-1:" in capsys.readouterr().out
    assert cli(["pipeline", "upsert", "--role", ROLE, "--config", str(account)]) == 0
    assert "updated" in capsys.readouterr().out
    sm = boto3.client("sagemaker", region_name="eu-west-1")
    described = sm.describe_pipeline(PipelineName=name)
    assert described["PipelineDefinition"] == code.definition and described["RoleArn"] == ROLE

    assert cli(["pipeline", "start", "--config", str(account), "--param", "TrainingMethod=lora"]) == 0
    arn = capsys.readouterr().out.strip()
    assert arn.startswith("arn:aws:sagemaker:eu-west-1:") and name in arn
    executions = sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in executions] == [arn]


@pytest.mark.parametrize(
    "param, message",
    [
        ("Foo=1", "unknown parameter"),
        ("InstanceCount=two", "expected integer"),
        ("AllowPlannedCrossing=yes", "expected one of false, true"),
        ("TrainingMethod=qlora", "expected one of recipe, full, lora"),
        ("BaseModelId", "write NAME=VALUE"),
    ],
)
def test_start_rejects_bad_parameters_before_any_call(param, message, capsys, no_network) -> None:
    assert cli(["pipeline", "start", "--param", param]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and no_network == []


def test_bad_config_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bucket: [1, 2]\nregion: eu-west-1\n")
    assert cli(["pipeline", "definition", "--config", str(bad)]) == 2
    assert "pipeline setting bucket must be a str" in capsys.readouterr().err
    assert cli(["pipeline", "definition", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    bad.write_text("buckett: x\n")
    assert cli(["pipeline", "definition", "--config", str(bad)]) == 2
    assert "unknown pipeline setting(s) buckett" in capsys.readouterr().err
