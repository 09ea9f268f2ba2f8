"""The governed pipeline as CloudFormation: the definition `pipelines/` builds, its code as CDK assets.

The definition is built once, offline, with placeholder names; each placeholder is then replaced by the CDK token
of the resource it stands for (a bucket name, a role ARN …). CloudFormation fills the real values in at deploy
time, so the deployed body is exactly ``pipelines.governed.definition(config)`` for the deployed names — the tests
check this by resolving the template.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import Aws, CfnMapping, Fn, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_s3_deployment as s3deploy
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.roles import allow, ecr_repositories, least_privilege_role
from pipelines.code import Artifact, marker_key
from pipelines.config import PipelineConfig

# What a deployer may set; the names, roles, key and audit store come from the stack.
SETTINGS = (
    "training_image",
    "processing_image",
    "inference_image",
    "processing_instance_type",
    "max_runtime_seconds",
    "training_volume_gb",
    "processing_volume_gb",
    "spot_training",
    "hf_token_secret_arn",
    "max_wait_seconds",
)

# Stand-ins while the definition is built: valid for the SDK's checks, and found nowhere else in a definition.
PLACEHOLDERS = {
    "region": "zz-flopsmeter-1",
    "bucket": "flops-meter-placeholder-artifacts",
    "role_arn": "arn:aws:iam::000000000000:role/flops-meter-placeholder-analysis",
    "training_role_arn": "arn:aws:iam::000000000000:role/flops-meter-placeholder-training",
    "audit_role_arn": "arn:aws:iam::000000000000:role/flops-meter-placeholder-audit",
    "kms_key_id": "arn:aws:kms:zz-flopsmeter-1:000000000000:key/flops-meter-placeholder-key",
    "audit_bucket": "flops-meter-placeholder-audit",
    "ledger_table": "flops-meter-placeholder-ledger",
    "model_package_group": "flops-meter-placeholder-models",
}
# the SDK's images where the deployer sets none: one per region, looked up by CloudFormation (a region-agnostic stack)
IMAGE_KINDS = ("training", "processing", "inference")
for _kind in IMAGE_KINDS:
    PLACEHOLDERS[f"{_kind}_image"] = f"000000000000.dkr.ecr.zz-flopsmeter-1.amazonaws.com/flops-meter-{_kind}:0"


def check_settings(settings: Mapping[str, Any]) -> PipelineConfig:
    """The deployer's pipeline settings, checked the way PipelineConfig checks a config file; the configuration
    they give with everything else at its default (images, instance type, runtime)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"pipeline setting(s) {', '.join(unknown)} cannot be set here (the stack provides names, roles, key "
            f"and audit store): use {', '.join(SETTINGS)}"
        )
    return PipelineConfig.load(**settings)


def audit_store_uri(audit_bucket: str, prefix: str, table: str, region: str, retention_days: int) -> str:
    # retention=bucket: records take the bucket's default COMPLIANCE retention (the audit role needs no
    # s3:PutObjectRetention), which the store checks is at least retention_days before it writes and when it verifies
    return (
        f"s3://{audit_bucket}/{prefix}?table={table}&region={region}&retention=bucket&retention_days={retention_days}"
    )


def deployed_config(
    settings: Mapping[str, Any],
    *,
    pipeline_name: str,
    prefix: str,
    audit_prefix: str,
    audit_retention_days: int,
    values: Mapping[str, str],
) -> PipelineConfig:
    """The PipelineConfig of a deployment, for given values of the PLACEHOLDERS keys (placeholders or real)."""
    images = {f"{k}_image": values[f"{k}_image"] for k in IMAGE_KINDS if not settings.get(f"{k}_image")}
    return PipelineConfig.load(
        **settings,
        **images,
        pipeline_name=pipeline_name,
        region=values["region"],
        bucket=values["bucket"],
        prefix=prefix,
        role_arn=values["role_arn"],
        training_role_arn=values["training_role_arn"],
        audit_role_arn=values["audit_role_arn"],
        kms_key_id=values["kms_key_id"],
        audit_store_uri=audit_store_uri(
            values["audit_bucket"], audit_prefix, values["ledger_table"], values["region"], audit_retention_days
        ),
        model_package_group=values["model_package_group"],
    )


def tokenized(definition: str, tokens: Mapping[str, str]) -> str:
    """Replace each placeholder by its CDK token; refuse if a placeholder survives in another form."""
    for name in sorted(tokens, key=lambda n: -len(PLACEHOLDERS[n])):  # longest first: no partial overlaps
        definition = definition.replace(PLACEHOLDERS[name], tokens[name])
    leftover = [n for n, v in PLACEHOLDERS.items() if v in definition] + (
        ["account"] if "000000000000" in definition else []
    )
    if leftover:
        raise RuntimeError(f"pipeline definition still holds placeholder(s) {leftover}: it cannot be deployed")
    return definition


