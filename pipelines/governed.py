"""The governed pipeline: plan, pre-flight gate, metered training, verdict, audit record, gated registration.

    EstimateFLOPs ─> PreflightGate ─(plan within threshold, or AllowPlannedCrossing)─> TrainWithMeter
                         └─(plan crosses)─> Fail "PlanCrossesThreshold" (before any GPU is paid for)
    TrainWithMeter ─> ClassifyCompliance ─> PublishAudit (always) ─> RegistrationGate
    RegistrationGate ─(not crossed)─> RegisterModel (PendingManualApproval, verdict as metadata)
                     └─(crossed)─> Fail "RegistrationBlocked" (the approval workflow takes it from there)

``build(config)`` returns the SDK Pipeline; ``definition(config)`` its JSON, offline and byte-stable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from pipelines.code import code_bundle, demo_dataset, demo_recipe, hub_model
from pipelines.config import PipelineConfig
from pipelines.registries import model_package_request, verdict_metadata
from steps.contract import CLASSIFY, ESTIMATE, PUBLISH, PropertyFile
from steps.settings import FROM_RECIPE, TRAINED

# name: (type, default, description): what a Studio user fills in. Defaults run the bundled tiny demo.
PARAMETERS: dict[str, tuple[str, Any, str]] = {
    "BaseModelId": ("String", "tiny-llama", "Hugging Face id of the model being fine-tuned (its config is read)"),
    "PretrainFlops": (
        "String",
        "",
        "Training compute of the original model in FLOP, e.g. 3.8e25; empty: the bundled published table, "
        "else unknown (the 3.33e22 fallback applies)",
    ),
    "OriginalIsSystemicRisk": ("String", "false", "true if the original is a GPAI model with systemic risk"),
    "TrainingMethod": ("String", FROM_RECIPE, "full or lora; recipe: the recipe's own method"),
    "DatasetS3Uri": ("String", None, "S3 prefix of the training data (JSON Lines: text or input_ids)"),
    "RecipeS3Uri": ("String", None, "S3 URI of the recipe YAML (compute_flops: true)"),
    "ModelS3Uri": (
        "String",
        None,
        "S3 prefix of the model directory (config.json, tokenizer files, weights; no trailing slash): trained and "
        "estimated from there, without the hub (network isolation, VPC without internet). Default: BaseModelId "
        "from the Hugging Face Hub",
    ),
    "InstanceType": ("String", "ml.m5.xlarge", "training instance type, e.g. ml.g5.2xlarge"),
    "InstanceCount": ("Integer", 1, "training instances; more than one runs torchrun across nodes"),
    "ApproachingFraction": ("Float", 0.8, "share of the threshold from which a run is reported as approaching"),
    "AllowPlannedCrossing": (
        "String",
        "false",
        "true: train even when the plan crosses (provider duties knowingly accepted; registration still waits "
        "for approval)",
    ),
}
# closed sets: Studio offers these values only, and SageMaker refuses any other when the execution starts
ENUMS = {
    "OriginalIsSystemicRisk": ["false", "true"],
    "AllowPlannedCrossing": ["false", "true"],
    "TrainingMethod": [FROM_RECIPE, *TRAINED],
}
# The Fail steps that stop a model on the way to the registry (the approval workflow watches for them)
PLAN_CROSSES, REGISTRATION_BLOCKED = "PlanCrossesThreshold", "RegistrationBlocked"


@dataclass
class Governed:
    """The built pipeline, its definition JSON, and the artifacts it points at (what upload-code uploads)."""

    pipeline: Any
    definition: str
    artifacts: dict[str, Any]  # S3 key prefix -> pipelines.code.Artifact
    config: PipelineConfig


def _parameters(config: PipelineConfig) -> dict[str, Any]:
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    defaults = {
        "DatasetS3Uri": config.s3(demo_dataset().key_prefix("")),
        "RecipeS3Uri": config.s3(demo_recipe().key_prefix(""), "demo.yaml"),
        "ModelS3Uri": config.s3(hub_model().key_prefix("")),
    }
    out = {}
    for name, (kind, default, _) in PARAMETERS.items():
        default = defaults.get(name, default)
        if kind == "Integer":
            out[name] = ParameterInteger(name=name, default_value=default)
        elif kind == "Float":
            out[name] = ParameterFloat(name=name, default_value=default)
        else:
            out[name] = ParameterString(name=name, default_value=default, enum_values=ENUMS.get(name))
    return out


def register_model_step(
    name: str,
    *,
    model_package_group: Any,
    model_data_url: Any,
    image_uri: str,
    metadata: dict[str, Any],
    description: str,
    model_card: Any = None,
):
    """A RegisterModel step, PendingManualApproval, carrying the verdict as customer metadata and a model card.

    The SDK's ModelBuilder.register() infers images and may repack the model; this step says exactly what is
    registered: the trained artifact, the serving image, the approval status and the metadata.
    """
    from sagemaker.core.workflow.properties import Properties
    from sagemaker.mlops.workflow.steps import Step, StepTypeEnum

    class RegisterModelStep(Step):
        def __init__(self) -> None:
            super().__init__(name, step_type=StepTypeEnum.REGISTER_MODEL, description=description)
            self._properties = Properties(step_name=name, step=self, shape_name="DescribeModelPackageOutput")

        @property
        def arguments(self) -> dict[str, Any]:
            return model_package_request(
                group=model_package_group,
                image=image_uri,
                model_data_url=model_data_url,
                status="PendingManualApproval",
                metadata=metadata,
                model_card=model_card,
            )

        @property
        def properties(self):
            return self._properties

    return RegisterModelStep()


def _reader(step, property_file: PropertyFile):
    """path -> JsonGet of that path in the step's property file (resolved at run time); only the paths its contract
    declares (steps/contract.py), which its schema holds."""
    from sagemaker.core.workflow.functions import JsonGet

    def read(path: str):
        if path not in property_file.paths():
            raise ValueError(f"{property_file.name} declares no key {path}: add it to steps/contract.py")
        return JsonGet(step_name=step.name, property_file=property_file.name, json_path=path)

    return read


def build(config: PipelineConfig | None = None) -> Governed:
    """The governed pipeline, built offline: no AWS call, no upload; the same config gives the same bytes."""
    from pipelines.code import StagedDir
    from pipelines.sdk_compat import set_definition_metadata
    from pipelines.session import definition_json, offline_session, sdk_environment

    config = config or PipelineConfig()
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdk_environment(config.region))
        from sagemaker.core.workflow.conditions import ConditionEquals
        from sagemaker.core.workflow.execution_variables import ExecutionVariables
        from sagemaker.core.workflow.functions import Join
        from sagemaker.mlops.workflow.condition_step import ConditionStep
        from sagemaker.mlops.workflow.fail_step import FailStep
        from sagemaker.mlops.workflow.pipeline import Pipeline

        from steps.factories import (
            StepContext,
            classify_compliance_step,
            estimate_flops_step,
            output_uri,
            publish_audit_step,
            record_uri,
            train_with_meter_step,
        )

        session = offline_session(config)
        bundle = code_bundle()
        code_uri = session.record(bundle)
        session.record(demo_dataset())
        session.record(demo_recipe())
        session.record(hub_model())
        p = _parameters(config)
        ctx = StepContext(
            session=session,
            role=config.role_arn,
            image_uri=config.image("processing"),
            code_uri=code_uri,
            code_sha256=bundle.sha256,  # PublishAudit records it: the code's identity
            output_uri=Join(on="/", values=[config.s3("executions"), ExecutionVariables.PIPELINE_EXECUTION_ID]),
            instance_type=config.processing_instance_type,
            kms_key_id=config.kms_key_id or None,
            max_runtime_seconds=config.max_runtime_seconds,
            volume_size_gb=config.processing_volume_gb,
        )
        # the steps that load models from the hub get the token's secret (never the token)
        hub = {"HF_TOKEN_SECRET_ARN": config.hf_token_secret_arn} if config.hf_token_secret_arn else {}
        common = dict(
            base_model_id=p["BaseModelId"],
            pretrain_flops=p["PretrainFlops"],
            original_systemic_risk=p["OriginalIsSystemicRisk"],
            lineage=config.model_package_group,
            store_uri=config.audit_store_uri,
            approaching_fraction=p["ApproachingFraction"],
        )
        estimate = estimate_flops_step(
            StepContext(**{**ctx.__dict__, "env": {**ctx.env, **hub}}),
            model_uri=p["ModelS3Uri"],
            recipe_uri=p["RecipeS3Uri"],
            dataset_uri=p["DatasetS3Uri"],
            training_method=p["TrainingMethod"],
            allow_planned_crossing=p["AllowPlannedCrossing"],
            instance_type=p["InstanceType"],
            instance_count=p["InstanceCount"],
            **common,
        )
        estimated, planned = _reader(estimate, ESTIMATE.property_file), ESTIMATE.property_file.keys

        # ModelTrainer wants a local source_dir, read again when the definition is rendered: keep it until then
        staged = stack.enter_context(StagedDir(bundle))
        train = train_with_meter_step(
            StepContext(
                **{**ctx.__dict__, "image_uri": config.image("training"), "role": config.role("training"), "env": hub}
            ),
            model_uri=p["ModelS3Uri"],
            recipe_uri=p["RecipeS3Uri"],
            dataset_uri=p["DatasetS3Uri"],
            source_dir=str(staged.path),
            base_model_id=p["BaseModelId"],
            training_method=p["TrainingMethod"],
            pretrain_flops=p["PretrainFlops"],
            original_systemic_risk=p["OriginalIsSystemicRisk"],
            instance_type=p["InstanceType"],
            instance_count=p["InstanceCount"],
            volume_size_gb=config.training_volume_gb,
            spot=config.spot_training,
            max_wait_seconds=config.max_wait_seconds or None,
        )
        model_artifacts = train.properties.ModelArtifacts.S3ModelArtifacts
        run_record = record_uri(train)  # output.tar.gz: the processing steps never download the model
        classify = classify_compliance_step(ctx, run_record=run_record, **common)
        compliance_uri = output_uri(classify, CLASSIFY.property_file.output.name)
        publish = publish_audit_step(
            StepContext(**{**ctx.__dict__, "role": config.role("audit")}),
            run_record=run_record,
            compliance_uri=compliance_uri,
            model_uri=model_artifacts,
            report_uri=Join(on="/", values=[compliance_uri, CLASSIFY.property_file.path]),
            model_package_group=config.model_package_group,
            inference_image=config.image("inference"),
            dataset_uri=p["DatasetS3Uri"],
            store_uri=config.audit_store_uri,
            container_image=config.image("training"),
        )
        # the gate and the registration read the verdict sealed by PublishAudit: the one the lineage's total gives
        # at publication, which may differ from ClassifyCompliance's when another job of the lineage published since
        audit, sealed = _reader(publish, PUBLISH.property_file), PUBLISH.property_file.keys
        verdict = audit

        register = register_model_step(
            "RegisterModel",
            model_package_group=config.model_package_group,
            model_data_url=model_artifacts,
            image_uri=config.image("inference"),
            metadata=verdict_metadata(
                regulatory=verdict(sealed.regulatory_flops),
                cumulative=verdict(sealed.cumulative_flops),
                threshold=verdict(sealed.threshold_flops),
                rule=verdict(sealed.threshold_rule),
                status=verdict(sealed.status),
                record_uri=audit(sealed.record_uri),
                record_sha256=audit(sealed.record_sha256),
            ),
            description="Registers the fine-tuned model for manual approval, with its compute verdict",
            model_card=audit(sealed.model_card),
        )
        blocked = FailStep(
            name=REGISTRATION_BLOCKED,
            error_message=Join(
                on="",
                values=[
                    "Registration blocked: this lineage's fine-tuning compute (",
                    verdict(sealed.cumulative),
                    ") exceeds one third of the original's (threshold ",
                    verdict(sealed.threshold),
                    ", ",
                    verdict(sealed.threshold_rule),
                    "): the organisation becomes the provider of a GPAI model (AI Act Art. 3(68), Guidelines). "
                    "Audit record: ",
                    audit(sealed.record_uri),
                    " (sha256 ",
                    audit(sealed.record_sha256),
                    "). A compliance officer can approve it through the approval workflow.",
                ],
            ),
        )
        registration_gate = ConditionStep(
            name="RegistrationGate",
            conditions=[ConditionEquals(left=verdict(sealed.crossed), right=False)],
            if_steps=[register],
            else_steps=[blocked],
            depends_on=[publish],
            description="Registers only when the threshold was not crossed",
        )
        plan_crosses = FailStep(
            name=PLAN_CROSSES,
            error_message=Join(
                on="",
                values=[
                    "Pre-flight gate: the planned compute (",
                    estimated(planned.cumulative),
                    ") crosses the threshold (",
                    estimated(planned.threshold),
                    ", ",
                    estimated(planned.threshold_rule),
                    ") before any training. Reduce the data or epochs, use LoRA, or set AllowPlannedCrossing=true "
                    "to accept provider duties and train anyway.",
                ],
            ),
        )
        preflight = ConditionStep(
            name="PreflightGate",
            conditions=[ConditionEquals(left=estimated(planned.gate_passed), right=True)],
            if_steps=[train, classify, publish, registration_gate],
            else_steps=[plan_crosses],
            description="Stops the execution before training when the plan crosses and crossing is not allowed",
        )
        pipeline = Pipeline(
            name=config.pipeline_name,
            parameters=list(p.values()),
            steps=[estimate, preflight],
            sagemaker_session=session,
            pipeline_experiment_config=None,
        )
        # the definition's free-form Metadata: parameter descriptions, the code's address
        set_definition_metadata(
            pipeline, {"flops_meter": {"parameters": {k: v[2] for k, v in PARAMETERS.items()}, "code": bundle.sha256}}
        )
        return Governed(pipeline, definition_json(pipeline), dict(session.artifacts), config)


def definition(config: PipelineConfig | None = None) -> str:
    return build(config).definition
