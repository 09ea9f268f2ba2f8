"""One declared contract per step (steps/contract.py): the entrypoints parse exactly what it declares, the factories
pass exactly that, the definition holds its outputs and property files, and every JsonGet path the governed pipeline
reads is in its property file's schema."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meter.errors import MeterError
from steps.contract import CLASSIFY, ESTIMATE, PUBLISH, STEPS, TRAIN, ContractError, StepContract
from tests.definitions import steps_by_name

ROOT = Path(__file__).resolve().parent.parent
PROCESSING = [c for c in STEPS if not c.training]
needs_sdk = pytest.mark.skipif(importlib.util.find_spec("sagemaker") is None, reason="needs the SageMaker SDK")


def entrypoint(module: str, *args: str, env: dict | None = None, opt_ml: Path | None = None):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "FLOPS_METER_NVML": "0",
        **({"OPT_ML": str(opt_ml)} if opt_ml else {}),
        **(env or {}),
    }
    return subprocess.run([sys.executable, "-m", module, *args], env=environment, capture_output=True, text=True,
                          timeout=300, cwd=opt_ml or ROOT)  # fmt: skip


# -- the entrypoints' side ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contract", PROCESSING, ids=lambda c: c.name)
def test_entrypoints_accept_exactly_the_declared_arguments(contract: StepContract) -> None:
    done = entrypoint(contract.module, "--help")
    assert done.returncode == 0, done.stderr
    options = set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", done.stdout)) - {"help"}
    assert options == {a.name for a in contract.arguments}
    done = entrypoint(contract.module, "--not-declared=1")
    assert done.returncode == 2 and "unrecognized arguments: --not-declared=1" in done.stderr


def test_declared_types_and_defaults_reach_the_parser() -> None:
    args = ESTIMATE.parse(["--approaching-fraction=0.5", "--instance-count", "3", "--pretrain-flops="])
    assert args.approaching_fraction == 0.5 and args.instance_count == 3 and args.world_size == 0
    assert args.pretrain_flops == "" and args.original_systemic_risk == "false"
    assert vars(PUBLISH.parse([])) == {a.dest: a.default for a in PUBLISH.arguments}


def test_training_hyperparameters_are_the_declared_ones() -> None:
    hps = TRAIN.hyperparameters({"pretrain_flops": "3.8e25", "save_steps": "50", "sagemaker_program": "x"})
    assert hps == {
        "base_model_id": "",
        "training_method": "",
        "pretrain_flops": "3.8e25",
        "original_systemic_risk": "",
        "save_steps": 50,
        "recipe": "",
    }
    with pytest.raises(MeterError, match=r"unknown hyperparameter\(s\) pretrain_flop:"):
        TRAIN.hyperparameters({"pretrain_flop": "3.8e25"})  # misspelt: refused, never silently ignored
    with pytest.raises(MeterError, match="save_steps: expected int"):
        TRAIN.hyperparameters({"save_steps": "often"})


def test_the_training_entrypoint_refuses_an_undeclared_hyperparameter(tmp_path) -> None:
    pytest.importorskip("transformers")
    done = entrypoint(TRAIN.module, env={"SM_HPS": json.dumps({"pretrain_flop": "1e9"})}, opt_ml=tmp_path)
    assert done.returncode == 2 and "unknown hyperparameter(s) pretrain_flop" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_property_file_off_its_schema_is_not_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPT_ML", str(tmp_path))
    with pytest.raises(ContractError, match=r"estimate\.json does not match estimate\.v1\.json at \(document\): "):
        ESTIMATE.write_report({"gate_passed": True})
    figures = {"this_run": "1.0e+09 FLOP", "cumulative": "1.0e+09 FLOP", "threshold": "3.3e+22 FLOP"}
    audit = {
        "record_uri": "file:///audit/records/x.json",
        "record_sha256": "0" * 64,
        "created": True,
        "lineage": "demo",
        "sequence": 1,
        "status": "downstream_modifier",
        "crossed": False,
        "threshold_rule": "fallback_gpai",
        "figures": figures,
        "metadata": {"regulatory_flops": "1", "cumulative_flops": "1", "threshold_flops": "3", "status": "x"},
        "flagged_item": "",
        "model_card": "{}",
    }
    PUBLISH.property_file.validate(audit)
    with pytest.raises(ContractError, match=r"audit\.json does not match audit\.v1\.json at record_sha256"):
        PUBLISH.property_file.validate({**audit, "record_sha256": "not a hash"})
    with pytest.raises(ContractError, match=r"at metadata/threshold_flops: 3 is not of type 'string'"):
        PUBLISH.property_file.validate({**audit, "metadata": {**audit["metadata"], "threshold_flops": 3}})
    assert not list(tmp_path.rglob("*.json"))


def test_the_schemas_travel_with_the_code() -> None:
    from pipelines.code import code_bundle

    files = code_bundle().files
    for contract in PROCESSING:
        assert f"steps/schemas/{contract.property_file.schema_file}" in files
    package_data = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^steps = \[.*"schemas/\*\.json"', package_data, re.M)


# -- the factories' side: the governed definition -------------------------------------------------------------------


def schema_holds(schema: dict, path: str) -> bool:
    """Whether a dotted JSON path is a property at every level of the schema, and required there (a condition must
    find it), following local $refs."""
    node = schema
    for key in path.split("."):
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if key not in node.get("properties", {}) or key not in node.get("required", []):
            return False
        node = node["properties"][key]
    return True


@pytest.fixture(scope="module")
def definition() -> dict:
    if importlib.util.find_spec("sagemaker") is None:
        pytest.skip("needs the SageMaker SDK (pip install 'flops-meter[pipeline]')")
    from pipelines.config import PipelineConfig
    from pipelines.governed import build

    return json.loads(build(PipelineConfig()).definition)


def resolve(value, params: dict):
    """Parameters and Std:Join as SageMaker resolves them; another step's property as a stand-in string."""
    if isinstance(value, dict) and "Get" in value:
        ref = value["Get"]
        return str(params[ref.split(".", 1)[1]]) if ref.startswith("Parameters.") else f"<{ref}>"
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        return join["On"].join(resolve(v, params) for v in join["Values"])
    return value


