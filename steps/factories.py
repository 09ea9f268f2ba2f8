"""The four reusable steps as SageMaker SDK v3 step objects, for your own pipelines.

Each factory returns the SDK step; its container runs the entrypoint module of the same name (``steps.<name>``).
Inputs may be strings or pipeline variables (parameters, ``JsonGet``, step properties). The SDK is imported
inside the functions: the entrypoints run in training containers that do not have it. Container arguments,
hyperparameters, inputs, outputs and PropertyFiles are built from each step's declaration in ``steps.contract``,
the one the entrypoint parses with.

    ctx = StepContext(session=PipelineSession(), role=ROLE, image_uri=IMAGE, code_uri="s3://…/code/<sha>")
    estimate = estimate_flops_step(ctx, recipe_uri=..., dataset_uri=..., base_model_id="meta-llama/Llama-3.1-8B")
    train = train_with_meter_step(ctx, recipe_uri=..., dataset_uri=..., instance_type="ml.g5.2xlarge")
    classify = classify_compliance_step(ctx, run_record=record_uri(train), …)
    publish = publish_audit_step(ctx, run_record=record_uri(train), model_uri=…,
                                 compliance_uri=output_uri(classify, "compliance"), …)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steps.common import MODEL_INPUTS
from steps.contract import CLASSIFY, ESTIMATE, PUBLISH, TRAIN, Argument, ContractError, StepContract

CODE_DIR = ESTIMATE.inputs["code"]  # where every processing step gets the code bundle
# the PropertyFile names, as JsonGet names them
ESTIMATE_FILE, COMPLIANCE_FILE, AUDIT_FILE = (s.property_file.name for s in (ESTIMATE, CLASSIFY, PUBLISH))
METRICS = [  # the meter's log lines, charted by SageMaker (regulatory FLOPs so far; tokens)
    {"Name": "flops_meter:cumulative_flops", "Regex": r"flops_meter: cumulative_flops=([0-9]+)"},
    {"Name": "flops_meter:executed_flops", "Regex": r"executed_flops=([0-9]+)"},
    {"Name": "flops_meter:tokens", "Regex": r"flops_meter: .* tokens=([0-9]+)"},
]


@dataclass
class StepContext:
    """What every step needs: the (pipeline) session, the execution role, an image, and the code's S3 prefix
    (``code_sha256``: the bundle's content address, recorded by PublishAudit as the code's identity)."""

    session: Any
    role: str
    image_uri: str
    code_uri: str
    code_sha256: str = ""
    output_uri: Any = None  # where step outputs go: str or a pipeline variable (Join with the execution id)
    instance_type: Any = "ml.m5.xlarge"
    kms_key_id: str | None = None
    max_runtime_seconds: int = 24 * 3600
    volume_size_gb: Any = 30  # the processing jobs' volume (EstimateFLOPs downloads the dataset)
    env: dict[str, str] = field(default_factory=dict)


def volume_key(ctx: StepContext, instance_type: Any) -> str | None:
    """The KMS key for a job's storage volume, only where SageMaker accepts one: instance types with local NVMe
    storage (ml.g5, g6, p4d, p5 …) refuse ``VolumeKmsKeyId`` (their instance storage is encrypted by the
    hardware). An instance type chosen at run time (a pipeline parameter) may be one of them, so it gets none:
    its EBS volume, if any, is encrypted with SageMaker's AWS-managed key."""
    from sagemaker.core.common_utils import instance_supports_kms

    if not ctx.kms_key_id or not isinstance(instance_type, str):
        return None
    return ctx.kms_key_id if instance_supports_kms(instance_type) else None


def retry_policies(*, internal_errors: bool) -> list[Any]:
    """Retries, with exponential backoff, for throttling and for capacity (no instance free, account limits): the
    step waits rather than failing the execution. ``internal_errors``: also retry a job that failed inside
    SageMaker (the training job resumes from its checkpoints; the meter counts redone steps). Each exception type
    appears in one policy only."""
    from sagemaker.mlops.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )

    jobs = [SageMakerJobExceptionTypeEnum.CAPACITY_ERROR, SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT]
    if internal_errors:
        jobs.append(SageMakerJobExceptionTypeEnum.INTERNAL_ERROR)
    return [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.THROTTLING, StepExceptionTypeEnum.SERVICE_FAULT],
            interval_seconds=10, backoff_rate=2.0, max_attempts=5,
        ),
        SageMakerJobStepRetryPolicy(exception_types=jobs, interval_seconds=60, backoff_rate=2.0, max_attempts=6),
    ]  # fmt: skip


