"""The approval plumbing: a topic for the compliance approvers and the EventBridge rules that feed it.

    blocked   a step of this pipeline stopped a model (PlanCrossesThreshold, RegistrationBlocked) -> topic
    packages  a model package of this group changed state (registered, approved, rejected)       -> topic

The approval workflow's function joins the rules as a second target (``rule.add_target``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jsii
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from pipelines.governed import PLAN_CROSSES, REGISTRATION_BLOCKED

STEP_STATUS = "SageMaker Model Building Pipeline Execution Step Status Change"
PACKAGE_STATE = "SageMaker Model Package State Change"


@jsii.implements(events.IRuleTarget)
class TopicTarget:
    """The topic as a rule target, with a topic policy for this rule only.

    The CDK's SnsTopic target would also add ``kms:GenerateDataKey*`` (a wildcard action) to the key policy and
    let every EventBridge rule of the account publish; this target lets exactly this rule publish.
    """

    def __init__(self, topic: sns.ITopic, message: events.RuleTargetInput) -> None:
        self.topic, self.message = topic, message

    def bind(self, rule: events.IRule, id: str | None = None) -> events.RuleTargetConfig:
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"ArnEquals": {"aws:SourceArn": rule.rule_arn}},
            )
        )
        return events.RuleTargetConfig(arn=self.topic.topic_arn, input=self.message)


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
    # EventBridge publishes to the encrypted topic: it needs the key (a key policy statement, for this key only)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="EventBridgePublishesToApprovalTopic",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey"],
            resources=["*"],  # in a key policy, "*" is this key
        )
    )
    return topic


def _rule(
    scope: Construct, id: str, description: str, pattern: events.EventPattern, topic: sns.ITopic, message: str
) -> events.Rule:
    rule = events.Rule(scope, id, description=description, event_pattern=pattern)
    rule.add_target(TopicTarget(topic, events.RuleTargetInput.from_multiline_text(message)))
    return rule


def blocked_rule(scope: Construct, pipeline_arn: str, topic: sns.ITopic) -> events.Rule:
    field = events.EventField.from_path
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
        topic,
        f"flops-meter: a fine-tuning run was stopped at {field('$.detail.stepName')}.\n"
        f"{field('$.detail.failureReason')}\n"
        f"Execution: {field('$.detail.pipelineExecutionArn')}\n"
        "Decide with: flops-meter approvals list --store <audit store URI in the stack outputs>",
    )


def package_rule(scope: Construct, group: str, topic: sns.ITopic) -> events.Rule:
    field = events.EventField.from_path
    return _rule(
        scope,
        "ModelPackageRule",
        "flops-meter: a model package of the governed group changed state",
        events.EventPattern(
            source=["aws.sagemaker"], detail_type=[PACKAGE_STATE], detail={"ModelPackageGroupName": [group]}
        ),
        topic,
        f"flops-meter: model package {field('$.detail.ModelPackageArn')} is {field('$.detail.ModelApprovalStatus')}.",
    )
