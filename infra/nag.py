"""cdk-nag acknowledgements, each on the one construct it concerns and with the reason a reviewer needs.

Every finding of ``AwsSolutionsChecks`` not listed here fails the synth. The only findings are resource
wildcards that AWS or SageMaker make unavoidable, and the runtime of the CDK's own deployment function.
"""

from __future__ import annotations

import aws_cdk as cdk

NO_RESOURCE_LEVEL = (
    "ecr:GetAuthorizationToken and cloudwatch:PutMetricData support no resource-level permissions; PutMetricData "
    "is limited to the /aws/sagemaker/* namespaces by a condition"
)
JOB_LOGS = (
    "SageMaker creates one log stream per job, named at run time, in this log group only "
    "(/aws/sagemaker/{kind}); the statement is limited to that group"
)
PREFIX_READ = (
    "the pipeline's own prefix: content-addressed code and inputs (code/<sha256>/) and step outputs under "
    "executions/<execution id>/, names known only at run time; other prefixes of the bucket stay closed"
)
EXECUTIONS = "step outputs and models go under executions/<execution id>/, an id SageMaker assigns at run time"
RECORDS = (
    "records are content-addressed (<prefix>/<sha256>.json), so keys are known only when written; put and read "
    "only, under Object Lock COMPLIANCE; no delete, retention or bypass action is granted"
)
JOBS = "SageMaker Pipelines names the jobs it starts pipelines-<execution id>-<step>-<suffix> at run time"
PACKAGES = "SageMaker numbers model package versions at registration; the statement is limited to this group"
CODE_PREFIX = "the deployment copies content-addressed files (<prefix>/code/<sha256>/…) under the pipeline's prefix"
LIST_PACKAGES = "sagemaker:ListModelPackages supports no resource-level permission (it lists by group name)"
APPROVER_RECORDS = (
    "approvers read content-addressed records and items (<prefix>/<kind>/<sha256 or id>.json) and write decisions "
    "only (<prefix>/decisions/<id>.json, write-once); names are known only at run time"
)
FLAGGED = (
    "the approval function reads content-addressed records (<prefix>/records/<sha256>.json) and flagged items "
    "(<prefix>/flagged/<id>.json) and writes flagged items only; ids come from record hashes, known at run time"
)
RUNTIME = (
    "the runtime of aws-cdk-lib's BucketDeployment handler is chosen and tested by the CDK; the function runs "
    "only during deployment, to copy the pipeline's code into the artifacts bucket"
)


VERIFY_METRIC = (
    "cloudwatch:PutMetricData has no resource-level permission: the daily verification's metric, limited by the "
    "cloudwatch:namespace condition to FlopsMeter"
)


def _ack(construct, finding: str, reason: str) -> None:
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=f"AwsSolutions::{finding}", reason=reason))


def _iam5(construct, resource: str, reason: str) -> None:
    _ack(construct, f"AwsSolutions-IAM5[Resource::{resource}]", reason)


def acknowledge(governed) -> None:
    """Acknowledge the expected findings on a GovernedFineTuningPipeline's constructs."""
    stack = cdk.Stack.of(governed)

    def arn_of(bucket) -> str:  # how cdk-nag writes a bucket's ARN in its finding ids
        return f"<{stack.resolve(stack.get_logical_id(bucket.node.default_child))}.Arn>"

    artifacts, audit = arn_of(governed.artifacts_bucket), arn_of(governed.audit_bucket)
    prefix, audit_prefix = governed.names["prefix"], governed.names["audit_prefix"]
    region = "arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}"

    for role, kind in (
        (governed.analysis_role, "ProcessingJobs"),
        (governed.training_role, "TrainingJobs"),
        (governed.audit_role, "ProcessingJobs"),
    ):
        _iam5(role, "*", NO_RESOURCE_LEVEL)
        _iam5(role, region.format(service="logs", resource=f"log-group:/aws/sagemaker/{kind}:*"),
              JOB_LOGS.format(kind=kind))  # fmt: skip
        _iam5(role, f"{artifacts}/{prefix}/*", PREFIX_READ)
        _iam5(role, f"{artifacts}/{prefix}/executions/*", EXECUTIONS)
    for where in ("*", "records/*", "flagged/*"):
        _iam5(governed.audit_role, f"{audit}/{audit_prefix}/{where}", RECORDS)

    pipeline_role = governed.pipeline_role
    group = governed.names["model_package_group"].lower()
    for job in ("processing-job", "training-job"):
        _iam5(pipeline_role, region.format(service="sagemaker", resource=f"{job}/pipelines-*"), JOBS)
    _iam5(pipeline_role, region.format(service="sagemaker", resource=f"model-package/{group}/*"), PACKAGES)
    _iam5(pipeline_role, f"{artifacts}/{prefix}/executions/*", EXECUTIONS)

    _iam5(governed.code_deployment_role, f"{artifacts}/{prefix}/*", CODE_PREFIX)
    function_role = governed.approval_function_role
    _iam5(function_role, f"{audit}/{audit_prefix}/*", FLAGGED)
    _iam5(function_role, f"{audit}/{audit_prefix}/flagged/*", FLAGGED)
    _iam5(function_role, region.format(service="sagemaker", resource=f"model-package/{group}/*"), PACKAGES)
    _iam5(function_role, "*", VERIFY_METRIC)
    approvers = governed.approver_policy
    _iam5(approvers, "*", LIST_PACKAGES)
    _iam5(approvers, f"{audit}/{audit_prefix}/*", APPROVER_RECORDS)
    _iam5(approvers, f"{audit}/{audit_prefix}/decisions/*", APPROVER_RECORDS)
    _iam5(approvers, region.format(service="sagemaker", resource=f"model-package/{group}/*"), PACKAGES)
    for child in stack.node.children:  # the deployment's singleton function lives at the stack's root
        if child.node.id.startswith("Custom::CDKBucketDeployment"):
            _ack(child, "AwsSolutions-L1", RUNTIME)