def arg(name: str, value: Any) -> Any:
    """``--name=value`` as one argument, also when value is a pipeline variable (and when it is empty)."""
    from sagemaker.core.helper.pipeline_variable import PipelineVariable
    from sagemaker.core.workflow.functions import Join

    if isinstance(value, PipelineVariable):
        return Join(on="", values=[f"--{name}=", value])
    return f"--{name}={value}"


def _passed(contract: StepContract, values: dict[str, Any]) -> list[Argument]:
    """The contract's arguments the factory passes (all but those given by hand), checked against ``values``."""
    passed = [a for a in contract.arguments if not a.by_hand]
    if sorted(values) != sorted(a.dest for a in passed):
        declared = [a.dest for a in passed]
        raise ContractError(f"{contract.name}: the factory passes {sorted(values)}, the contract declares {declared}")
    return passed


def arguments(contract: StepContract, values: dict[str, Any]) -> list[Any]:
    """A processing step's container arguments, in its contract's order, so the entrypoint's parser accepts each."""
    return [arg(a.name, values[a.dest]) for a in _passed(contract, values)]


def hyperparameters(contract: StepContract, values: dict[str, Any]) -> dict[str, Any]:
    """A training step's hyperparameters, by the contract's names."""
    return {a.name: values[a.dest] for a in _passed(contract, values)}


def _output(ctx: StepContext, name: str) -> Any:
    from sagemaker.core.helper.pipeline_variable import PipelineVariable
    from sagemaker.core.workflow.functions import Join

    if isinstance(ctx.output_uri, PipelineVariable):
        return Join(on="/", values=[ctx.output_uri, name])
    return f"{str(ctx.output_uri).rstrip('/')}/{name}"


def _processing_step(
    ctx: StepContext, contract: StepContract, name: str, inputs: dict[str, Any], values: dict[str, Any]
):
    """A ProcessingStep running ``contract.module``: its declared inputs (those given), outputs and property file,
    and ``values`` as its container arguments."""
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.steps import ProcessingStep

    processor = Processor(
        role=ctx.role,
        image_uri=ctx.image_uri,
        instance_count=1,
        instance_type=ctx.instance_type,
        entrypoint=["python3", f"{CODE_DIR}/steps/launch.py", contract.module],
        volume_size_in_gb=ctx.volume_size_gb,
        volume_kms_key=volume_key(ctx, ctx.instance_type),
        output_kms_key=ctx.kms_key_id,
        max_runtime_in_seconds=ctx.max_runtime_seconds,
        base_job_name=f"flops-meter-{contract.module.split('.')[-1].replace('_', '-')}",
        sagemaker_session=ctx.session,
        env={"PYTHONUNBUFFERED": "1", "FLOPS_METER_NVML": "0", **ctx.env},
    )
    inputs = {"code": ctx.code_uri, **inputs}
    undeclared = sorted(set(inputs) - set(contract.inputs))
    if undeclared:
        raise ContractError(f"{contract.name} declares no input {', '.join(undeclared)}")
    processing_inputs = [
        ProcessingInput(
            input_name=input_name,
            s3_input=ProcessingS3Input(
                s3_uri=inputs[input_name], local_path=path, s3_data_type="S3Prefix", s3_input_mode="File"
            ),
        )
        for input_name, path in contract.inputs.items()
        if inputs.get(input_name) is not None
    ]
    processing_outputs = [
        ProcessingOutput(
            output_name=output.name,
            s3_output=ProcessingS3Output(
                s3_uri=_output(ctx, output.name), local_path=output.path, s3_upload_mode="EndOfJob"
            ),
        )
        for output in contract.outputs
    ]
    step_args = processor.run(
        inputs=processing_inputs, outputs=processing_outputs, arguments=arguments(contract, values)
    )
    pf = contract.property_file
    property_files = [] if pf is None else [PropertyFile(name=pf.name, output_name=pf.output.name, path=pf.path)]
    return ProcessingStep(
        name=name,
        step_args=step_args,
        property_files=property_files,
        description=contract.description,
        retry_policies=retry_policies(internal_errors=False),
    )


