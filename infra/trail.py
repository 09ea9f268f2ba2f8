"""Who read or wrote which record: a CloudTrail trail of the audit bucket's data events, kept like the records.

    trail      S3 data events (reads and writes) of the audit bucket's objects only, log-file validation on (hourly
               signed digests), encrypted with the stack's key
    logs       a bucket of its own: Object Lock COMPLIANCE for as long as the records, versioned, KMS, TLS-only,
               private, access-logged, no deletes; retained
    events     the same events in CloudWatch Logs (a year), where a metric filter counts attempts to delete, unlock
               or overwrite a record (and any request S3 refused); the approvers' topic hears of the first one

The trail records only this bucket's data events (no management events: the account's own trail has those), so
it costs the data events' price, about 0.10 USD per 100,000 requests to the audit bucket, and their storage.
"""

from __future__ import annotations

from aws_cdk import Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.roles import allow, least_privilege_role
from infra.storage import deny_everyone, kms_bucket

CLOUDTRAIL = "cloudtrail.amazonaws.com"
TAMPERING_METRIC = "AuditBucketTampering"
# attempts on a record: a delete, a retention or legal-hold change, a plain PUT the bucket policy refuses (only
# conditional creates are allowed), any other request S3 denied
TAMPERING_PATTERN = logs.FilterPattern.any(
    logs.FilterPattern.string_value("$.errorCode", "=", "AccessDenied"),
    *(
        logs.FilterPattern.string_value("$.eventName", "=", name)
        for name in ("DeleteObject", "DeleteObjects", "PutObjectRetention", "PutObjectLegalHold")
    ),
)


def audit_trail(
    scope: Construct,
    *,
    key: kms.Key,
    audit: s3.IBucket,
    access_logs: s3.IBucket,
    retention: Duration,
    metric_namespace: str,
):
    """The trail, its bucket, its log group, its delivery role and the tampering metric (for an alarm)."""
    stack = Stack.of(scope)
    name = f"{Names.unique_resource_name(scope, max_length=100, separator='-')}-audit-data-events"
    arn = stack.format_arn(service="cloudtrail", resource="trail", resource_name=name)
    only_this_trail = {"StringEquals": {"aws:SourceArn": arn}}

    bucket = kms_bucket(
        scope,
        "AuditTrailLogs",
        key,
        access_logs,
        bucket_key=False,  # with an S3 Bucket Key, CloudTrail would need kms:Decrypt too
        object_lock_enabled=True,
        object_lock_default_retention=s3.ObjectLockRetention.compliance(retention),
        removal_policy=RemovalPolicy.RETAIN,
    )
    service = iam.ServicePrincipal(CLOUDTRAIL)
    bucket.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudTrailAclCheck", principals=[service], actions=["s3:GetBucketAcl"], resources=[bucket.bucket_arn],
        conditions=only_this_trail,
    ))  # fmt: skip
    bucket.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudTrailWrite", principals=[service], actions=["s3:PutObject"],
        resources=[bucket.arn_for_objects(f"AWSLogs/{stack.account}/*")],
        conditions={"StringEquals": {"aws:SourceArn": arn, "s3:x-amz-acl": "bucket-owner-full-control"}},
    ))  # fmt: skip
    bucket.add_to_resource_policy(
        deny_everyone("DenyLogDeletion", ["s3:DeleteObject", "s3:DeleteObjectVersion"], [bucket.arn_for_objects("*")])
    )
    # the key: CloudTrail encrypts this trail's log and digest files, and nothing else (as AWS documents it)
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudTrailEncryptsThisTrail", principals=[service], actions=["kms:GenerateDataKey"], resources=["*"],
        conditions={**only_this_trail, "StringLike": {
            "kms:EncryptionContext:aws:cloudtrail:arn": f"arn:{stack.partition}:cloudtrail:*:{stack.account}:trail/*"
        }},
    ))  # fmt: skip
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudTrailDescribesTheKey", principals=[service], actions=["kms:DescribeKey"], resources=["*"],
        conditions=only_this_trail,
    ))  # fmt: skip

    log_group = logs.LogGroup(scope, "AuditTrailEvents", retention=logs.RetentionDays.ONE_YEAR, encryption_key=key)
    role = least_privilege_role(
        scope,
        "AuditTrailRole",
        "flops-meter audit trail: delivers the audit bucket's data events to their log group",
        [allow(["logs:CreateLogStream", "logs:PutLogEvents"], [log_group.log_group_arn])],
        principal=service,  # CloudTrail's delivery role takes no aws:SourceArn condition (AWS documents none)
    )
    trail = cloudtrail.CfnTrail(
        scope,
        "AuditTrail",
        trail_name=name,
        is_logging=True,
        s3_bucket_name=bucket.bucket_name,
        kms_key_id=key.key_arn,
        enable_log_file_validation=True,
        is_multi_region_trail=False,  # S3 logs a bucket's data events in its own region
        include_global_service_events=False,
        cloud_watch_logs_log_group_arn=log_group.log_group_arn,
        cloud_watch_logs_role_arn=role.role_arn,
        event_selectors=[
            cloudtrail.CfnTrail.EventSelectorProperty(
                include_management_events=False,
                read_write_type="All",
                data_resources=[
                    cloudtrail.CfnTrail.DataResourceProperty(type="AWS::S3::Object", values=[f"{audit.bucket_arn}/"])
                ],
            )
        ],
    )
    trail.node.add_dependency(bucket.policy)  # CloudTrail checks it can write before it creates the trail
    trail.node.add_dependency(role)
    metric = logs.MetricFilter(
        scope,
        "AuditTamperingFilter",
        log_group=log_group,
        filter_pattern=TAMPERING_PATTERN,
        metric_namespace=metric_namespace,
        metric_name=TAMPERING_METRIC,
        metric_value="1",
    ).metric(period=Duration.minutes(5), statistic="Sum")
    return trail, bucket, log_group, role, metric
