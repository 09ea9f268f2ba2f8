"""The CDK app, synthesized once for the module with cdk-nag's AwsSolutions and NIST 800-53 R5 packs: what an
auditor checks.

The template is read with aws_cdk.assertions; the pipeline body is resolved (Ref, Fn::GetAtt, Fn::Join) with
stand-in values and compared with what ``pipelines.governed`` builds for the same values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aws_cdk") is None or importlib.util.find_spec("sagemaker") is None,
    reason="needs the infra and pipeline extras",
)
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_VALIDATION", "false")  # the CloudFormation schema check: cfn-lint does it below

ROOT = Path(__file__).resolve().parent.parent
AUDIT_FORBIDDEN = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectRetention",
    "s3:BypassGovernanceRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutLifecycleConfiguration",
    "dynamodb:DeleteItem",
    "dynamodb:UpdateItem",
    "dynamodb:BatchWriteItem",
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    import aws_cdk as cdk
    from aws_cdk import assertions

    from infra.app import build, cdk_json_context

    outdir = tmp_path_factory.mktemp("cdk.out")
    context = {**cdk_json_context(), "flops-meter:approverEmails": "compliance@example.com,dpo@example.com"}
    context.pop("flops-meter:modelPackageGroupName", None)  # the construct's default: a name unique to the stack
    app, stack, governed = build(cdk.App(context=context, outdir=str(outdir)))
    assembly = app.synth()  # raises if cdk-nag finds anything not acknowledged
    template = assertions.Template.from_stack(stack)
    return {"stack": stack, "governed": governed, "template": template, "outdir": outdir, "assembly": assembly}


def resources(template, kind: str) -> dict:
    return template.find_resources(kind)


def logical_id(stack, construct) -> str:
    return stack.resolve(stack.get_logical_id(construct.node.default_child or construct))


def statements(props_doc) -> list[dict]:
    return props_doc.get("Statement", [])


def actions(statement: dict) -> list[str]:
    a = statement.get("Action", [])
    return [a] if isinstance(a, str) else a


def identity_statements(template) -> dict[str, list[dict]]:
    """Role inline policies and IAM policies, by logical id."""
    out = {}
    for lid, r in resources(template, "AWS::IAM::Role").items():
        out[lid] = [s for p in r["Properties"].get("Policies", []) for s in statements(p["PolicyDocument"])]
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for lid, r in resources(template, kind).items():
            out[lid] = statements(r["Properties"]["PolicyDocument"])
    return out


# --------------------------------------------------------------------------------------------------------------


def test_audit_bucket_is_locked_in_compliance_mode_for_ten_years(synth) -> None:
    from aws_cdk.assertions import Match

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    audit = resources(t, "AWS::S3::Bucket")[logical_id(stack, g.audit_bucket)]
    props = audit["Properties"]
    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 3650}},
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert audit["DeletionPolicy"] == "Retain" and audit["UpdateReplacePolicy"] == "Retain"
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": logical_id(stack, g.log_bucket)}
    # nobody may put a delete marker over a record either
    t.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": logical_id(stack, g.audit_bucket)},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Principal": {"AWS": "*"},
                                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                            }
                        )
                    ]
                )
            },
        },
    )


def test_every_bucket_is_encrypted_versioned_private_and_tls_only(synth) -> None:
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    buckets = resources(t, "AWS::S3::Bucket")
    assert len(buckets) == 4  # artifacts, audit, its trail's logs, access logs
    key = {"Fn::GetAtt": [logical_id(stack, g.key), "Arn"]}
    policies = {p["Properties"]["Bucket"]["Ref"]: p for p in resources(t, "AWS::S3::BucketPolicy").values()}
    for lid, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, lid
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, lid
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        if lid == logical_id(stack, g.log_bucket):  # S3 log delivery cannot write SSE-KMS objects
            assert sse == {"SSEAlgorithm": "AES256"}
        else:
            assert sse == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}, lid
            assert "LoggingConfiguration" in props, lid
        tls = [
            s
            for s in statements(policies[lid]["Properties"]["PolicyDocument"])
            if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        ]
        assert tls and actions(tls[0]) == ["s3:*"], lid


def test_key_ledger_and_topic(synth) -> None:
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    key_id = logical_id(stack, g.key)
    key = resources(t, "AWS::KMS::Key")[key_id]
    assert key["Properties"]["EnableKeyRotation"] is True and key["DeletionPolicy"] == "Retain"
    key_arn = {"Fn::GetAtt": [key_id, "Arn"]}

    (ledger,) = resources(t, "AWS::DynamoDB::Table").values()
    props = ledger["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "lineage", "KeyType": "HASH"},
        {"AttributeName": "sequence", "KeyType": "RANGE"},
    ]  # what meter.audit.s3_store.S3Store writes
    assert props["SSESpecification"] == {"KMSMasterKeyId": key_arn, "SSEEnabled": True, "SSEType": "KMS"}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True and ledger["DeletionPolicy"] == "Retain"

    (topic,) = resources(t, "AWS::SNS::Topic").values()
    assert topic["Properties"]["KmsMasterKeyId"] == key_arn
    subscriptions = resources(t, "AWS::SNS::Subscription").values()
    assert sorted(s["Properties"]["Endpoint"] for s in subscriptions) == ["compliance@example.com", "dpo@example.com"]
    # TLS only; the approval function publishes with its role, and the only service principal is CloudWatch, for
    # this account's alarms (the topic policy replaces SNS's default one, without which they cannot publish)
    topic_arn = {"Ref": logical_id(stack, g.topic)}
    t.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {"Statement": [
        {"Action": "sns:Publish", "Condition": {"Bool": {"aws:SecureTransport": "false"}}, "Effect": "Deny",
         "Principal": "*", "Resource": topic_arn, "Sid": "AllowPublishThroughSSLOnly"},
        {"Action": "sns:Publish", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
         "Resource": topic_arn, "Sid": "CloudWatchAlarmsOfThisAccountPublish", "Condition": {
             "ArnLike": {"aws:SourceArn": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":cloudwatch:",
                                                              {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
                                                              ":alarm:*"]]}},
             "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}},
    ], "Version": "2012-10-17"}})  # fmt: skip
    # and the key lets CloudWatch encrypt what it publishes there: two actions, no more
    (cloudwatch,) = [s for s in key["Properties"]["KeyPolicy"]["Statement"]
                     if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]  # fmt: skip
    assert cloudwatch["Effect"] == "Allow" and cloudwatch["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_no_wildcard_actions(synth) -> None:
    t = synth["template"]
    for lid, stmts in identity_statements(t).items():
        assert stmts, f"{lid} has no statement"
        for s in stmts:
            assert s["Effect"] == "Allow"
            assert not [a for a in actions(s) if "*" in a], f"{lid}: {actions(s)}"
    assert len(resources(t, "AWS::IAM::ManagedPolicy")) == 1  # ours, for the approvers; no AWS-managed one
    for lid, role in resources(t, "AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], lid  # nothing AWS-managed, nothing broader
    # resource policies: wildcards only where they deny (TLS-only) or in the key's delegation to the account
    docs = [(lid, r["Properties"]["PolicyDocument"]) for kind in ("AWS::S3::BucketPolicy", "AWS::SNS::TopicPolicy")
            for lid, r in resources(t, kind).items()]  # fmt: skip
    docs += [(lid, r["Properties"]["KeyPolicy"]) for lid, r in resources(t, "AWS::KMS::Key").items()]
    for lid, doc in docs:
        for s in statements(doc):
            if [a for a in actions(s) if "*" in a] and s["Effect"] == "Allow":
                assert actions(s) == ["kms:*"] and s["Principal"]["AWS"]["Fn::Join"][1][-1] == ":root", (lid, s)


def test_audit_role_can_append_but_never_delete_or_unlock(synth) -> None:
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    roles = identity_statements(t)
    audit = roles[logical_id(stack, g.audit_role)]
    granted = {a for s in audit for a in actions(s)}
    assert {"s3:PutObject", "dynamodb:PutItem", "s3:GetBucketObjectLockConfiguration"} <= granted
    for lid, stmts in roles.items():  # no role of the stack, not only the audit role
        for s in stmts:
            forbidden = [a for a in actions(s) if a.startswith(AUDIT_FORBIDDEN) or a.startswith("s3:Delete")]
            assert not forbidden, f"{lid} may {forbidden}"
    # the audit bucket is written by the audit role (records, flagged items: never a decision), by the approval
    # function under flagged/ only, and by the approvers under decisions/ only
    audit_arn = {"Fn::GetAtt": [logical_id(stack, g.audit_bucket), "Arn"]}

    def joined(resource) -> list:
        return [r["Fn::Join"][1] for r in (resource if isinstance(resource, list) else [resource])
                if isinstance(r, dict) and "Fn::Join" in r and audit_arn in r["Fn::Join"][1]]  # fmt: skip

    writers = {
        lid: joined(s["Resource"]) for lid, stmts in roles.items() for s in stmts
        if "s3:PutObject" in actions(s) and joined(s["Resource"])
    }  # fmt: skip
    function, approvers = logical_id(stack, g.approval_function_role), logical_id(stack, g.approver_policy)
    assert set(writers) == {logical_id(stack, g.audit_role), function, approvers}
    assert sorted(writers[logical_id(stack, g.audit_role)], key=str) == [
        [audit_arn, "/records/flagged/*"],
        [audit_arn, "/records/records/*"],
    ]
    assert writers[function] == [[audit_arn, "/records/flagged/*"]]
    assert writers[approvers] == [[audit_arn, "/records/decisions/*"]]


def test_pipeline_roles_pass_only_the_step_roles_to_sagemaker(synth) -> None:
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    stmts = identity_statements(t)[logical_id(stack, g.pipeline_role)]
    (pass_role,) = [s for s in stmts if actions(s) == ["iam:PassRole"]]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert sorted(r["Fn::GetAtt"][0] for r in pass_role["Resource"]) == sorted(
        logical_id(stack, r) for r in (g.analysis_role, g.training_role, g.audit_role)
    )
    for role in (g.analysis_role, g.training_role, g.audit_role, g.pipeline_role):
        trust = resources(t, "AWS::IAM::Role")[logical_id(stack, role)]["Properties"]["AssumeRolePolicyDocument"]
        assert trust["Statement"] == [  # SageMaker, on behalf of this account only (no confused deputy)
            {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
             "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}
        ]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------


STACK_ID = (
    "arn:aws:cloudformation:eu-central-1:123456789012:stack/FlopsMeterGovernance/7f3e9a1c-2b4d-11f1-9c0e-0a1b2c3d4e5f"
)
GROUP = "flopsmetergovernance-models-7f3e9a1c"  # <stack name>-models-<the first 8 hex digits of the stack's id>


class Resolver:
    """Evaluates Ref / Fn::GetAtt / Fn::Join / Fn::Sub-free templates with stand-in values."""

    def __init__(self, stack, governed, template) -> None:
        from pipelines.images import image_uri

        self.template = template.to_json()
        ids = {
            "bucket": logical_id(stack, governed.artifacts_bucket),
            "audit_bucket": logical_id(stack, governed.audit_bucket),
            "ledger_table": logical_id(stack, governed.ledger),
            "key": logical_id(stack, governed.key),
        }
        self.refs = {
            "AWS::Region": "eu-central-1",
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": STACK_ID,
            ids["bucket"]: "acme-artifacts-1a2b",
            ids["audit_bucket"]: "acme-audit-3c4d",
            ids["ledger_table"]: "acme-ledger-5e6f",
        }
        self.arns = {
            logical_id(stack, governed.analysis_role): "arn:aws:iam::123456789012:role/acme-analysis",
            logical_id(stack, governed.training_role): "arn:aws:iam::123456789012:role/acme-training",
            logical_id(stack, governed.audit_role): "arn:aws:iam::123456789012:role/acme-audit",
            ids["key"]: "arn:aws:kms:eu-central-1:123456789012:key/0f0e0d0c-1111-2222-3333-444455556666",
        }
        self.values = {
            "region": "eu-central-1",
            "bucket": self.refs[ids["bucket"]],
            "role_arn": self.arns[logical_id(stack, governed.analysis_role)],
            "training_role_arn": self.arns[logical_id(stack, governed.training_role)],
            "audit_role_arn": self.arns[logical_id(stack, governed.audit_role)],
            "kms_key_id": self.arns[ids["key"]],
            "audit_bucket": self.refs[ids["audit_bucket"]],
            "ledger_table": self.refs[ids["ledger_table"]],
            "model_package_group": self(stack.resolve(governed.model_package_group_name)),
            # the images the SDK publishes in eu-central-1: CloudFormation looks them up in the stack's mapping
            **{f"{kind}_image": image_uri(kind, "eu-central-1") for kind in ("training", "processing", "inference")},
        }

    def __call__(self, value):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return [self(v) for v in value]
        (fn, arg), *rest = value.items()
        assert not rest, value
        if fn == "Ref":
            return self.refs[arg]
        if fn == "Fn::GetAtt":
            assert arg[1] == "Arn", arg
            return self.arns[arg[0]]
        if fn == "Fn::Join":
            return arg[0].join(self(v) for v in arg[1])
        if fn == "Fn::Select":
            return self(arg[1])[arg[0]]
        if fn == "Fn::Split":
            return self(arg[1]).split(arg[0])
        if fn == "Fn::FindInMap":
            name, top, second = (self(a) for a in arg)
            return self.template["Mappings"][name][top][second]
        raise AssertionError(f"unexpected {fn} in the pipeline definition")


def test_pipeline_body_is_what_pipelines_builds(synth) -> None:
    from infra.pipeline import deployed_config
    from pipelines.governed import definition

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    (pipeline,) = resources(t, "AWS::SageMaker::Pipeline").values()
    props = pipeline["Properties"]
    assert props["PipelineName"] == "flops-meter-governed"
    assert props["RoleArn"] == {"Fn::GetAtt": [logical_id(stack, g.pipeline_role), "Arn"]}
    assert set(props["PipelineDefinition"]) == {"PipelineDefinitionBody"}  # not the lower-case key of aws-cdk#25774
    resolve = Resolver(stack, g, t)
    deployed = resolve(props["PipelineDefinition"]["PipelineDefinitionBody"])
    expected = definition(deployed_config(g.settings, **g.names, values=resolve.values))
    assert deployed == expected
    doc = json.loads(deployed)
    assert (
        "acme-audit-3c4d/records?table=acme-ledger-5e6f&region=eu-central-1&retention=bucket&retention_days=3650"
        in deployed
    )
    assert resolve.values["model_package_group"] in deployed  # the group, named at deploy time
    assert {s["Name"] for s in doc["Steps"]} == {"EstimateFLOPs", "PreflightGate"}
    assert len(deployed) < 1_048_576
    # the pipeline waits for its code and its model package group
    assert set(pipeline["DependsOn"]) >= {logical_id(stack, g.model_package_group)}


def test_code_is_deployed_where_the_definition_points(synth) -> None:
    """Every artifact the definition names is in the deployment's asset, at its content address, with its marker."""
    from infra.pipeline import PLACEHOLDERS, deployed_config
    from pipelines.code import marker_key
    from pipelines.governed import build

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    (deployment,) = resources(t, "Custom::CDKBucketDeployment").values()
    props = deployment["Properties"]
    assert props["DestinationBucketName"] == {"Ref": logical_id(stack, g.artifacts_bucket)}
    assert props["DestinationBucketKeyPrefix"] == "flops-meter" and props["Prune"] is False
    (zip_key,) = props["SourceObjectKeys"]
    asset_dir = synth["outdir"] / f"asset.{zip_key.removesuffix('.zip')}"
    governed = build(deployed_config(g.settings, **g.names, values=PLACEHOLDERS))
    assert set(governed.artifacts) >= {"flops-meter/code/" + governed.artifacts[k].sha256[:20]
                                       for k in governed.artifacts if k.startswith("flops-meter/code/")}  # fmt: skip
    for key_prefix, artifact in governed.artifacts.items():
        for rel, data in artifact.files.items():
            path = asset_dir / key_prefix.removeprefix("flops-meter/") / rel
            assert path.read_bytes() == data, path
        marker = asset_dir / marker_key(artifact, "flops-meter").removeprefix("flops-meter/")
        assert marker.read_text() == artifact.sha256
    assert (asset_dir / "code").is_dir() and any((asset_dir / "code").glob("*/steps/launch.py"))


