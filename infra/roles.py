"""Least-privilege roles, written out statement by statement (no grant helpers: they add wildcard actions).

    pipeline  SageMaker Pipelines itself: starts the jobs, passes the step roles, reads property files, registers
    analysis  EstimateFLOPs and ClassifyCompliance: read code and inputs, read the ledger, write their reports
    training  TrainWithMeter: read code and data, write checkpoints and the model
    audit     PublishAudit: everything analysis reads, plus put records and ledger items. It has no right to
              delete a record, to change or bypass its retention, or to update or delete a ledger item.

Resource wildcards remain only where AWS offers no narrower resource (ecr:GetAuthorizationToken,
cloudwatch:PutMetricData) and for names that SageMaker generates at run time (jobs, model package versions);
infra/nag.py acknowledges each with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aws_cdk import ArnFormat, Aws, Stack, Token
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

SAGEMAKER = iam.ServicePrincipal("sagemaker.amazonaws.com")
_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([^.]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)")


def arn_name(group: str) -> str:
    """A model package group's name as SageMaker writes it in ARNs: lower case. The default name is a CloudFormation
    expression built in lower case (infra.construct.unique_group_name), used as it is."""
    return group if Token.is_unresolved(group) else group.lower()


def allow(actions: Sequence[str], resources: Sequence[str], conditions: dict | None = None) -> iam.PolicyStatement:
    return iam.PolicyStatement(actions=list(actions), resources=list(resources), conditions=conditions)


def ecr_repositories(images: Iterable[str]) -> list[str]:
    """Repository ARNs of ECR image URIs (``{region}`` stands for the stack's region)."""
    arns = []
    for image in images:
        match = _ECR_IMAGE.match(image)
        if not match:
            raise ValueError(f"image {image!r} is not an ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG)")
        account, region, repository = match.groups()
        region = Aws.REGION if region == "{region}" else region
        arns.append(f"arn:{Aws.PARTITION}:ecr:{region}:{account}:repository/{repository}")
    return sorted(set(arns))


@dataclass(frozen=True)
class Access:
    """What the roles are scoped to."""

    key: kms.IKey
    artifacts: s3.IBucket
    prefix: str
    audit: s3.IBucket
    audit_prefix: str
    ledger: dynamodb.ITable
    repositories: Sequence[str]  # ECR repository ARNs of the job images
    model_package_group: str
    secrets: Sequence[str] = ()  # Secrets Manager ARNs the model-loading jobs read (a Hugging Face token)


def _job_basics(scope: Construct, a: Access, job_kind: str) -> list[iam.PolicyStatement]:
    """Logs, metrics, image pull, the key and the artifacts a SageMaker job of this kind needs."""
    log_group = Stack.of(scope).format_arn(
        service="logs",
        resource="log-group",
        resource_name=f"/aws/sagemaker/{job_kind}:*",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
    return [
        allow(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
              [log_group]),
        allow(["cloudwatch:PutMetricData"], ["*"], {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}),
        allow(["ecr:GetAuthorizationToken"], ["*"]),
        allow(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
              list(a.repositories)),
        allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], [a.key.key_arn]),
        allow(["kms:CreateGrant"], [a.key.key_arn], {"Bool": {"kms:GrantIsForAWSResource": "true"}}),
        allow(["s3:ListBucket"], [a.artifacts.bucket_arn], {"StringLike": {"s3:prefix": [a.prefix, f"{a.prefix}/*"]}}),
        allow(["s3:GetObject"], [a.artifacts.arn_for_objects(f"{a.prefix}/*")]),
        allow(["s3:PutObject"], [a.artifacts.arn_for_objects(f"{a.prefix}/executions/*")]),
    ]  # fmt: skip


