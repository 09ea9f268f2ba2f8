"""The CDK app: one stack with the governed fine-tuning pipeline, checked by cdk-nag at every synth (AwsSolutions
and NIST 800-53 R5).

    cdk synth            # or: python3 infra/app.py   (offline: no credentials, no network)
    cdk deploy -c flops-meter:approverEmails=compliance@example.com

Settings come from the CDK context (cdk.json, or -c KEY=VALUE):
    flops-meter:stackName              default FlopsMeterGovernance
    flops-meter:pipelineName           default flops-meter-governed
    flops-meter:modelPackageGroupName  default <stack name>-models-<8 hex digits of the stack's id>: new with each
                                       stack, never the name of a group retained by a deleted one
    flops-meter:approverEmails         comma-separated addresses (or a JSON list in cdk.json)
    flops-meter:auditRetentionDays     default 3650 (Object Lock COMPLIANCE: cannot be shortened afterwards)
    flops-meter:pipelineSettings       {"training_image": ..., "processing_instance_type": ..., ...}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python3 infra/app.py` from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

DEFAULT_STACK = "FlopsMeterGovernance"


def cdk_json_context() -> dict[str, Any]:
    """The context of cdk.json (feature flags and our settings): what `cdk synth` gives the app."""
    return json.loads((ROOT / "cdk.json").read_text()).get("context", {})


def _setting(app, name: str, default: Any = None) -> Any:
    value = app.node.try_get_context(f"flops-meter:{name}")
    return default if value is None else value


def _emails(value: Any) -> list[str]:
    if isinstance(value, str):
        return [e.strip() for e in value.split(",") if e.strip()]
    return list(value or [])


def build(app=None, *, nag: bool = True):
    """(app, stack, construct) with the settings from the app's context."""
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks

    from infra.construct import GovernedFineTuningPipeline
    from infra.nag import acknowledge

    app = app or cdk.App(context=cdk_json_context())
    stack = cdk.Stack(
        app,
        _setting(app, "stackName", DEFAULT_STACK),
        description="flops-meter: governed fine-tuning pipeline (EU AI Act GPAI compute threshold)",
    )
    settings = _setting(app, "pipelineSettings", {})
    if isinstance(settings, str):
        settings = json.loads(settings)
    days = _setting(app, "auditRetentionDays", 3650)
    if not str(days).isdigit():
        raise ValueError(f"flops-meter:auditRetentionDays {days!r} is not a whole number of days")
    governed = GovernedFineTuningPipeline(
        stack,
        "Governed",
        pipeline_name=_setting(app, "pipelineName", "flops-meter-governed"),
        model_package_group_name=_setting(app, "modelPackageGroupName"),
        approver_emails=_emails(_setting(app, "approverEmails")),
        audit_retention=cdk.Duration.days(int(days)),
        pipeline_settings=settings,
    )
    acknowledge(governed)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), NIST80053R5Checks(app))
    return app, stack, governed


def main() -> int:
    import aws_cdk as cdk

    from meter.errors import MeterError

    try:
        # under `cdk synth` the CLI names the output directory (CDK_OUTDIR); run directly, write ./cdk.out
        outdir = None if os.environ.get("CDK_OUTDIR") else str(ROOT / "cdk.out")
        app, _, _ = build(cdk.App(context=cdk_json_context(), outdir=outdir))
        app.synth()
    except (ValueError, MeterError) as e:
        print(f"infra/app.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