def jsongets(node) -> list[tuple[str, str]]:
    """Every (PropertyFileName, Path) a definition reads with JsonGet."""
    found = []
    if isinstance(node, dict):
        if "Std:JsonGet" in node:
            get = node["Std:JsonGet"]
            found.append((get["PropertyFile"]["Get"].rsplit(".", 1)[1], get["Path"]))
        for value in node.values():
            found += jsongets(value)
    elif isinstance(node, list):
        for value in node:
            found += jsongets(value)
    return found


@pytest.mark.parametrize("contract", PROCESSING, ids=lambda c: c.name)
def test_the_factorys_container_arguments_parse_with_the_entrypoints_parser(definition, contract) -> None:
    params = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    app = steps_by_name(definition)[contract.name]["Arguments"]["AppSpecification"]
    assert app["ContainerEntrypoint"][-1] == contract.module
    given = [resolve(a, params) for a in app["ContainerArguments"]]
    assert all(a.startswith("--") and "=" in a for a in given)
    passed = [a.name for a in contract.arguments if not a.by_hand]
    assert [a.split("=", 1)[0][2:] for a in given] == passed  # every one the factory passes, in declared order
    contract.parse(given)  # argparse exits (SystemExit) on anything undeclared or mistyped


def test_the_training_steps_hyperparameters_are_the_declared_ones(definition) -> None:
    params = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    hps = steps_by_name(definition)[TRAIN.name]["Arguments"]["HyperParameters"]
    assert sorted(hps) == sorted(a.name for a in TRAIN.arguments if not a.by_hand)
    TRAIN.hyperparameters({k: resolve(v, params) for k, v in hps.items()})


