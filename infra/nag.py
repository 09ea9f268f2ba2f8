"""cdk-nag acknowledgements, each on the one resource it concerns and with the reason a reviewer needs.

Every finding of ``AwsSolutionsChecks`` and ``NIST80053R5Checks`` not listed here fails the synth. AwsSolutions
finds resource wildcards that AWS or SageMaker make unavoidable, and the runtime of the CDK's own deployment
function. NIST 800-53 R5 finds design choices, each answered below: no cross-region replication (one region's
stack), SSE-S3 where S3 log delivery demands it, PITR instead of an AWS Backup plan, inline policies, and Lambda
functions without VPC, reserved concurrency or (for the CDK's deployment function) a dead-letter queue.
"""

from __future__ import annotations

import json

import aws_cdk as cdk

from infra.roles import arn_name

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


# NIST 800-53 R5
NO_REPLICA = (
    "cross-region replication needs a destination bucket in a second region, which this one-region stack does "
    "not own; {what}. Add a replication rule to your own destination bucket if your policy asks for a second region"
)
REPLICA_LOCKED = "every version here is kept by Object Lock COMPLIANCE and S3 stores it across availability zones"
REPLICA_ARTIFACTS = "versioned; the code and inputs are rebuilt from the repository, models from their executions"
REPLICA_LOGS = "access logs are operational evidence kept versioned; the trail keeps the audit bucket's data events"
SSE_S3_LOGS = (
    "S3 server access log delivery writes only to buckets encrypted with SSE-S3 (AES256), never SSE-KMS: this "
    "bucket holds only the other buckets' access logs"
)
BACKUP_PLAN = (
    "point-in-time recovery (35 days), deletion protection and retention on stack deletion protect the ledger; "
    "every ledger item is also sealed in its record under Object Lock (lineage, sequence, previous hash), and the "
    "daily audit verify compares them. An AWS Backup plan needs a vault and a role with an AWS-managed policy; add "
    "the table to your organisation's backup plan if it has one"
)
INLINE = (
    "by design: each role's statements are written out for that role alone (infra/roles.py) and live and die with "
    "it; a managed policy could be attached to other principals and widen their rights. The one managed policy, "
    "ApproverPolicy, is meant for attaching"
)
CONCURRENCY = (
    "reserved concurrency is taken from the account's unreserved pool and fails the deployment in accounts at the "
    "minimum (new accounts have 10); the approval function runs a few times a day, and EventBridge retries with a "
    "dead-letter queue absorb throttling"
)
DEPLOYMENT_CONCURRENCY = "the CDK's deployment function runs once per deployment, invoked by CloudFormation only"
NO_VPC = (
    "the function calls only AWS APIs (S3, DynamoDB, SNS, SageMaker, CloudWatch) over TLS with its role and serves "
    "nothing on a network; this stack has no VPC, and one would need NAT or interface endpoints without a gain"
)
DEPLOYMENT_DLQ = (
    "CloudFormation invokes the CDK's deployment function synchronously as a custom resource: a failure fails and "
    "rolls back the deployment, there is no event to park in a dead-letter queue"
)


def flat(value) -> str:
    """A resolved CloudFormation value as cdk-nag writes it in finding ids (its flattenCfnReference)."""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, items = value["Fn::Join"]
        return delimiter.join(flat(v) for v in items)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{flat(value['Ref'])}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<{}.{}>".format(*(flat(v) for v in value["Fn::GetAtt"]))
    return json.dumps(value, separators=(",", ":"))


def _ack(construct, finding: str, reason: str) -> None:
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=f"AwsSolutions::{finding}", reason=reason))


def _nist(construct, rule: str, reason: str) -> None:
    """On the CloudFormation resource itself (the narrowest scope) when the construct has one."""
    resource = construct.node.default_child or construct
    cdk.Validations.of(resource).acknowledge(
        cdk.Acknowledgment(id=f"NIST.800.53.R5::NIST.800.53.R5-{rule}", reason=reason)
    )


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
    group = flat(stack.resolve(arn_name(governed.model_package_group_name)))
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
            _nist(child, "LambdaConcurrency", DEPLOYMENT_CONCURRENCY)
            _nist(child, "LambdaInsideVPC", NO_VPC)
            _nist(child, "LambdaDLQ", DEPLOYMENT_DLQ)

    for bucket, what in (
        (governed.audit_bucket, REPLICA_LOCKED),
        (governed.trail_bucket, REPLICA_LOCKED),
        (governed.artifacts_bucket, REPLICA_ARTIFACTS),
        (governed.log_bucket, REPLICA_LOGS),
    ):
        _nist(bucket, "S3BucketReplicationEnabled", NO_REPLICA.format(what=what))
    _nist(governed.log_bucket, "S3DefaultEncryptionKMS", SSE_S3_LOGS)
    _nist(governed.ledger, "DynamoDBInBackupPlan", BACKUP_PLAN)
    for role in (
        governed.analysis_role,
        governed.training_role,
        governed.audit_role,
        governed.pipeline_role,
        governed.code_deployment_role,
        governed.approval_function_role,
        governed.trail_role,
    ):
        _nist(role, "IAMNoInlinePolicy", INLINE)
    _nist(governed.approval_function, "LambdaConcurrency", CONCURRENCY)
    _nist(governed.approval_function, "LambdaInsideVPC", NO_VPC)