def test_rules_watch_blocked_executions_and_model_packages(synth) -> None:
    from pipelines.governed import PLAN_CROSSES, REGISTRATION_BLOCKED

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    rules = resources(t, "AWS::Events::Rule")
    blocked = rules[logical_id(stack, g.blocked_rule)]["Properties"]
    pattern = blocked["EventPattern"]
    assert pattern["source"] == ["aws.sagemaker"]
    assert pattern["detail-type"] == ["SageMaker Model Building Pipeline Execution Step Status Change"]
    assert pattern["detail"]["stepName"] == [PLAN_CROSSES, REGISTRATION_BLOCKED]
    assert pattern["detail"]["currentStepStatus"] == ["Failed"]
    assert Resolver(stack, g, t)(pattern["detail"]["pipelineArn"][0]) == (
        "arn:aws:sagemaker:eu-central-1:123456789012:pipeline/flops-meter-governed"
    )
    packages = rules[logical_id(stack, g.package_rule)]["Properties"]["EventPattern"]
    assert packages["detail-type"] == ["SageMaker Model Package State Change"]
    resolve = Resolver(stack, g, t)
    assert resolve(packages["detail"]["ModelPackageGroupName"][0]) == GROUP
    function = logical_id(stack, g.approval_function)
    for rule in (g.blocked_rule, g.package_rule):
        (target,) = rules[logical_id(stack, rule)]["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 86400, "MaximumRetryAttempts": 20}
        source = {"Fn::GetAtt": [logical_id(stack, rule), "Arn"]}
        t.has_resource_properties("AWS::Lambda::Permission", {
            "Action": "lambda:InvokeFunction", "FunctionName": {"Fn::GetAtt": [function, "Arn"]},
            "Principal": "events.amazonaws.com", "SourceArn": source})  # fmt: skip
    (group,) = resources(t, "AWS::SageMaker::ModelPackageGroup").values()
    assert resolve(group["Properties"]["ModelPackageGroupName"]) == GROUP
    assert group["DeletionPolicy"] == "Retain"  # registered models carry their verdicts


def test_approval_function_runs_the_handler_from_its_asset(synth) -> None:
    """The function's asset holds meter/ and pipelines/; its handler imports there without the SageMaker SDK."""
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    props = resources(t, "AWS::Lambda::Function")[logical_id(stack, g.approval_function)]["Properties"]
    assert props["Handler"] == "pipelines.notify.handler" and props["Runtime"].startswith("python3.")
    assert props["Role"] == {"Fn::GetAtt": [logical_id(stack, g.approval_function_role), "Arn"]}
    resolve = Resolver(stack, g, t)
    env = props["Environment"]["Variables"]
    assert resolve(env["AUDIT_STORE_URI"]) == (
        "s3://acme-audit-3c4d/records?table=acme-ledger-5e6f&region=eu-central-1&retention=bucket&retention_days=3650"
    )
    assert env["TOPIC_ARN"] == {"Ref": logical_id(stack, g.topic)}
    assert props["KmsKeyArn"] == {"Fn::GetAtt": [logical_id(stack, g.key), "Arn"]}  # its environment, too
    asset = synth["outdir"] / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
    assert (asset / "meter/audit/flagged.py").read_bytes() == (ROOT / "meter/audit/flagged.py").read_bytes()
    assert not list(asset.rglob("__pycache__")) and not (asset / "infra").exists()
    # every module of ours from the asset, none from this checkout (an editable install would hide a missing one)
    probe = (
        "import sys; import pipelines.notify as n; assert callable(n.handler); "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('sagemaker', 'torch', 'aws_cdk')], 'heavy import'; "
        f"ours = [m for m, v in sys.modules.items() if m.split('.')[0] in ('meter', 'pipelines', 'steps', 'infra')]; "
        f"assert not [m for m in ours if not sys.modules[m].__file__.startswith({str(asset)!r})], 'not from the asset'"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=asset, env={**os.environ, "PYTHONPATH": str(asset)},
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    statements_ = identity_statements(t)[logical_id(stack, g.approval_function_role)]
    granted = sorted(a for s in statements_ for a in actions(s))
    assert granted == sorted([
        "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketObjectLockConfiguration", "kms:Decrypt",
        "kms:Encrypt", "kms:GenerateDataKey", "sns:Publish", "sagemaker:DescribeModelPackage",
        "logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage",
        "dynamodb:Query", "dynamodb:Scan", "dynamodb:GetItem", "s3:ListBucketVersions", "cloudwatch:PutMetricData",
    ])  # fmt: skip


def test_approver_policy_is_what_the_approvals_commands_call(synth) -> None:
    """The actions of the calls `approvals` and `audit verify` make against this stack (S3Store, SageMakerRegistry)."""
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    granted = sorted(a for s in identity_statements(t)[logical_id(stack, g.approver_policy)] for a in actions(s))
    assert granted == sorted([
        "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketObjectLockConfiguration",
        "dynamodb:Query", "dynamodb:Scan", "dynamodb:GetItem",
        "kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey",
        "sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage",
        "sagemaker:ListModelPackages",
    ])  # fmt: skip


def test_outputs(synth) -> None:
    outputs = synth["template"].find_outputs("*")
    assert set(outputs) >= {
        "ArtifactsBucketName",
        "AuditBucketName",
        "LedgerTableName",
        "AuditStoreUri",
        "PipelineName",
        "PipelineArn",
        "ApprovalTopicArn",
        "ApproverPolicyArn",
        "ModelPackageGroupName",
    }


def test_cdk_nag_passes_with_reasoned_acknowledgements_only(synth) -> None:
    """Both packs at every synth: no finding left, error or warning, and each acknowledged one with its reason, on
    the resource it concerns."""
    report = json.loads((synth["outdir"] / "validation-report.json").read_text())
    packs = {r["pluginName"]: r for r in report["pluginReports"]}
    assert set(packs) == {"AwsSolutions", "NIST.800.53.R5"}
    for pack in packs.values():
        assert pack["conclusion"] == "success" and pack["violations"] == [], pack["pluginName"]
        for finding in pack["suppressedViolations"]:
            assert len(finding["reason"]) > 60, finding["acknowledgedId"]
    suppressed = packs["AwsSolutions"]["suppressedViolations"]
    assert suppressed, "the expected IAM5 findings should be acknowledged, not absent"
    for finding in suppressed:
        assert finding["ruleName"].startswith(("AwsSolutions-IAM5[", "AwsSolutions-L1")), finding["ruleName"]
    wildcard_actions = [f for f in suppressed if "Action::" in f["ruleName"]]
    assert not wildcard_actions  # only resource wildcards are acknowledged, never actions
    nist = {}
    for finding in packs["NIST.800.53.R5"]["suppressedViolations"]:
        for construct in finding["violatingConstructs"]:
            nist.setdefault(finding["ruleName"].removeprefix("NIST.800.53.R5-"), set()).add(
                construct["constructPath"].removeprefix("FlopsMeterGovernance/").removesuffix("/Resource")
            )
    deployment = next(p for p in nist["LambdaDLQ"])
    assert deployment.startswith("Custom::CDKBucketDeployment")
    assert nist == {  # design choices, each answered in infra/nag.py; nothing on the trail, the key or the topic
        "S3BucketReplicationEnabled": {f"Governed/{b}" for b in ("Audit", "AuditTrailLogs", "Artifacts", "AccessLogs")},
        "S3DefaultEncryptionKMS": {"Governed/AccessLogs"},  # S3 log delivery writes SSE-S3 only
        "DynamoDBInBackupPlan": {"Governed/Ledger"},
        "IAMNoInlinePolicy": {f"Governed/{r}Role" for r in (
            "Analysis", "Training", "Audit", "Pipeline", "CodeDeployment", "ApprovalFunction", "AuditTrail")},
        "LambdaConcurrency": {"Governed/ApprovalFunction", deployment},
        "LambdaInsideVPC": {"Governed/ApprovalFunction", deployment},
        "LambdaDLQ": {deployment},
    }  # fmt: skip


def test_audit_bucket_data_events_are_trailed_signed_and_locked(synth) -> None:
    """Issue 18: who read or wrote which record, in a trail of the audit bucket's object events, with signed digests,
    under the stack's key, in a bucket that keeps it as long as the records; an attempt on a record alarms."""
    from infra.trail import CLOUDTRAIL, TAMPERING_METRIC

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    (trail,) = resources(t, "AWS::CloudTrail::Trail").values()
    props = trail["Properties"]
    audit_arn = {"Fn::GetAtt": [logical_id(stack, g.audit_bucket), "Arn"]}
    assert props["EventSelectors"] == [{
        "DataResources": [{"Type": "AWS::S3::Object", "Values": [{"Fn::Join": ["", [audit_arn, "/"]]}]}],
        "IncludeManagementEvents": False, "ReadWriteType": "All",
    }]  # fmt: skip
    assert props["IsLogging"] is True and props["EnableLogFileValidation"] is True
    key_id = logical_id(stack, g.key)
    assert props["KMSKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    trail_bucket = logical_id(stack, g.trail_bucket)
    assert props["S3BucketName"] == {"Ref": trail_bucket}
    assert props["CloudWatchLogsLogGroupArn"] == {"Fn::GetAtt": [logical_id(stack, g.trail_log_group), "Arn"]}
    assert props["CloudWatchLogsRoleArn"] == {"Fn::GetAtt": [logical_id(stack, g.trail_role), "Arn"]}
    name = props["TrailName"]
    trail_arn = Resolver(stack, g, t)(
        {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":cloudtrail:", {"Ref": "AWS::Region"}, ":",
                           {"Ref": "AWS::AccountId"}, f":trail/{name}"]]}
    )  # fmt: skip
    assert trail_arn == f"arn:aws:cloudtrail:eu-central-1:123456789012:trail/{name}"

    # its bucket: locked like the records, private, KMS, TLS-only, access-logged, retained, no deletes
    bucket = resources(t, "AWS::S3::Bucket")[trail_bucket]
    assert bucket["Properties"]["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 3650}},
    }
    assert bucket["DeletionPolicy"] == "Retain"
    resolve = Resolver(stack, g, t)
    (policy,) = [p for p in resources(t, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": trail_bucket}]  # fmt: skip
    by_sid = {s.get("Sid"): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(by_sid) >= {"CloudTrailAclCheck", "CloudTrailWrite", "DenyLogDeletion"}
    for sid in ("CloudTrailAclCheck", "CloudTrailWrite"):  # this trail only (no confused deputy)
        assert by_sid[sid]["Principal"] == {"Service": CLOUDTRAIL}
        assert resolve(by_sid[sid]["Condition"]["StringEquals"]["aws:SourceArn"]) == trail_arn
    resolve.arns[trail_bucket] = "arn:aws:s3:::acme-trail-7a8b"
    assert resolve(by_sid["CloudTrailWrite"]["Resource"]) == "arn:aws:s3:::acme-trail-7a8b/AWSLogs/123456789012/*"
    assert by_sid["DenyLogDeletion"]["Effect"] == "Deny" and by_sid["DenyLogDeletion"]["Principal"] == {"AWS": "*"}

    # the key: CloudTrail may encrypt this trail's files and describe the key, scoped to the trail
    statements_ = resources(t, "AWS::KMS::Key")[key_id]["Properties"]["KeyPolicy"]["Statement"]
    cloudtrail = [s for s in statements_ if s.get("Principal") == {"Service": CLOUDTRAIL}]
    assert sorted(actions(s)[0] for s in cloudtrail) == ["kms:DescribeKey", "kms:GenerateDataKey"]
    for s in cloudtrail:
        assert resolve(s["Condition"]["StringEquals"]["aws:SourceArn"]) == trail_arn
    (encrypt,) = [s for s in cloudtrail if actions(s) == ["kms:GenerateDataKey"]]
    assert resolve(encrypt["Condition"]["StringLike"]["kms:EncryptionContext:aws:cloudtrail:arn"]) == (
        "arn:aws:cloudtrail:*:123456789012:trail/*"
    )
    # every log group under the key; CloudWatch Logs may use it for this account's groups in this region only
    for lid, group in resources(t, "AWS::Logs::LogGroup").items():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}, lid
    (logs_,) = [s for s in statements_ if "logs." in json.dumps(s.get("Principal", ""))]
    assert resolve(logs_["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]) == (
        "arn:aws:logs:eu-central-1:123456789012:log-group:*"
    )

    # the delivery role writes to its log group and nothing else; the alarm tells the approvers
    (role_statement,) = identity_statements(t)[logical_id(stack, g.trail_role)]
    assert actions(role_statement) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert role_statement["Resource"] == props["CloudWatchLogsLogGroupArn"]
    (metric_filter,) = resources(t, "AWS::Logs::MetricFilter").values()
    pattern = metric_filter["Properties"]["FilterPattern"]
    assert all(f'"{word}"' in pattern for word in ("AccessDenied", "DeleteObject", "PutObjectRetention"))
    assert metric_filter["Properties"]["MetricTransformations"][0]["MetricName"] == TAMPERING_METRIC
    alarm = resources(t, "AWS::CloudWatch::Alarm")[logical_id(stack, g.tampering_alarm)]["Properties"]
    assert alarm["MetricName"] == TAMPERING_METRIC and alarm["Threshold"] == 1
    assert alarm["AlarmActions"] == [{"Ref": logical_id(stack, g.topic)}]


def test_cfn_lint_passes(synth) -> None:
    template = synth["outdir"] / "FlopsMeterGovernance.template.json"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            "--ignore-checks",
            "W3005",
            "--",
            str(template),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_images_come_from_the_sdk_for_the_stacks_region(synth) -> None:
    """A region-agnostic stack looks its images up per region: the SDK's registry account for each (eu-south-1,
    me-central-1 and China have their own), and the job roles may pull exactly those repositories."""
    from sagemaker.core import image_uris

    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    (rows,) = (v for k, v in t.to_json()["Mappings"].items() if "Images" in k)
    assert {"eu-south-1", "me-central-1", "cn-north-1", "us-gov-west-1", "eu-central-1"} <= set(rows)
    for region in ("eu-south-1", "me-central-1", "cn-north-1"):
        sdk = image_uris.retrieve(
            "huggingface", region=region, version="5.3.0", base_framework_version="pytorch2.9.0",
            py_version="py312", image_scope="training", instance_type="ml.p5.48xlarge",
        )  # fmt: skip
        assert rows[region]["training"] == sdk
        assert "-cpu-" in rows[region]["processing"] and "huggingface-pytorch-inference" in rows[region]["processing"]
    assert rows["eu-south-1"]["training"].startswith("692866216735.dkr.ecr.eu-south-1.amazonaws.com/")
    assert rows["cn-north-1"]["training"].split("/")[0].endswith(".amazonaws.com.cn")
    resolve = Resolver(stack, g, t)
    pulls = [resolve(r) for s in identity_statements(t)[logical_id(stack, g.training_role)]
             if "ecr:BatchGetImage" in actions(s) for r in s["Resource"]]  # fmt: skip
    assert sorted(pulls) == [
        "arn:aws:ecr:eu-central-1:763104351884:repository/huggingface-pytorch-inference",
        "arn:aws:ecr:eu-central-1:763104351884:repository/huggingface-pytorch-training",
    ]


def test_no_approval_event_is_lost_and_nobody_can_unlock_the_records(synth) -> None:
    """Issue 18: EventBridge and Lambda drop an event after their retries unless it has somewhere to go; an account
    administrator could schedule the key's deletion; a plain PUT over a record would become its current version."""
    t, stack, g = synth["template"], synth["stack"], synth["governed"]
    queue = logical_id(stack, g.dead_letters)
    function = resources(t, "AWS::Lambda::Function")[logical_id(stack, g.approval_function)]["Properties"]
    assert function["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue, "Arn"]}}
    for rule in (g.blocked_rule, g.package_rule):
        (target,) = resources(t, "AWS::Events::Rule")[logical_id(stack, rule)]["Properties"]["Targets"]
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue, "Arn"]}}
    alarms = resources(t, "AWS::CloudWatch::Alarm")
    assert len(alarms) == 4 and all(a["Properties"]["AlarmActions"] == [{"Ref": logical_id(stack, g.topic)}]
                                    for a in alarms.values())  # fmt: skip
    # the daily verification: scheduled, and a day without its metric alarms as a failure does
    verify = alarms[logical_id(stack, g.verify_alarm)]["Properties"]
    assert verify["MetricName"] == "AuditVerifyFailed" and verify["TreatMissingData"] == "breaching"
    (target,) = resources(t, "AWS::Events::Rule")[logical_id(stack, g.verify_rule)]["Properties"]["Targets"]
    assert json.loads(target["Input"]) == {"flops_meter": "verify"}
    (key,) = resources(t, "AWS::KMS::Key").values()
    deny = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny == [{"Sid": "DenyDeletionAndDisabling", "Effect": "Deny", "Principal": {"AWS": "*"},
                     "Action": ["kms:DisableKey", "kms:ScheduleKeyDeletion"], "Resource": "*"}]  # fmt: skip
    policies = resources(t, "AWS::S3::BucketPolicy")
    audit = logical_id(stack, g.audit_bucket)
    (policy,) = [p for p in policies.values() if p["Properties"]["Bucket"] == {"Ref": audit}]
    (write_once,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                     if s.get("Sid") == "DenyOverwritingWriteOnceDocuments"]  # fmt: skip
    assert write_once["Action"] == "s3:PutObject" and write_once["Condition"] == {"Null": {"s3:if-none-match": "true"}}
