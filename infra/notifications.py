"""The approval plumbing: the approvers' topic, the approval function, and the EventBridge rules that feed it.

    blocked   a step of this pipeline stopped a model (PlanCrossesThreshold, RegistrationBlocked) -> function
    packages  a model package of this group changed state (registered, approved, rejected)       -> function

The function (``pipelines.notify.handler``) makes sure the blocked run's flagged item is in the audit store and
publishes a readable message (verdict, figures, links, the commands that decide) to the topic.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.roles import allow, arn_name, least_privilege_role
from pipelines.governed import PLAN_CROSSES, REGISTRATION_BLOCKED
from pipelines.notify import METRIC, METRIC_NAMESPACE, PACKAGE_STATE, STEP_STATUS, VERIFY_EVENT

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = lambda_.Runtime.PYTHON_3_14  # the latest (cdk-nag L1); its boto3 has S3 conditional writes


def approvers_topic(scope: Construct, key: kms.Key, emails: Sequence[str]) -> sns.Topic:
    topic = sns.Topic(
        scope,
        "Approvers",
        display_name="flops-meter compliance approvals",
        master_key=key,
        enforce_ssl=True,
    )
    for email in emails:
        topic.add_subscription(subscriptions.EmailSubscription(email))
    # the stack's alarms publish as CloudWatch (the topic policy replaces SNS's default one, which let them);
    # this account's alarms in this region only
    stack = Stack.of(scope)
    topic.add_to_resource_policy(iam.PolicyStatement(
        sid="CloudWatchAlarmsOfThisAccountPublish",
        principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
        actions=["sns:Publish"],
        resources=[topic.topic_arn],
        conditions={
            "ArnLike": {"aws:SourceArn": stack.format_arn(
                service="cloudwatch", resource="alarm", resource_name="*", arn_format=ArnFormat.COLON_RESOURCE_NAME)},
            "StringEquals": {"aws:SourceAccount": stack.account},
        },
    ))  # fmt: skip
    return topic


def function_source() -> Path:
    """The function's code: the sources of ``meter``, ``pipelines`` and ``steps`` (pure Python, which
    ``pipelines.governed`` imports; boto3 is in the runtime). Not the containers' wheels."""
    staged = Path(tempfile.mkdtemp(prefix="flops-meter-approvals-"))
    atexit.register(shutil.rmtree, staged, True)  # the CDK copies assets into the cloud assembly at construction
    for package in ("meter", "pipelines", "steps"):
        shutil.copytree(ROOT / package, staged / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl"))  # fmt: skip
    return staged


def dead_letters(scope: Construct, key: kms.IKey) -> sqs.Queue:
    """Where approval events go when the function fails after its retries (EventBridge and Lambda would otherwise
    drop them): kept 14 days, and an alarm tells the approvers."""
    return sqs.Queue(
        scope,
        "ApprovalDeadLetters",
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )


def daily_verify(scope: Construct, fn: lambda_.IFunction, queue: sqs.IQueue, topic: sns.ITopic):
    """`audit verify` of the whole store every day, by the approval function; an alarm when it fails or did not
    report (no data for a day is a failure too)."""
    rule = events.Rule(
        scope,
        "DailyVerify",
        description="flops-meter: verify the audit store every day",
        schedule=events.Schedule.rate(Duration.days(1)),
    )
    rule.add_target(
        targets.LambdaFunction(
            fn, event=events.RuleTargetInput.from_object(VERIFY_EVENT), retry_attempts=20,
            max_event_age=Duration.hours(24), dead_letter_queue=queue,
        )
    )  # fmt: skip
    metric = cloudwatch.Metric(
        namespace=METRIC_NAMESPACE, metric_name=METRIC, period=Duration.days(1), statistic="Maximum"
    )
    alarm = _alarm(scope, "AuditVerifyAlarm", metric, "the daily audit verification failed or did not run", topic,
                   cloudwatch.TreatMissingData.BREACHING)  # fmt: skip
    return rule, alarm


def _alarm(scope: Construct, id: str, metric: cloudwatch.IMetric, what: str, topic: sns.ITopic,
           missing: cloudwatch.TreatMissingData) -> cloudwatch.Alarm:  # fmt: skip
    """An alarm at one or more, telling the approvers' topic."""
    alarm = metric.create_alarm(
        scope,
        id,
        alarm_description=f"flops-meter: {what}",
        threshold=1,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=missing,
    )
    alarm.add_alarm_action(actions.SnsAction(topic))
    return alarm


def tampering_alarm(scope: Construct, metric: cloudwatch.IMetric, topic: sns.ITopic) -> cloudwatch.Alarm:
    """The approvers hear of the first attempt to delete, unlock or overwrite a record (infra.trail's metric)."""
    return _alarm(scope, "AuditTamperingAlarm", metric,
                  "a request to delete, unlock or overwrite an audit record, or one S3 refused: see the audit trail",
                  topic, cloudwatch.TreatMissingData.NOT_BREACHING)  # fmt: skip


def alarms(scope: Construct, fn: lambda_.IFunction, queue: sqs.IQueue, topic: sns.ITopic) -> list[cloudwatch.Alarm]:
    """The approvers hear of a failing approval function and of events parked in the dead-letter queue."""
    return [
        _alarm(scope, id, metric, what, topic, cloudwatch.TreatMissingData.NOT_BREACHING)
        for id, metric, what in (
            ("ApprovalFunctionErrors", fn.metric_errors(period=Duration.minutes(5)), "the approval function failed"),
            ("ApprovalDeadLetterAlarm",
             queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
             "an approval event is in the dead-letter queue: a flagged model may be missing from the queue"),
        )
    ]  # fmt: skip


def approval_function(
    scope: Construct,
    *,
    topic: sns.ITopic,
    key: kms.IKey,
    dead_letter_queue: sqs.IQueue,
    audit: s3.IBucket,
    audit_prefix: str,
    audit_store_uri: str,
    model_package_group: str,
    ledger_arn: str,
) -> tuple[lambda_.Function, iam.Role]:
    """The function and its role (written out here; the function gets it without policy updates)."""
    stack = Stack.of(scope)
    log_group = logs.LogGroup(scope, "ApprovalFunctionLogs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=key)
    packages = stack.format_arn(
        service="sagemaker", resource="model-package", resource_name=f"{arn_name(model_package_group)}/*"
    )
    role = least_privilege_role(
        scope,
        "ApprovalFunctionRole",
        "flops-meter approval function: reads records, writes flagged items, notifies the approvers",
        [
            allow(["s3:GetObject"], [audit.arn_for_objects(f"{audit_prefix}/*")]),
            allow(["s3:PutObject"], [audit.arn_for_objects(f"{audit_prefix}/flagged/*")]),
            # unconditioned: S3 answers a GET of a missing key (an item not yet written) with 404 instead of 403
            # only to a caller with ListBucket, and a GET carries no s3:prefix for a condition to match
            allow(["s3:ListBucket"], [audit.bucket_arn]),
            allow(["s3:GetBucketObjectLockConfiguration"], [audit.bucket_arn]),
            allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"], [key.key_arn]),
            allow(["sns:Publish"], [topic.topic_arn]),
            allow(["sagemaker:DescribeModelPackage"], [packages]),
            allow(["logs:CreateLogStream", "logs:PutLogEvents"], [log_group.log_group_arn]),
            allow(["sqs:SendMessage"], [dead_letter_queue.queue_arn]),
            # the daily verification: the ledger, the versions of the write-once documents, its metric
            allow(["dynamodb:Query", "dynamodb:Scan", "dynamodb:GetItem"], [ledger_arn]),
            allow(["s3:ListBucketVersions"], [audit.bucket_arn]),
            allow(["cloudwatch:PutMetricData"], ["*"], {"StringEquals": {"cloudwatch:namespace": METRIC_NAMESPACE}}),
        ],
        principal=iam.ServicePrincipal("lambda.amazonaws.com"),
    )
    function = lambda_.Function(
        scope,
        "ApprovalFunction",
        description="flops-meter: flagged items and approver notifications for blocked and registered models",
        runtime=RUNTIME,
        handler="pipelines.notify.handler",
        code=lambda_.Code.from_asset(str(function_source())),
        role=role.without_policy_updates(),
        log_group=log_group,
        timeout=Duration.seconds(60),
        memory_size=256,
        environment={"AUDIT_STORE_URI": audit_store_uri, "TOPIC_ARN": topic.topic_arn},
        environment_encryption=key,  # its role may decrypt with the key (above)
        dead_letter_queue=dead_letter_queue,  # an asynchronous invocation that fails its retries lands there
    )
    return function, role


def _rule(scope: Construct, id: str, description: str, pattern: events.EventPattern, fn: lambda_.IFunction,
          queue: sqs.IQueue):  # fmt: skip
    rule = events.Rule(scope, id, description=description, event_pattern=pattern)
    # EventBridge retries a failed delivery for up to a day (a store briefly unreachable loses no message); what
    # it cannot deliver goes to the dead-letter queue, never nowhere
    rule.add_target(
        targets.LambdaFunction(fn, retry_attempts=20, max_event_age=Duration.hours(24), dead_letter_queue=queue)
    )
    return rule


def blocked_rule(scope: Construct, pipeline_arn: str, fn: lambda_.IFunction, queue: sqs.IQueue) -> events.Rule:
    return _rule(
        scope,
        "BlockedRule",
        "flops-meter: an execution of the governed pipeline stopped a model at the threshold",
        events.EventPattern(
            source=["aws.sagemaker"],
            detail_type=[STEP_STATUS],
            detail={
                "pipelineArn": [pipeline_arn],
                "stepName": [PLAN_CROSSES, REGISTRATION_BLOCKED],
                "currentStepStatus": ["Failed"],
            },
        ),
        fn,
        queue,
    )


def package_rule(scope: Construct, group: str, fn: lambda_.IFunction, queue: sqs.IQueue) -> events.Rule:
    return _rule(
        scope,
        "ModelPackageRule",
        "flops-meter: a model package of the governed group changed state",
        events.EventPattern(
            source=["aws.sagemaker"], detail_type=[PACKAGE_STATE], detail={"ModelPackageGroupName": [group]}
        ),
        fn,
        queue,
    )
