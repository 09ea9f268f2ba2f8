"""The requests the governed pipeline makes, against SageMaker's own API model (botocore's service shapes).

moto accepts any request; botocore checks types and required members only. These tests hold every request the
pipeline makes to the enums, lengths and patterns of the service model, so a definition SageMaker would refuse
(after deployment, often after training was paid for) fails here.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

if importlib.util.find_spec("sagemaker") is None:
    pytest.skip("needs the SageMaker SDK (pip install 'flops-meter[pipeline]')", allow_module_level=True)

from pipelines.config import PipelineConfig
from pipelines.governed import build
from pipelines.requests import definition_problems, problems

KEY = "arn:aws:kms:eu-central-1:111122223333:key/0f0e0d0c-1111-2222-3333-444455556666"


from tests.definitions import steps_by_name as steps  # noqa: E402  (every step, branches included)


@pytest.fixture(scope="module")
def deployed():
    """A definition as a deployment builds it: a key, spot training, another region."""
    config = PipelineConfig(region="eu-south-1", kms_key_id=KEY, spot_training=True, max_runtime_seconds=7200)
    return json.loads(build(config).definition)


def test_every_step_request_is_one_sagemaker_accepts(deployed) -> None:
    assert definition_problems(build().definition) == []
    assert definition_problems(deployed) == []


def test_the_checker_finds_what_sagemaker_refuses() -> None:
    """The checker is not vacuous: each of these was a real refusal (enum, pattern, length, required, type)."""
    found = problems(
        "CreateModelPackage",
        {
            "ModelPackageGroupName": "flops-meter-models",
            "ModelApprovalStatus": "Approve",
            "CustomerMetadataProperties": {"flops_meter:approver": "O'Brien, Mary (DPO)"},
            "ModelPackageDescription": "x" * 1025,
        },
    )
    assert len(found) == 3 and "'Approve' is not one of" in found[0]
    assert "does not match the API pattern" in found[1] and "above the maximum 1024" in found[2]
    found = problems("CreateTrainingJob", {"RoleArn": "r", "ResourceConfig": {"InstanceType": "ml.g5.2xl"}})
    assert any("OutputDataConfig: required" in p for p in found)
    assert any("'ml.g5.2xl' is not one of" in p for p in found)
    assert any("RoleArn: length 1 is below the minimum 20" in p for p in found)
    assert problems("UpdateModelPackage", {"ModelPackageArn": "a", "ApprovalDescription": "ok\nthen"})
    # pipeline expressions are resolved at run time: not checked, never reported
    assert problems("CreateModelPackage", {"ModelPackageGroupName": {"Get": "Parameters.Group"}}) == []


def test_volume_keys_only_where_sagemaker_accepts_them(deployed) -> None:
    """ml.g5/g6/p4d/p5 … refuse VolumeKmsKeyId (local NVMe storage, encrypted by the hardware). The training
    instance type is a run-time parameter, so the training job gets none; the processing jobs (ml.m5) get the key."""
    found = steps(deployed)
    train = found["TrainWithMeter"]["Arguments"]
    assert "VolumeKmsKeyId" not in train["ResourceConfig"]
    assert train["OutputDataConfig"]["KmsKeyId"] == KEY  # the artifacts stay encrypted with the stack's key
    for name in ("EstimateFLOPs", "ClassifyCompliance", "PublishAudit"):
        cluster = found[name]["Arguments"]["ProcessingResources"]["ClusterConfig"]
        assert cluster["VolumeKmsKeyId"] == KEY and cluster["InstanceType"] == "ml.m5.xlarge"


def test_a_fixed_nvme_instance_type_gets_no_volume_key() -> None:
    from sagemaker.core.common_utils import instance_supports_kms

    from steps.factories import StepContext, volume_key

    ctx = StepContext(session=None, role="r", image_uri="i", code_uri="c", kms_key_id=KEY)
    assert not instance_supports_kms("ml.g5.2xlarge") and instance_supports_kms("ml.m5.xlarge")  # the SDK's list
    assert volume_key(ctx, "ml.g5.2xlarge") is None and volume_key(ctx, "ml.p5.48xlarge") is None
    assert volume_key(ctx, "ml.m5.xlarge") == KEY


def test_spot_training_with_a_wait_and_retries(deployed) -> None:
    train = steps(deployed)["TrainWithMeter"]
    args = train["Arguments"]
    assert args["EnableManagedSpotTraining"] is True
    assert args["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert args["CheckpointConfig"]["S3Uri"]  # where an interrupted job resumes from
    kinds = [t for policy in train["RetryPolicies"] for t in policy["ExceptionType"]]
    assert len(kinds) == len(set(kinds))  # each exception type in one policy
    assert {"SageMaker.CAPACITY_ERROR", "SageMaker.JOB_INTERNAL_ERROR", "Step.THROTTLING"} <= set(kinds)
    publish = [t for p in steps(deployed)["PublishAudit"]["RetryPolicies"] for t in p["ExceptionType"]]
    assert "SageMaker.JOB_INTERNAL_ERROR" not in publish  # a publication is not repeated blindly


def test_images_are_resolved_for_the_region(deployed) -> None:
    found = steps(deployed)
    training = found["TrainWithMeter"]["Arguments"]["AlgorithmSpecification"]["TrainingImage"]
    processing = found["EstimateFLOPs"]["Arguments"]["AppSpecification"]["ImageUri"]
    # eu-south-1's DLC registry account, not the one most regions share
    assert training.startswith("692866216735.dkr.ecr.eu-south-1.amazonaws.com/huggingface-pytorch-training:")
    assert "transformers5.3.0" in training and "-gpu-" in training
    assert processing.startswith("692866216735.dkr.ecr.eu-south-1.amazonaws.com/huggingface-pytorch-inference:")
    assert "-cpu-" in processing


def test_an_unpublished_region_is_a_one_line_error() -> None:
    from meter.errors import MeterError

    with pytest.raises(MeterError, match="set training_image in the pipeline config"):
        PipelineConfig(region="xx-nowhere-1").image("training")
    assert (
        PipelineConfig(training_image="1.dkr.ecr.{region}.amazonaws.com/x:1")
        .image("training")
        .startswith("1.dkr.ecr.us-east-1.")
    )


# -- the training job as SageMaker runs it -------------------------------------------------------------------------


def test_the_training_job_runs_through_the_sdks_own_drivers(tmp_path) -> None:
    """sm_train.sh, environment.py and the torchrun driver from the definition's sm_drivers channel, with the code
    bundle, the demo data and recipe as channels, as SageMaker lays them out. Under `make contract` the interpreter
    is the one pinned to the training image's libraries: what the job would import there, it imports here."""
    import sys
    from pathlib import Path

    from tests import container

    governed = build()
    opt_ml = tmp_path / "opt_ml"
    command, env = container.prepare(governed, opt_ml)
    drivers = opt_ml / "input" / "data" / "sm_drivers"
    assert json.loads((drivers / "sourcecode.json").read_text())["requirements"] is None  # nothing pip-installed
    assert not (opt_ml / "input" / "data" / "code" / "requirements.txt").exists()
    done = container.run(command, env, opt_ml, Path(sys.executable).parent)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Running Torchrun Driver" in log and "Installing requirements" not in log
    record = json.loads((opt_ml / "output" / "data" / "flops_meter.json").read_text())
    assert record["status"] == "completed" and record["flops"]["regulatory"] > 0
    assert (opt_ml / "model" / "flops_meter.json").is_file()  # the model directory carries it too