def least_privilege_role(
    scope: Construct,
    id: str,
    description: str,
    statements: list[iam.PolicyStatement],
    principal: iam.IPrincipal = SAGEMAKER,
) -> iam.Role:
    """A role whose only permissions are the given statements, inline (no managed policy). SageMaker may assume
    it on behalf of this account only (``aws:SourceAccount``: no confused deputy)."""
    if principal is SAGEMAKER:
        principal = SAGEMAKER.with_conditions({"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}})
    return iam.Role(
        scope,
        id,
        assumed_by=principal,
        description=description,
        inline_policies={"least-privilege": iam.PolicyDocument(statements=statements)},
    )


def analysis_role(scope: Construct, a: Access) -> iam.Role:
    return least_privilege_role(
        scope,
        "AnalysisRole",
        "flops-meter EstimateFLOPs and ClassifyCompliance jobs: read inputs and the ledger, write reports",
        [
            *_job_basics(scope, a, "ProcessingJobs"),
            allow(["dynamodb:Query", "dynamodb:GetItem"], [a.ledger.table_arn]),
            *_secrets(a),
        ],
    )


def training_role(scope: Construct, a: Access) -> iam.Role:
    return least_privilege_role(
        scope,
        "TrainingRole",
        "flops-meter TrainWithMeter jobs: read code and data, write checkpoints and the model",
        [*_job_basics(scope, a, "TrainingJobs"), *_secrets(a)],
    )


def _secrets(a: Access) -> list[iam.PolicyStatement]:
    return [allow(["secretsmanager:GetSecretValue"], list(a.secrets))] if a.secrets else []


def audit_role(scope: Construct, a: Access) -> iam.Role:
    """Append-only: PutObject (Object Lock applies the bucket's default retention) and PutItem (conditional)."""
    records = a.audit.arn_for_objects(f"{a.audit_prefix}/*")
    return least_privilege_role(
        scope,
        "AuditRole",
        "flops-meter PublishAudit jobs: append records and ledger items; never delete or change retention",
        [
            *_job_basics(scope, a, "ProcessingJobs"),
            allow(["s3:GetObject"], [records]),
            # records and flagged items only: a pipeline job can never write a decision (approve its own model)
            allow(
                ["s3:PutObject"],
                [a.audit.arn_for_objects(f"{a.audit_prefix}/{kind}/*") for kind in ("records", "flagged")],
            ),
            allow(["s3:ListBucket"], [a.audit.bucket_arn], {"StringLike": {"s3:prefix": f"{a.audit_prefix}/*"}}),
            allow(["s3:GetBucketObjectLockConfiguration"], [a.audit.bucket_arn]),
            allow(["dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem"], [a.ledger.table_arn]),
        ],
    )


def pipeline_role(scope: Construct, a: Access, step_roles: Sequence[iam.IRole]) -> iam.Role:
    """The role SageMaker Pipelines runs the definition with."""
    stack = Stack.of(scope)

    def sagemaker_arn(resource: str, name: str) -> str:
        return stack.format_arn(service="sagemaker", resource=resource, resource_name=name)

    group = arn_name(a.model_package_group)
    jobs = [sagemaker_arn("processing-job", "pipelines-*"), sagemaker_arn("training-job", "pipelines-*")]
    packages = [sagemaker_arn("model-package-group", group), sagemaker_arn("model-package", f"{group}/*")]
    return least_privilege_role(
        scope,
        "PipelineRole",
        "flops-meter governed pipeline: runs the steps with their own roles and registers models",
        [
            allow(
                [
                    "sagemaker:CreateProcessingJob",
                    "sagemaker:DescribeProcessingJob",
                    "sagemaker:StopProcessingJob",
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                jobs,
            ),
            allow(
                ["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage", "sagemaker:AddTags"],
                packages,
            ),
            allow(
                ["iam:PassRole"],
                [r.role_arn for r in step_roles],
                {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            ),
            # JsonGet reads the steps' property files; registration checks the model artifact
            allow(["s3:GetObject"], [a.artifacts.arn_for_objects(f"{a.prefix}/executions/*")]),
            allow(["kms:Decrypt", "kms:DescribeKey"], [a.key.key_arn]),
            allow(["kms:CreateGrant"], [a.key.key_arn], {"Bool": {"kms:GrantIsForAWSResource": "true"}}),
        ],
    )


def approver_policy(scope: Construct, a: Access) -> iam.ManagedPolicy:
    """What `flops-meter approvals` and `audit verify` need against this stack: attach it to the approvers' roles.

    Read records and the ledger, write decisions (write-once, under the audit bucket's retention), register and
    approve models of this group. Like the audit role: no delete, no retention change, no ledger write.
    """
    stack = Stack.of(scope)
    group = arn_name(a.model_package_group)
    packages = stack.format_arn(service="sagemaker", resource="model-package", resource_name=f"{group}/*")
    package_group = stack.format_arn(service="sagemaker", resource="model-package-group", resource_name=group)
    return iam.ManagedPolicy(
        scope,
        "ApproverPolicy",
        description="flops-meter approvers: read the audit store, record decisions, register and approve models",
        statements=[
            allow(["s3:GetObject"], [a.audit.arn_for_objects(f"{a.audit_prefix}/*")]),
            allow(["s3:PutObject"], [a.audit.arn_for_objects(f"{a.audit_prefix}/decisions/*")]),
            # audit verify lists the versions of the write-once documents (a second version is tampering)
            allow(
                ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketObjectLockConfiguration"], [a.audit.bucket_arn]
            ),
            allow(["dynamodb:Query", "dynamodb:Scan", "dynamodb:GetItem"], [a.ledger.table_arn]),
            allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], [a.key.key_arn]),
            allow(
                ["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage"],
                [package_group, packages],
            ),
            allow(["sagemaker:ListModelPackages"], ["*"]),
        ],
    )