def estimate_flops_step(
    ctx: StepContext,
    *,
    recipe_uri: Any,
    dataset_uri: Any,
    base_model_id: Any = "",
    training_method: Any = "",
    pretrain_flops: Any = "",
    original_systemic_risk: Any = "false",
    approaching_fraction: Any = 0.8,
    allow_planned_crossing: Any = "false",
    instance_type: Any = "",
    instance_count: Any = 1,
    lineage: Any = "",
    store_uri: Any = "",
    model_uri: Any = None,
    name: str = ESTIMATE.name,
):
    """ProcessingStep: the planned count and the threshold; PropertyFile ``EstimateReport`` (estimate.json).

    ``model_uri``: the model directory's S3 prefix (no trailing slash): only its config.json, tokenizer.json and
    tokenizer_config.json are downloaded, never the weights."""
    from sagemaker.core.workflow.functions import Join

    model = {}
    if model_uri is not None:
        model = {name: Join(on="/", values=[model_uri, file]) for name, file in MODEL_INPUTS.items()}
    return _processing_step(
        ctx,
        ESTIMATE,
        name,
        {"recipe": recipe_uri, "dataset": dataset_uri, **model},
        dict(
            base_model_id=base_model_id,
            training_method=training_method,
            pretrain_flops=pretrain_flops,
            original_systemic_risk=original_systemic_risk,
            approaching_fraction=approaching_fraction,
            allow_planned_crossing=allow_planned_crossing,
            instance_type=instance_type,
            instance_count=instance_count,
            lineage=lineage,
            store_uri=store_uri,
        ),
    )


def train_with_meter_step(
    ctx: StepContext,
    *,
    recipe_uri: Any,
    dataset_uri: Any,
    source_dir: str,
    base_model_id: Any = "",
    training_method: Any = "",
    pretrain_flops: Any = "",
    original_systemic_risk: Any = "false",
    instance_type: Any = "ml.g5.2xlarge",
    instance_count: Any = 1,
    volume_size_gb: Any = 100,
    spot: bool = False,
    max_wait_seconds: int | None = None,
    checkpoint_uri: Any = None,
    model_uri: Any = None,
    name: str = TRAIN.name,
):
    """TrainingStep via ModelTrainer: the bundled SFT script with the meter on, under torchrun on every node.

    ``spot``: managed spot training; an interrupted job resumes from its last checkpoint (synced to
    ``checkpoint_uri``), within ``max_wait_seconds`` (default: twice the maximum runtime). The same checkpoint
    location serves the step's retries and a retried execution (RetryPipelineExecution keeps the execution id).
    """
    from sagemaker.core.shapes import CheckpointConfig, MetricDefinition, OutputDataConfig, StoppingCondition
    from sagemaker.core.training.configs import Compute, InputData, SourceCode
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    class _OfflineModelTrainer(ModelTrainer):
        def _resolve_staging_bucket(self):
            # the SDK asks IAM (SimulatePrincipalPolicy) whether the role may write the default bucket; the
            # pipeline's bucket is given and its role is provisioned for it, so the definition needs no call
            return self.sagemaker_session.default_bucket(), None

    given = {"train": dataset_uri, "recipe": recipe_uri, "model": model_uri}
    channels = [InputData(channel_name=c, data_source=given[c]) for c in TRAIN.inputs if given[c] is not None]
    trainer = _OfflineModelTrainer(
        training_image=ctx.image_uri,
        role=ctx.role,
        sagemaker_session=ctx.session,
        base_job_name="flops-meter-train",
        # no requirements: the driver would pip-install them over the image's torch and transformers
        source_code=SourceCode(source_dir=source_dir, entry_script=TRAIN.module.replace(".", "/") + ".py"),
        distributed=Torchrun(),
        compute=Compute(
            instance_type=instance_type,
            instance_count=instance_count,
            volume_size_in_gb=volume_size_gb,
            volume_kms_key_id=volume_key(ctx, instance_type),
            enable_managed_spot_training=True if spot else None,
        ),
        hyperparameters=hyperparameters(
            TRAIN,
            dict(
                base_model_id=base_model_id,
                training_method=training_method,
                pretrain_flops=pretrain_flops,
                original_systemic_risk=original_systemic_risk,
            ),
        ),
        environment={
            "PYTHONPATH": "/opt/ml/input/data/code",  # torchrun runs the script by path: make `steps` importable
            "PYTHONUNBUFFERED": "1",
            **ctx.env,
        },
        output_data_config=OutputDataConfig(s3_output_path=_output(ctx, "training"), kms_key_id=ctx.kms_key_id),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_uri or _output(ctx, "checkpoints")),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=ctx.max_runtime_seconds,
            max_wait_time_in_seconds=(max_wait_seconds or 2 * ctx.max_runtime_seconds) if spot else None,
        ),
        input_data_config=channels,
    )
    trainer = trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRICS])
    return TrainingStep(
        name=name,
        step_args=trainer.train(),
        description=TRAIN.description,
        retry_policies=retry_policies(internal_errors=True),
    )