def test_the_bundle_never_replaces_the_images_libraries() -> None:
    """The old failure: the bundle pinned transformers 5.23, SageMaker's driver installed it over the image's torch
    2.5.1, and transformers 5 disables torch below 2.6. Now the bundle installs nothing, the meter's declared range
    holds each image's versions, and each image pairs transformers 5 with a torch it accepts."""
    import importlib.metadata

    from packaging.requirements import Requirement

    from pipelines.code import code_bundle
    from pipelines.images import IMAGES

    assert not [f for f in code_bundle().files if f.endswith(("requirements.txt", "setup.py", "pyproject.toml"))]
    ours = [Requirement(r) for r in importlib.metadata.requires("flops-meter")]  # as pyproject.toml declares them
    declared = {r.name: r.specifier for r in ours if r.marker is None or r.marker.evaluate({"extra": "hf"})}
    for kind in ("training", "processing"):
        image = IMAGES[kind]
        for name in ("torch", "transformers", "peft"):
            assert declared[name].contains(image.library(name)), (kind, name, image.library(name))
    # transformers' own declared torch requirement (its "torch" extra): the images' torch meets it; the first
    # round's image (torch 2.5.1 under a transformers 5.23 pin) does not
    wants = next(
        Requirement(r).specifier
        for r in importlib.metadata.requires("transformers")
        if Requirement(r).name == "torch" and 'extra == "torch"' in r
    )
    assert all(wants.contains(IMAGES[kind].library("torch")) for kind in ("training", "processing")), wants
    if importlib.metadata.version("transformers") == "5.23.0":
        assert not wants.contains("2.5.1")
