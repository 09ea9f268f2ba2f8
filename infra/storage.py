"""Where the pipeline keeps things: the key, the buckets and the audit ledger, each secure by default.

Everything that holds data is retained when the stack is deleted: the audit bucket (Object Lock would refuse the
deletion anyway), the ledger (deletion protection), the key (without it the records cannot be read), the access
logs and the artifacts (models of blocked runs wait there for a decision).
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


def encryption_key(scope: Construct, alias: str, break_glass_role_arn: str | None = None) -> kms.Key:
    """Customer-managed, rotated yearly; kept on stack deletion because the audit records need it to be read.

    Nobody may schedule its deletion or disable it (an account administrator could otherwise make ten years of
    locked records unreadable), except ``break_glass_role_arn`` when one is named."""
    key = kms.Key(
        scope,
        "Key",
        alias=alias,
        description="flops-meter: artifacts, audit records, ledger and approval notifications",
        enable_key_rotation=True,
        removal_policy=RemovalPolicy.RETAIN,
    )
    except_break_glass = {"ArnNotEquals": {"aws:PrincipalArn": break_glass_role_arn}} if break_glass_role_arn else None
    key.add_to_resource_policy(
        deny_everyone(
            "DenyDeletionAndDisabling", ["kms:ScheduleKeyDeletion", "kms:DisableKey"], ["*"], except_break_glass
        )
    )
    stack = Stack.of(scope)
    # CloudWatch Logs encrypts this account's log groups in this region with it (the function logs, the trail's
    # events); the encryption context names the log group, so no other account's or region's group can use it
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudWatchLogsEncryptsThisAccountsLogGroups",
        principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
        actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
                 "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"],
        resources=["*"],
        conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": stack.format_arn(
            service="logs", resource="log-group", resource_name="*", arn_format=ArnFormat.COLON_RESOURCE_NAME)}},
    ))  # fmt: skip
    # CloudWatch alarms publish to the approvers' topic, which this key encrypts: without this, an alarm's
    # notification fails on the key (AWS documents no narrower condition for this service's calls)
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudWatchAlarmsPublishToTheEncryptedTopic",
        principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
        actions=["kms:Decrypt", "kms:GenerateDataKey"],
        resources=["*"],
    ))  # fmt: skip
    return key


def log_bucket(scope: Construct) -> s3.Bucket:
    """Server access logs of the other buckets. S3 log delivery cannot write SSE-KMS objects: SSE-S3 here."""
    return s3.Bucket(
        scope,
        "AccessLogs",
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=RemovalPolicy.RETAIN,
    )


def kms_bucket(
    scope: Construct, id: str, key: kms.IKey, logs: s3.IBucket, *, bucket_key: bool = True, **extra
) -> s3.Bucket:
    """Encrypted with the stack's key, versioned, private, TLS-only, owner-enforced, access-logged."""
    return s3.Bucket(
        scope,
        id,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=bucket_key,  # one KMS call per bucket key, not per object: cheaper, same key
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=logs,
        server_access_logs_prefix=f"{id.lower()}/",
        **extra,
    )


def artifacts_bucket(scope: Construct, key: kms.IKey, logs: s3.IBucket) -> s3.Bucket:
    """Code, inputs, step outputs and model artifacts (also those of blocked runs, which approval may register)."""
    return kms_bucket(scope, "Artifacts", key, logs, removal_policy=RemovalPolicy.RETAIN)


def audit_bucket(
    scope: Construct, key: kms.IKey, logs: s3.IBucket, retention: Duration, prefix: str = "records"
) -> s3.Bucket:
    """Audit records under Object Lock COMPLIANCE: no one, the root user included, can delete or overwrite a
    record version or shorten its retention before it ends."""
    bucket = kms_bucket(
        scope,
        "Audit",
        key,
        logs,
        object_lock_enabled=True,
        object_lock_default_retention=s3.ObjectLockRetention.compliance(retention),
        removal_policy=RemovalPolicy.RETAIN,
    )
    # Object Lock keeps every version; this also keeps the current view: no delete markers over records.
    bucket.add_to_resource_policy(
        deny_everyone(
            "DenyRecordDeletion", ["s3:DeleteObject", "s3:DeleteObjectVersion"], [bucket.arn_for_objects("*")]
        )
    )
    # write-once: a PUT over an existing record, flagged item or decision would become its current version
    # (Object Lock keeps the old one, but readers see the new); only conditional creates are allowed
    bucket.add_to_resource_policy(
        deny_everyone(
            "DenyOverwritingWriteOnceDocuments",
            ["s3:PutObject"],
            [bucket.arn_for_objects(f"{prefix}/*")],
            {"Null": {"s3:if-none-match": "true"}},
        )
    )
    return bucket


def deny_everyone(sid: str, actions: list[str], resources: list[str], conditions: dict | None = None):
    """A resource-policy statement no principal escapes, the root user included."""
    return iam.PolicyStatement(
        sid=sid,
        effect=iam.Effect.DENY,
        principals=[iam.AnyPrincipal()],
        actions=actions,
        resources=resources,
        conditions=conditions,
    )


def ledger_table(scope: Construct, key: kms.IKey, table_name: str | None) -> dynamodb.Table:
    """The audit ledger as meter.audit.s3_store.S3Store writes it: (lineage, sequence), conditional appends."""
    return dynamodb.Table(
        scope,
        "Ledger",
        table_name=table_name,
        partition_key=dynamodb.Attribute(name="lineage", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="sequence", type=dynamodb.AttributeType.NUMBER),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=key,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        deletion_protection=True,
        removal_policy=RemovalPolicy.RETAIN,
    )
