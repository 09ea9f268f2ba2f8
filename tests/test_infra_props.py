"""The construct's props, the app's context and the two offline synth paths (`python3 infra/app.py`, `cdk synth`)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aws_cdk") is None or importlib.util.find_spec("sagemaker") is None,
    reason="needs the infra and pipeline extras",
)
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_VALIDATION", "false")

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {  # no credentials: synth must not need any
    k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("CDK_OUTDIR", "CDK_CONTEXT_JSON")
} | {"AWS_EC2_METADATA_DISABLED": "true", "CDK_DISABLE_CLI_TELEMETRY": "true", "CDK_DISABLE_VERSION_CHECK": "1"}


def new_stack():
    import aws_cdk as cdk

    from infra.app import cdk_json_context

    app = cdk.App(context=cdk_json_context())
    return app, cdk.Stack(app, "Props")


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"approver_emails": ["compliance at example.com"]}, "approver e-mail 'compliance at example.com'"),
        ({"pipeline_name": "my pipeline"}, "pipeline_name 'my pipeline' is not valid"),
        ({"model_package_group_name": "x" * 64}, "model_package_group_name"),
        ({"prefix": "a/b"}, "prefix 'a/b' is not valid"),
        ({"pipeline_settings": {"bucket": "mine"}}, "pipeline setting\\(s\\) bucket cannot be set here"),
        ({"pipeline_settings": {"max_runtime_seconds": "1h"}}, "max_runtime_seconds must be a int"),
        ({"pipeline_settings": {"training_image": "docker.io/me/img:1"}}, "not an ECR image URI"),
    ],
)
def test_bad_props_fail_before_anything_is_built(props, message) -> None:
    from infra.construct import GovernedFineTuningPipeline

    _, stack = new_stack()
    with pytest.raises(ValueError, match=message):
        GovernedFineTuningPipeline(stack, "G", **props)


SECRET = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:hf-token-AbCdEf"


def test_retention_and_settings_reach_the_template() -> None:
    import aws_cdk as cdk
    from aws_cdk import assertions

    from infra.construct import GovernedFineTuningPipeline

    _, stack = new_stack()
    with pytest.raises(ValueError, match="audit_retention"):
        GovernedFineTuningPipeline(stack, "Bad", audit_retention=cdk.Duration.hours(1))
    g = GovernedFineTuningPipeline(
        stack,
        "G",
        pipeline_name="team-a-governed",
        audit_retention=cdk.Duration.days(400),
        pipeline_settings={"processing_instance_type": "ml.c5.xlarge", "hf_token_secret_arn": SECRET},
    )
    t = assertions.Template.from_stack(stack)
    t.has_resource_properties(
        "AWS::S3::Bucket",
        {"ObjectLockConfiguration": {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {
            "Mode": "COMPLIANCE", "Days": 400}}}},
    )  # fmt: skip
    (pipeline,) = t.find_resources("AWS::SageMaker::Pipeline").values()
    assert pipeline["Properties"]["PipelineName"] == "team-a-governed"
    body = json.dumps(pipeline["Properties"]["PipelineDefinition"])
    assert body.count("ml.c5.xlarge") == 3  # EstimateFLOPs, ClassifyCompliance, PublishAudit
    assert g.names["pipeline_name"] == "team-a-governed"
    # the token's secret: named to the two model-loading steps, readable by their roles, by no other
    assert body.count(f'\\"HF_TOKEN_SECRET_ARN\\": \\"{SECRET}\\"') == 2
    roles = t.find_resources("AWS::IAM::Role")
    readers = {
        logical for logical, role in roles.items() for policy in role["Properties"].get("Policies", [])
        for s in policy["PolicyDocument"]["Statement"] if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])
        and s["Resource"] == SECRET
    }  # fmt: skip
    assert readers == {stack.get_logical_id(g.analysis_role.node.default_child),
                       stack.get_logical_id(g.training_role.node.default_child)}  # fmt: skip


def test_cdk_nag_fails_the_synth_on_an_unacknowledged_finding(tmp_path) -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam

    from infra.app import build, cdk_json_context

    app, _, governed = build(cdk.App(context=cdk_json_context(), outdir=str(tmp_path)))
    governed.training_role.add_to_policy(iam.PolicyStatement(actions=["s3:*"], resources=["*"]))
    with pytest.raises(Exception, match=r"ValidationFailed|Validation failed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    (nag,) = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "failure"
    assert any("Action::s3:*" in v["ruleName"] for v in nag["violations"])


def test_two_stacks_and_a_redeploy_never_share_a_retained_name() -> None:
    """Issue 18: the model package group is retained on `make destroy`; its default name carries the stack's name and
    8 hex digits of the stack's id (new when a deleted stack is created again), so neither a second stack nor a
    redeploy meets it. The context key flops-meter:modelPackageGroupName names the group outright."""
    import aws_cdk as cdk
    from aws_cdk import assertions

    from infra.app import build, cdk_json_context
    from infra.construct import GovernedFineTuningPipeline

    app = cdk.App(context=cdk_json_context())
    built = {}
    for stack_name, pipeline_name in (("TeamA", "team-a-governed"), ("TeamB", "team-b-governed")):
        stack = cdk.Stack(app, stack_name)
        built[stack_name] = stack, GovernedFineTuningPipeline(stack, "Governed", pipeline_name=pipeline_name)
    names = {}
    for stack_name, (stack, g) in built.items():
        t = assertions.Template.from_stack(stack)
        (group,) = t.find_resources("AWS::SageMaker::ModelPackageGroup").values()
        assert group["DeletionPolicy"] == "Retain"
        name = group["Properties"]["ModelPackageGroupName"]
        stack_uuid = {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}
        assert name == {"Fn::Join": ["", [f"{stack_name.lower()}-models-",
                                          {"Fn::Select": [0, {"Fn::Split": ["-", stack_uuid]}]}]]}  # fmt: skip
        assert stack.resolve(g.model_package_group_name) == name  # what the roles, rules and pipeline use
        (alias,) = t.find_resources("AWS::KMS::Alias").values()
        (trail,) = t.find_resources("AWS::CloudTrail::Trail").values()
        names[stack_name] = {
            "group": json.dumps(name),
            "alias": alias["Properties"]["AliasName"],
            "trail": trail["Properties"]["TrailName"],
        }
        # buckets and the ledger: named by CloudFormation (a retained one never blocks a new one)
        assert not [b for b in t.find_resources("AWS::S3::Bucket").values() if "BucketName" in b["Properties"]]
        assert not [d for d in t.find_resources("AWS::DynamoDB::Table").values() if "TableName" in d["Properties"]]
    for what in ("group", "alias", "trail"):
        assert names["TeamA"][what] != names["TeamB"][what], what

    # a redeploy may name its group outright (a context value): exactly that name, in the roles' ARNs too
    context = {**cdk_json_context(), "flops-meter:modelPackageGroupName": "Acme-Models-2027"}
    _, stack, g = build(cdk.App(context=context), nag=False)
    t = assertions.Template.from_stack(stack)
    (group,) = t.find_resources("AWS::SageMaker::ModelPackageGroup").values()
    assert group["Properties"]["ModelPackageGroupName"] == "Acme-Models-2027"
    assert "model-package/acme-models-2027/*" in json.dumps(t.find_resources("AWS::IAM::Role"))
    with pytest.raises(ValueError, match="model_package_group_name 'bad name'"):
        build(cdk.App(context={**context, "flops-meter:modelPackageGroupName": "bad name"}), nag=False)


def test_python_infra_app_synthesizes_offline(tmp_path) -> None:
    env = OFFLINE | {"CDK_OUTDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "infra/app.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    template = json.loads((tmp_path / "FlopsMeterGovernance.template.json").read_text())
    assert "Node 20 is end-of-life" not in run.stderr
    types = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::SageMaker::Pipeline", "AWS::DynamoDB::Table", "AWS::SNS::Topic", "AWS::KMS::Key"} <= types

    bad = env | {"CDK_CONTEXT_JSON": json.dumps({"flops-meter:approverEmails": "not-an-address"})}
    run = subprocess.run([sys.executable, "infra/app.py"], cwd=ROOT, env=bad, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "infra/app.py: approver e-mail 'not-an-address' is not valid: give addresses like compliance@example.com"
    ]


def cdk_cli() -> str:
    """The pinned CDK CLI of the Makefile (one that reads this aws-cdk-lib's cloud assembly)."""
    return re.search(r"^CDK_CLI \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs Node.js (npx) for the CDK CLI")
def test_cdk_synth_with_the_pinned_cli(tmp_path) -> None:
    env = OFFLINE | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                     "CDK_HOME": str(tmp_path / "home")}  # fmt: skip
    run = subprocess.run(
        ["npx", "--yes", cdk_cli(), "synth", "--quiet", "--output", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0 and re.search(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH", run.stderr):
        pytest.skip(f"the npm registry is unreachable: {cdk_cli()} cannot be fetched")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "FlopsMeterGovernance.template.json").is_file()
