"""The steps' contract: one declaration per step, read on both sides of the container boundary.

A step's container arguments (a training job's hyperparameters), its inputs and outputs under ``/opt/ml``, and the
property file that pipeline conditions read are declared here once. ``steps.factories`` builds the SDK step from
the declaration (arguments, inputs, outputs, PropertyFile); the entrypoint builds its parser from it and validates
the property file against its JSON Schema (``steps/schemas/<file>.v1.json``) before writing it; and
``pipelines.governed`` takes its ``JsonGet`` paths from the declared keys. Standard library only at import: the
training containers have no SageMaker SDK (jsonschema is imported when a property file is validated).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from meter.errors import MeterError
from steps.common import MODEL_INPUTS, opt_ml, write_json

OPT_ML = "/opt/ml"
SAGEMAKER_OWN = ("sagemaker_", "_")  # hyperparameters SageMaker adds itself (tuning, legacy estimators): not ours


class ContractError(Exception):
    """A step wrote what its contract does not allow, or a factory passed what the step does not declare: a bug."""


@dataclass(frozen=True)
class Argument:
    """A container argument ``--name=value``, or a training hyperparameter ``name`` (a string, as SageMaker passes
    hyperparameters). ``by_hand``: for a person running the entrypoint; the factory never passes it."""

    name: str
    help: str = ""
    type: type = str
    default: Any = ""
    required: bool = False
    by_hand: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Output:
    """A directory a step writes (``path`` in the container), and the file in it the next steps read.
    ``env``: the SageMaker variable that names the directory inside a training job, where there is one."""

    name: str
    path: str
    file: str = ""
    env: str = ""


# The keys of each property file that pipeline conditions read with JsonGet (JSON paths, dotted). The schemas hold
# more; these must be in them (tests/test_step_contract.py), so a renamed key fails a test, not an execution.
@dataclass(frozen=True)
class EstimateKeys:
    gate_passed: str = "gate_passed"
    crosses: str = "crosses"
    planned_regulatory_flops: str = "planned_regulatory_flops"
    threshold_flops: str = "threshold_flops"
    threshold_rule: str = "threshold_rule"
    cumulative: str = "verdict.figures.cumulative"  # the plan with the lineage's recorded compute, as text
    threshold: str = "verdict.figures.threshold"  # as text, e.g. "3.3e+22 FLOP"


@dataclass(frozen=True)
class ComplianceKeys:
    crossed: str = "crossed"
    status: str = "status"
    regulatory_flops: str = "regulatory_flops"
    threshold_flops: str = "threshold_flops"


@dataclass(frozen=True)
class AuditKeys:
    record_uri: str = "record_uri"
    record_sha256: str = "record_sha256"
    flagged_item: str = "flagged_item"
    model_card: str = "model_card"
    # the verdict sealed at publication, which the registration gate reads
    crossed: str = "crossed"
    status: str = "status"
    threshold_rule: str = "threshold_rule"
    cumulative: str = "figures.cumulative"
    threshold: str = "figures.threshold"
    regulatory_flops: str = "metadata.regulatory_flops"  # exact integers as strings (model package metadata)
    cumulative_flops: str = "metadata.cumulative_flops"
    threshold_flops: str = "metadata.threshold_flops"


@dataclass(frozen=True)
class PropertyFile:
    """A step's JSON output that the pipeline reads: its PropertyFileName, the output it is in, its schema."""

    name: str
    output: Output
    schema_file: str
    keys: Any  # one of the *Keys above

    @property
    def path(self) -> str:
        return self.output.file

    def paths(self) -> tuple[str, ...]:
        return tuple(getattr(self.keys, f.name) for f in fields(self.keys))

    def schema(self) -> dict[str, Any]:
        return _schema(self.schema_file)

    def validate(self, doc: dict[str, Any]) -> None:
        """Raise ContractError naming the first place ``doc`` departs from the schema."""
        import jsonschema

        validator = jsonschema.Draft202012Validator(self.schema())
        error = next(iter(sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(document)"
            raise ContractError(f"{self.path} does not match {self.schema_file} at {where}: {error.message}")


@cache
def _schema(file: str) -> dict[str, Any]:
    return json.loads((resources.files("steps") / "schemas" / file).read_text())


@dataclass(frozen=True)
class StepContract:
    """One step: the entrypoint module, its arguments, its inputs (name -> container path), outputs, property file.

    ``training``: the arguments are hyperparameters and the inputs channels (a TrainingStep), else a ProcessingStep.
    ``description``: the step's, in the pipeline definition and the entrypoint's ``--help``.
    """

    name: str
    module: str
    arguments: tuple[Argument, ...]
    inputs: dict[str, str]
    outputs: tuple[Output, ...]
    property_file: PropertyFile | None = None
    training: bool = False
    description: str = ""

    def argument(self, dest: str) -> Argument:
        found = next((a for a in self.arguments if a.dest == dest), None)
        if found is None:
            raise ContractError(f"{self.name} declares no argument {dest}: it takes {', '.join(self.dests())}")
        return found

    def dests(self) -> list[str]:
        return [a.dest for a in self.arguments]

    def output(self, name: str) -> Output:
        found = next((o for o in self.outputs if o.name == name), None)
        if found is None:
            raise ContractError(f"{self.name} declares no output {name}")
        return found

    # -- the entrypoint's side ---------------------------------------------------------------------------------

    def parser(self) -> argparse.ArgumentParser:
        """The entrypoint's parser: exactly the declared arguments, ``--name=value`` or ``--name value``."""
        p = argparse.ArgumentParser(prog=self.module.rsplit(".", 1)[-1], description=self.description)
        for a in self.arguments:
            p.add_argument(f"--{a.name}", type=a.type, default=a.default, required=a.required, help=a.help or None)
        return p

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        return self.parser().parse_args(argv)

    def hyperparameters(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A training job's hyperparameters: every declared one (its default when not given), typed; an undeclared
        one is refused (a misspelt PretrainFlops would otherwise be silently ignored). Strings stay as SageMaker
        delivered them (its drivers may have decoded JSON)."""
        unknown = sorted(k for k in raw if k not in self.dests() and not k.startswith(SAGEMAKER_OWN))
        if unknown:
            raise MeterError(
                f"unknown hyperparameter(s) {', '.join(unknown)}: {self.name} takes {', '.join(self.dests())}"
            )
        values = {}
        for a in self.arguments:
            value = raw.get(a.name, a.default)
            if a.type is not str and value is not None:
                try:
                    value = a.type(value)
                except (TypeError, ValueError):
                    raise MeterError(f"hyperparameter {a.name}: expected {a.type.__name__}, got {value!r}") from None
            values[a.dest] = value
        return values

    def input(self, name: str) -> Path:
        """Where a declared input is on this machine (``$OPT_ML`` for /opt/ml; a training channel's SM_CHANNEL_*)."""
        if name not in self.inputs:
            raise ContractError(f"{self.name} declares no input {name}: it reads {', '.join(self.inputs)}")
        env = os.environ.get(f"SM_CHANNEL_{name.upper()}") if self.training else None
        return Path(env) if env else local(self.inputs[name])

    def output_dir(self, name: str) -> Path:
        """Where a declared output directory is on this machine (a training job's SM_MODEL_DIR …, else $OPT_ML)."""
        output = self.output(name)
        return Path(os.environ.get(output.env) or local(output.path)) if output.env else local(output.path)

    def write_report(self, doc: dict[str, Any]) -> Path:
        """Validate the property file against its schema, then write it where the pipeline reads it."""
        if self.property_file is None:
            raise ContractError(f"{self.name} declares no property file")
        self.property_file.validate(doc)
        return write_json(self.output_dir(self.property_file.output.name) / self.property_file.path, doc)


def local(container_path: str) -> Path:
    """A container path under /opt/ml on this machine: under ``$OPT_ML`` outside SageMaker."""
    return opt_ml() / Path(container_path).relative_to(OPT_ML)


def _processing_input(name: str) -> str:
    return f"{OPT_ML}/processing/input/{name}"


def _processing_output(name: str, file: str) -> Output:
    return Output(name, f"{OPT_ML}/processing/output/{name}", file)


# -- arguments more than one step takes ------------------------------------------------------------------------
BASE_MODEL_ID = Argument("base-model-id", "Hugging Face id of the original model; empty: the recipe's (or the run's)")
PRETRAIN_FLOPS = Argument("pretrain-flops", "the original's training compute in FLOP; empty: the bundled table")
ORIGINAL_SYSTEMIC_RISK = Argument(
    "original-systemic-risk", "true if the original is a GPAI model with systemic risk", default="false"
)
APPROACHING_FRACTION = Argument(
    "approaching-fraction", "share of the threshold from which a run is approaching", type=float, default=0.8
)
LINEAGE = Argument("lineage", "count with this lineage's recorded compute")
STORE_URI = Argument("store-uri", "the audit store (file://DIR or s3://BUCKET/PREFIX?table=NAME): the lineage's runs")

ESTIMATE_OUTPUT = _processing_output("estimate", "estimate.json")
COMPLIANCE_OUTPUT = _processing_output("compliance", "compliance.json")
AUDIT_OUTPUT = _processing_output("audit", "audit.json")

ESTIMATE = StepContract(
    name="EstimateFLOPs",
    module="steps.estimate_flops",
    description="Planned regulatory FLOPs of the recipe on the dataset, against the one-third threshold",
    arguments=(
        BASE_MODEL_ID,
        Argument("training-method", "full or lora; empty or recipe: the recipe's own method"),
        PRETRAIN_FLOPS,
        ORIGINAL_SYSTEMIC_RISK,
        APPROACHING_FRACTION,
        Argument("allow-planned-crossing", "true: the gate passes a plan that crosses", default="false"),
        Argument("world-size", "training processes; 0: from the instances", type=int, default=0, by_hand=True),
        Argument("instance-type", "training instance type (its GPUs are the processes per node)"),
        Argument("instance-count", "training instances", type=int, default=1),
        LINEAGE,
        STORE_URI,
    ),
    # code: the bundle (steps/launch.py runs from it); model, tokenizer, tokenizer-config: one file each of a model
    # directory (steps.common.MODEL_INPUTS), never its weights
    inputs={name: _processing_input(name) for name in ("code", "recipe", "dataset", *MODEL_INPUTS)},
    outputs=(ESTIMATE_OUTPUT,),
    property_file=PropertyFile("EstimateReport", ESTIMATE_OUTPUT, "estimate.v1.json", EstimateKeys()),
)

TRAIN = StepContract(
    name="TrainWithMeter",
    module="steps.train_with_meter",
    description="Fine-tunes with the FLOPs meter on (compute_flops: true); one total per job",
    training=True,
    arguments=(
        Argument("base_model_id", "Hugging Face id of the original model; empty: the recipe's"),
        Argument("training_method", "full or lora; empty or recipe: the recipe's own method"),
        Argument("pretrain_flops", "the original's training compute in FLOP; empty: $PRETRAIN_FLOPS or the table"),
        Argument("original_systemic_risk", "true if the original is a GPAI model with systemic risk"),
        Argument("save_steps", "checkpoint every this many optimizer steps", type=int, default=500, by_hand=True),
        Argument("recipe", "a recipe file instead of the recipe channel", by_hand=True),
    ),
    inputs={name: f"{OPT_ML}/input/data/{name}" for name in ("train", "recipe", "model")},
    outputs=(
        Output("model", f"{OPT_ML}/model", "flops_meter.json", env="SM_MODEL_DIR"),  # the model, with its record
        Output("data", f"{OPT_ML}/output/data", "flops_meter.json", env="SM_OUTPUT_DATA_DIR"),  # output.tar.gz
    ),
)

CLASSIFY = StepContract(
    name="ClassifyCompliance",
    module="steps.classify_compliance",
    description="The run's verdict under the one-third rule, with the lineage's recorded compute",
    arguments=(BASE_MODEL_ID, PRETRAIN_FLOPS, ORIGINAL_SYSTEMIC_RISK, LINEAGE, STORE_URI, APPROACHING_FRACTION),
    inputs={name: _processing_input(name) for name in ("code", "run")},
    outputs=(COMPLIANCE_OUTPUT,),
    property_file=PropertyFile("ComplianceReport", COMPLIANCE_OUTPUT, "compliance.v1.json", ComplianceKeys()),
)

PUBLISH = StepContract(
    name="PublishAudit",
    module="steps.publish_audit",
    description="Writes the run record and verdict to the append-only audit store",
    arguments=(
        STORE_URI,
        Argument("dataset-uri", "the dataset's URI, recorded with the hash of its files"),
        Argument("revision", "the original model's revision", by_hand=True),
        Argument("git-commit", "the code's git commit", by_hand=True),
        Argument("container-image", "the image that ran the training"),
        Argument("bundle-sha256", "SHA-256 of the code bundle the steps ran (its content address)"),
        Argument("model-uri", "the trained model artifact (named by a flagged item)"),
        Argument("report-uri", "where the compliance report is (named by a flagged item)"),
        Argument("model-package-group", "where an approval registers the model"),
        Argument("inference-image", "the serving image an approval registers the model with"),
    ),
    inputs={name: _processing_input(name) for name in ("code", "run", "compliance", "dataset")},
    outputs=(AUDIT_OUTPUT,),
    property_file=PropertyFile("AuditReport", AUDIT_OUTPUT, "audit.v1.json", AuditKeys()),
)

STEPS: tuple[StepContract, ...] = (ESTIMATE, TRAIN, CLASSIFY, PUBLISH)
