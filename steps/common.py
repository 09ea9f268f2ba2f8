"""What every step entrypoint shares: SageMaker's /opt/ml root, arguments, and how errors end a step.

The root is ``/opt/ml`` in a SageMaker container and ``$OPT_ML`` anywhere else, so the very same entrypoint runs
on one machine (the local runner, the tests) with its inputs and outputs under a directory of its own; each step's
paths under it are declared in steps/contract.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meter.errors import MeterError


def opt_ml() -> Path:
    return Path(os.environ.get("OPT_ML", "/opt/ml"))


# What EstimateFLOPs receives of a model directory (processing input -> file), never its weights; the factory
# builds the inputs from it, the entrypoint reads them back
MODEL_INPUTS = {"model": "config.json", "tokenizer": "tokenizer.json", "tokenizer-config": "tokenizer_config.json"}
# what a model directory's files say when no model was given (the pipeline's default ModelS3Uri): use the hub
HUB_MARKER = {"flops_meter_model_source": "hub"}


def given_model(directory: Path) -> Path | None:
    """The model directory a step was given (its config.json), or None: load the model id from the hub (no model
    given, or the pipeline's stand-in that says so)."""
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        marked = json.loads(config.read_text()) == HUB_MARKER
    except (ValueError, AttributeError):
        return directory  # not ours: the loader reports what is wrong with it
    return None if marked else directory


def hub_token() -> None:
    """The Hugging Face token for gated models, from AWS Secrets Manager (``HF_TOKEN_SECRET_ARN``: a secret holding
    the token, or JSON with an ``HF_TOKEN`` key), into ``HF_TOKEN`` where the hub client reads it. Never logged."""
    arn = os.environ.get("HF_TOKEN_SECRET_ARN")
    if not arn or os.environ.get("HF_TOKEN"):
        return
    try:
        import boto3

        from meter.audit.aws import boto_config

        secret = boto3.client("secretsmanager", config=boto_config()).get_secret_value(SecretId=arn)["SecretString"]
    except Exception as e:  # any failure: one line naming the secret, never a traceback
        problem = f"{type(e).__name__}: {e}".split("\n")[0]
        raise MeterError(f"cannot read the Hugging Face token from {arn}: {problem}") from None
    try:
        token = json.loads(secret)["HF_TOKEN"]
    except (ValueError, KeyError, TypeError):
        token = secret.strip()
    os.environ["HF_TOKEN"] = token


def checkpoint_dir() -> Path:
    return opt_ml() / "checkpoints"


def hyperparameters() -> dict[str, Any]:
    """SageMaker passes hyperparameters as strings in SM_HPS (JSON) and in input/config/hyperparameters.json."""
    raw = os.environ.get("SM_HPS")
    path = opt_ml() / "input" / "config" / "hyperparameters.json"
    if raw:
        return json.loads(raw)
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def one_file(directory: Path, patterns: tuple[str, ...], what: str) -> Path:
    """The single input file of a kind in a step's input directory (or the path itself when it is a file)."""
    if directory.is_file():
        return directory
    found = sorted(p for pattern in patterns for p in directory.glob(pattern)) if directory.is_dir() else []
    if not found:
        raise MeterError(f"no {what} in {directory}: expected {' or '.join(patterns)}")
    return found[0]


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def run_step(main: Callable[[], int | None]) -> None:
    """Run an entrypoint: bad input ends the step with one line and exit status 2, written also to SageMaker's
    failure file (the reason shown in the console); anything else is a bug and keeps its traceback."""
    try:
        code = main() or 0
    except MeterError as e:
        message = f"{Path(sys.argv[0]).stem}: error: {e}"
        print(message, file=sys.stderr)
        try:
            failure = opt_ml() / "output" / "failure"
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(message + "\n")
        except OSError:
            pass
        code = 2
    sys.exit(code)


def read_run_record(directory: Path) -> dict[str, Any]:
    """The meter's run record from a step input: flops_meter.json, or inside model.tar.gz / output.tar.gz."""
    import tarfile

    if directory.is_dir():
        direct = sorted(directory.rglob("flops_meter.json"))
        if direct:
            return json.loads(direct[0].read_text())
        for archive in sorted(directory.rglob("*.tar.gz")):
            with tarfile.open(archive) as tar:
                member = next((m for m in tar.getmembers() if Path(m.name).name == "flops_meter.json"), None)
                if member is not None:
                    return json.loads(tar.extractfile(member).read())
    elif directory.is_file():
        return json.loads(directory.read_text())
    raise MeterError(f"no run record in {directory}: expected flops_meter.json or a model.tar.gz holding it")