def classify_compliance_step(
    ctx: StepContext,
    *,
    run_record: Any,
    base_model_id: Any = "",
    pretrain_flops: Any = "",
    original_systemic_risk: Any = "false",
    lineage: Any = "",
    store_uri: Any = "",
    approaching_fraction: Any = 0.8,
    name: str = CLASSIFY.name,
):
    """ProcessingStep: verdict from the run record and the lineage; PropertyFile ``ComplianceReport``."""
    return _processing_step(
        ctx,
        CLASSIFY,
        name,
        {"run": run_record},
        dict(
            base_model_id=base_model_id,
            pretrain_flops=pretrain_flops,
            original_systemic_risk=original_systemic_risk,
            lineage=lineage,
            store_uri=store_uri,
            approaching_fraction=approaching_fraction,
        ),
    )


def publish_audit_step(
    ctx: StepContext,
    *,
    run_record: Any,
    compliance_uri: Any,
    dataset_uri: Any = None,
    store_uri: Any = "",
    container_image: Any = "",
    model_uri: Any = "",
    report_uri: Any = "",
    model_package_group: Any = "",
    inference_image: Any = "",
    name: str = PUBLISH.name,
):
    """ProcessingStep: the record in the audit store, always; PropertyFile ``AuditReport`` (record URI, SHA-256).

    The record's code identity: ``container_image`` (the image that trained) and the code bundle's SHA-256
    (``ctx.code_sha256``)."""
    return _processing_step(
        ctx,
        PUBLISH,
        name,
        {"run": run_record, "compliance": compliance_uri, "dataset": dataset_uri},
        dict(
            store_uri=store_uri,
            dataset_uri=dataset_uri if dataset_uri is not None else "",
            container_image=container_image,
            bundle_sha256=ctx.code_sha256,
            model_uri=model_uri,
            report_uri=report_uri,
            model_package_group=model_package_group,
            inference_image=inference_image,
        ),
    )


def record_uri(train_step) -> Any:
    """The training job's ``output.tar.gz`` (SageMaker's archive of /opt/ml/output/data): the run record alone.
    The processing steps read it instead of ``model.tar.gz``, so a 70B model is never downloaded to read a few KB."""
    from sagemaker.core.workflow.functions import Join

    props = train_step.properties
    return Join(on="/", values=[props.OutputDataConfig.S3OutputPath, props.TrainingJobName, "output", "output.tar.gz"])


def output_uri(step, output_name: str) -> Any:
    """The S3 URI a processing step writes one of its outputs to (a property, resolved at run time)."""
    return step.properties.ProcessingOutputConfig.Outputs[output_name].S3Output.S3Uri