def test_publish_audit_is_given_the_code_bundles_address(definition) -> None:
    params = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    app = steps_by_name(definition)[PUBLISH.name]["Arguments"]["AppSpecification"]
    args = PUBLISH.parse([resolve(a, params) for a in app["ContainerArguments"]])
    assert args.bundle_sha256 == definition["Metadata"]["flops_meter"]["code"]
    assert "pytorch-training" in args.container_image  # the image that trained


@pytest.mark.parametrize("contract", PROCESSING, ids=lambda c: c.name)
def test_every_declared_input_output_and_property_file_is_in_the_definition(definition, contract) -> None:
    step = steps_by_name(definition)[contract.name]
    inputs = {i["InputName"]: i["S3Input"]["LocalPath"] for i in step["Arguments"]["ProcessingInputs"]}
    assert inputs == contract.inputs
    outputs = step["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    assert {o["OutputName"]: o["S3Output"]["LocalPath"] for o in outputs} == {o.name: o.path for o in contract.outputs}
    pf = contract.property_file
    assert step["PropertyFiles"] == [{"PropertyFileName": pf.name, "OutputName": pf.output.name, "FilePath": pf.path}]


def test_the_training_steps_channels_are_the_declared_ones(definition) -> None:
    step = steps_by_name(definition)[TRAIN.name]["Arguments"]
    channels = {c["ChannelName"] for c in step["InputDataConfig"]}
    assert channels - {"code", "sm_drivers"} == set(TRAIN.inputs)  # code, sm_drivers: the SDK's own


def test_every_jsonget_path_is_in_its_property_files_schema(definition) -> None:
    files = {c.property_file.name: c.property_file for c in PROCESSING}
    read = jsongets(definition)
    assert {"gate_passed", "crossed", "record_sha256", "metadata.threshold_flops"} <= {path for _, path in read}
    for file, path in read:
        assert path in files[file].paths(), f"{file}: {path} is not declared in steps/contract.py"
        assert schema_holds(files[file].schema(), path), f"{file}: {path} is not a required key of its schema"


@pytest.mark.parametrize("contract", PROCESSING, ids=lambda c: c.name)
def test_every_declared_key_is_in_the_schema(contract: StepContract) -> None:
    pf = contract.property_file
    assert pf.paths() and all(schema_holds(pf.schema(), path) for path in pf.paths())
    assert pf.schema()["$id"].endswith(pf.schema_file)


def test_readers_refuse_an_undeclared_key() -> None:
    if importlib.util.find_spec("sagemaker") is None:
        pytest.skip("needs the SageMaker SDK")
    from pipelines.governed import _reader

    class Step:
        name = CLASSIFY.name

    read = _reader(Step(), CLASSIFY.property_file)
    assert read(CLASSIFY.property_file.keys.crossed).expr["Std:JsonGet"]["Path"] == "crossed"
    with pytest.raises(ValueError, match=r"ComplianceReport declares no key verdict\.crossed"):
        read("verdict.crossed")


# -- the code's identity in a published record -----------------------------------------------------------------------


@needs_sdk
@pytest.mark.slow
def test_a_local_runs_record_holds_the_code_bundles_hash(tmp_path) -> None:
    pytest.importorskip("transformers")
    from meter.audit.store import open_store
    from pipelines.code import code_bundle
    from pipelines.local.governed import run_governed

    execution = run_governed(tmp_path, {}, quiet=True)
    assert execution.status == "Succeeded", execution.failure
    audit = execution.states[PUBLISH.name].property_files[PUBLISH.property_file.name]
    record = open_store(f"file://{tmp_path / 'audit'}").get(audit["record_sha256"])
    ran = json.loads((execution.run_dir / "definition.json").read_text())["Metadata"]["flops_meter"]["code"]
    assert record["code"]["bundle_sha256"] == ran == code_bundle().sha256  # the bundle the run's steps ran
    assert record["code"]["container_image"] and record["code"]["git_commit"] is None
