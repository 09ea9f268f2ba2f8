"""A SageMaker training container, simulated: the job's request run through the SDK's own driver scripts.

SageMaker starts a training job by downloading each channel to ``/opt/ml/input/data/<channel>``, writing
``/opt/ml/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`` and running the request's
``ContainerEntrypoint`` + ``ContainerArguments``: for a ModelTrainer job, ``sm_train.sh`` from the ``sm_drivers``
channel, which runs the SDK's ``environment.py``, installs ``requirements`` if any, and starts the torchrun driver.
Here the same files run unchanged except that ``/opt/ml`` is rewritten to a temporary directory (the scripts name
it literally), with the interpreter and torchrun of a virtual environment pinned to the image's libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

DRIVER_SUFFIXES = (".sh", ".py", ".json")


def _artifact_for(uri: str, artifacts: dict[str, Any], bucket: str) -> tuple[Any, str]:
    """The artifact at an S3 URI of the definition, and the file below its prefix that the URI names (if any)."""
    key = uri.removeprefix(f"s3://{bucket}/")
    for prefix, artifact in artifacts.items():
        if key == prefix or key.startswith(prefix + "/"):
            return artifact, key[len(prefix) :].strip("/")
    raise AssertionError(f"no artifact at {uri}")


def prepare(governed, opt_ml: Path, params: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Lay out ``opt_ml`` as SageMaker would for the pipeline's training job; returns (command, environment)."""
    definition = json.loads(governed.definition)
    defaults = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    values = {**defaults, **(params or {})}

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"Get"} and value["Get"].startswith("Parameters."):
            return values[value["Get"].removeprefix("Parameters.")]
        return value

    from tests.definitions import steps_by_name

    args = next(s for s in steps_by_name(definition).values() if s["Type"] == "Training")["Arguments"]
    bucket = governed.config.bucket
    data = opt_ml / "input" / "data"
    channels = {}
    for channel in args["InputDataConfig"]:
        name = channel["ChannelName"]
        artifact, inner = _artifact_for(resolve(channel["DataSource"]["S3DataSource"]["S3Uri"]), governed.artifacts,
                                        bucket)  # fmt: skip
        for rel, content in artifact.files.items():
            if inner and rel != inner:
                continue
            target = data / name / Path(rel).name if inner else data / name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == "sm_drivers" and rel.endswith(DRIVER_SUFFIXES):  # the scripts name /opt/ml literally
                content = content.replace(b"/opt/ml", str(opt_ml).encode())
            target.write_bytes(content)
        channels[name] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
    config = opt_ml / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    hps = {k: str(resolve(v)) for k, v in args.get("HyperParameters", {}).items()}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    instance = str(resolve(args["ResourceConfig"]["InstanceType"]))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": instance,
        "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance,
                             "hosts": ["algo-1"]}],
    }))  # fmt: skip
    for sub in ("model", "output/data", "checkpoints"):
        (opt_ml / sub).mkdir(parents=True, exist_ok=True)
    spec = args["AlgorithmSpecification"]
    command = [*spec["ContainerEntrypoint"], *spec["ContainerArguments"]]
    command = [c.replace("/opt/ml", str(opt_ml)) for c in command]
    env = {k: str(resolve(v)).replace("/opt/ml", str(opt_ml)) for k, v in args.get("Environment", {}).items()}
    return command, env


def run(command: list[str], env: dict[str, str], opt_ml: Path, bin_dir: Path, timeout: int = 600):
    """Run the container command with ``bin_dir``'s python3, pip and torchrun first on PATH."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SM_", "PYTHON"))},
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TRAINING_JOB_NAME": "flops-meter-contract",
        "OPT_ML": str(opt_ml),  # our steps' own paths follow the rewritten /opt/ml (the drivers' are rewritten)
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(command, env=environment, cwd=opt_ml, capture_output=True, text=True, timeout=timeout)