def images(scope: Construct, settings: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Image URIs for the stack's region (tokens for those the deployer left to the SDK) and the ECR repository
    ARNs the job roles may pull from. The SDK's per-region tables become a CloudFormation mapping: the stack stays
    region-agnostic and each region gets its own registry account (eu-south-1, me-central-1, China …)."""
    from pipelines.images import IMAGES, image_uri

    tokens: dict[str, str] = {}
    repositories = ecr_repositories(
        settings[f"{k}_image"] for k in ("training", "processing") if settings.get(f"{k}_image")
    )
    wanted = [k for k in IMAGE_KINDS if not settings.get(f"{k}_image")]
    if not wanted:
        return tokens, repositories
    from sagemaker.core.image_uris import config_for_framework

    mapping: dict[str, dict[str, str]] = {}
    for kind in wanted:
        image = IMAGES[kind]
        versions = config_for_framework(image.framework)[image.scope]["versions"][image.version]
        registries = versions.get(image.base_framework_version or "", versions).get("registries", {})
        for region in sorted(registries):
            uri = image_uri(kind, region)
            account, repository = uri.split(".", 1)[0], uri.split("/", 1)[1].split(":", 1)[0]
            row = mapping.setdefault(region, {})
            row[kind], row[f"{kind}Repository"] = uri, f"{region}:{account}:repository/{repository}"
    regions = [r for r, row in mapping.items() if all(k in row for k in wanted)]
    table = CfnMapping(scope, "Images", mapping={r: mapping[r] for r in regions})
    for kind in wanted:
        tokens[f"{kind}_image"] = table.find_in_map(Aws.REGION, kind)
        if kind != "inference":  # the serving image is pulled by the endpoint's role, not the pipeline's jobs
            tail = table.find_in_map(Aws.REGION, f"{kind}Repository")
            repositories.append(Fn.join("", ["arn:", Aws.PARTITION, ":ecr:", tail]))
    return tokens, repositories


# --------------------------------------------------------------------------------------------------------------


def _stage(artifacts: Mapping[str, Artifact], prefix: str) -> Path:
    """The artifacts as files under their content addresses (relative to prefix), plus completion markers."""
    root = Path(tempfile.mkdtemp(prefix="flops-meter-cdk-"))
    atexit.register(shutil.rmtree, root, True)  # the CDK copies assets into the cloud assembly at construction
    strip = len(prefix.strip("/")) + 1 if prefix else 0
    for key_prefix, artifact in sorted(artifacts.items()):
        artifact.write(root / key_prefix[strip:])
        marker = root / marker_key(artifact, prefix)[strip:]
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(artifact.sha256)
    return root


def code_deployment(
    scope: Construct, artifacts: Mapping[str, Artifact], bucket: s3.IBucket, prefix: str, key: kms.IKey
) -> tuple[s3deploy.BucketDeployment, iam.Role]:
    """Unpacks the code bundle, the SDK's driver files and the demo inputs at the addresses the definition names.

    The copying function gets a role written out here: the deployment construct's own grants would add wildcard
    actions (s3:GetObject*, kms:GenerateDataKey*), so it receives the role without policy updates.
    """
    asset = s3_assets.Asset(scope, "CodeAsset", path=str(_stage(artifacts, prefix)))
    log_group = logs.LogGroup(scope, "CodeDeploymentLogs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=key)
    role = least_privilege_role(
        scope,
        "CodeDeploymentRole",
        "flops-meter: copies the pipeline's code and demo inputs into the artifacts bucket",
        [
            allow(["s3:GetObject"], [asset.bucket.arn_for_objects(asset.s3_object_key)]),
            allow(["s3:ListBucket"], [bucket.bucket_arn], {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}),
            allow(["s3:PutObject"], [bucket.arn_for_objects(f"{prefix}/*")]),
            allow(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn]),
            allow(["logs:CreateLogStream", "logs:PutLogEvents"], [log_group.log_group_arn]),
        ],
        principal=iam.ServicePrincipal("lambda.amazonaws.com"),
    )
    deployment = s3deploy.BucketDeployment(
        scope,
        "CodeDeployment",
        sources=[s3deploy.Source.bucket(asset.bucket, asset.s3_object_key)],
        destination_bucket=bucket,
        destination_key_prefix=prefix,
        prune=False,  # content-addressed: earlier versions stay for the executions that ran them
        retain_on_delete=True,
        role=role.without_policy_updates(),
        log_group=log_group,
        memory_limit=512,
    )
    return deployment, role


def model_package_group(scope: Construct, name: str) -> sagemaker.CfnModelPackageGroup:
    """Retained on stack deletion: its packages carry the verdicts, and a group with packages cannot be deleted."""
    group = sagemaker.CfnModelPackageGroup(
        scope,
        "ModelPackageGroup",
        model_package_group_name=name,
        model_package_group_description="Fine-tuned models registered by the flops-meter governed pipeline",
    )
    group.apply_removal_policy(RemovalPolicy.RETAIN)
    return group


def cfn_pipeline(
    scope: Construct, name: str, definition: str, role: iam.IRole, description: str
) -> sagemaker.CfnPipeline:
    # a raw dict: the typed PipelineDefinitionProperty emits a wrong lower-case key (aws-cdk#25774)
    return sagemaker.CfnPipeline(
        scope,
        "Pipeline",
        pipeline_name=name,
        pipeline_description=description,
        role_arn=role.role_arn,
        pipeline_definition={"PipelineDefinitionBody": definition},
    )
