"""`flops-meter pipeline …`: the governed pipeline's definition, its code upload, and its life in an account.

definition   offline, deterministic JSON (no AWS call; same inputs, same bytes)
upload-code  the content-addressed code bundle and demo inputs the definition points at
upsert       create or update the pipeline (needs the code uploaded)
start        start an execution, with parameter overrides
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from meter.errors import MeterError
from meter.policy.thresholds import rule_text

DEFINITION_LIMIT = 1_048_576  # characters: SageMaker's PipelineDefinition limit


def add_parser(sub) -> None:
    """`flops-meter pipeline …`, registered with the meter's command line (entry point flops_meter.commands)."""
    from pipelines.config import DEFAULT_HOME

    pipe = sub.add_parser("pipeline", help="the governed SageMaker pipeline: definition, upload-code, upsert, start")
    pipe.set_defaults(handler=run)
    psub = pipe.add_subparsers(dest="pipeline_command", required=True, parser_class=type(pipe))

    def config_arg(p):
        p.add_argument("--config", metavar="FILE", help="pipeline settings (JSON or YAML); defaults: the demo")

    d = psub.add_parser("definition", help="print the pipeline definition JSON (offline, deterministic)")
    config_arg(d)
    d.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    u = psub.add_parser("upload-code", help="upload the code bundle and demo inputs to their content addresses")
    config_arg(u)
    up = psub.add_parser("upsert", help="create or update the pipeline in SageMaker")
    config_arg(up)
    up.add_argument("--role", required=True, metavar="ARN", help="role SageMaker Pipelines assumes")
    s = psub.add_parser("start", help="start an execution of the pipeline")
    config_arg(s)
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    s.add_argument("--display-name", help="execution display name")
    r = psub.add_parser("run", help="run the pipeline on this machine (--local): real steps, local stores")
    config_arg(r)
    r.add_argument("--local", action="store_true", required=True, help="on this machine (the only mode for now)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    r.add_argument("--run-dir", metavar="DIR", help="where this run's steps and logs go (default under --home)")
    r.add_argument("--home", default=DEFAULT_HOME, metavar="DIR", help="local objects, audit store, registry")
    r.add_argument(
        "--store",
        metavar="URI",
        help="audit store (default: FLOPS_METER_STORE, else HOME/audit, which `audit` and "
        "`approvals` use by default too)",
    )
    r.add_argument("--quiet", action="store_true", help="do not stream the steps' output (it stays in log.txt)")
    r.add_argument("--definition", metavar="FILE", help="run this definition JSON instead of the governed pipeline")
    dm = psub.add_parser("demo", help="the README's main command: three local runs of the governed pipeline")
    dm.add_argument("--home", default=DEFAULT_HOME, metavar="DIR", help="local objects, audit store, registry")
    dm.add_argument("--verbose", action="store_true", help="stream every step's output")
    st = psub.add_parser("status", help="the steps and outcome of a local run")
    st.add_argument("run", nargs="?", help="run directory or execution id (default: the latest run under --home)")
    st.add_argument("--home", default=DEFAULT_HOME, metavar="DIR")
    st.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pipelines.config import PipelineConfig

    command = args.pipeline_command
    if command == "status":
        return cmd_status(args.run, args.home, args.json)
    if command == "run":
        return cmd_run(args)
    if command == "demo":
        from pathlib import Path

        from pipelines.demo import run_demo

        return run_demo(Path(args.home), quiet=not args.verbose)
    config = PipelineConfig.load(args.config)
    if command == "definition":
        return cmd_definition(config, args.out)
    if command == "start":
        return cmd_start(config, parse_params(args.param), args.display_name)
    with _aws_errors():
        if command == "upload-code":
            return cmd_upload(config)
        if command == "upsert":
            return cmd_upsert(config, args.role)
    raise MeterError(f"unknown pipeline command {command}")


def cmd_definition(config, out: str | None) -> int:
    from pipelines.governed import definition

    text = definition(config)
    if len(text) > DEFINITION_LIMIT:
        raise MeterError(f"the definition is {len(text):,} characters, over SageMaker's {DEFINITION_LIMIT:,}")
    if out:
        from meter.jsonfile import write_text

        write_text(out, text, "--out")
        print(f"wrote {out} ({len(text):,} characters)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_upload(config) -> int:
    from pipelines.code import upload
    from pipelines.governed import build

    governed = build(config)
    s3 = _client("s3", config)
    for artifact in governed.artifacts.values():
        uri, written = upload(artifact, s3, config.bucket, config.prefix, kms_key_id=config.kms_key_id)
        state = f"uploaded {written} files" if written else "already there"
        print(f"{artifact.name}: {uri} ({state})")
    return 0


def cmd_upsert(config, role: str) -> int:
    from pipelines.code import uploaded
    from pipelines.governed import PARAMETERS, build

    governed = build(config)
    s3 = _client("s3", config)
    missing = [a.name for a in governed.artifacts.values() if not uploaded(a, s3, config.bucket, config.prefix)]
    if missing:
        raise MeterError(
            f"the code the definition points at is not in s3://{config.bucket}/{config.prefix} ({', '.join(missing)}): "
            "run `flops-meter pipeline upload-code` first (with the same --config)"
        )
    sm = _client("sagemaker", config)
    description = "Governed fine-tuning (EU AI Act one-third rule). Parameters: " + "; ".join(
        f"{name}: {text}" for name, (_, _, text) in PARAMETERS.items()
    )
    request = dict(
        PipelineName=config.pipeline_name,
        PipelineDefinition=governed.definition,
        PipelineDescription=description[:3072],
        RoleArn=role,
    )
    try:
        sm.describe_pipeline(PipelineName=config.pipeline_name)
        exists = True
    except sm.exceptions.ResourceNotFound:
        exists = False
    except sm.exceptions.ClientError as e:  # moto answers ValidationException "Could not find pipeline"
        if not any(text in str(e) for text in ("does not exist", "Could not find")):
            raise
        exists = False
    if exists:
        response = sm.update_pipeline(**request)
        print(f"updated {response['PipelineArn']}")
    else:
        response = sm.create_pipeline(**request, PipelineDisplayName=config.pipeline_name)
        print(f"created {response['PipelineArn']}")
    return 0


def parse_params(items: list[str]) -> dict[str, str]:
    from pipelines.governed import ENUMS, PARAMETERS

    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise MeterError(f"--param {item!r}: write NAME=VALUE")
        if name not in PARAMETERS:
            raise MeterError(f"--param {name}: unknown parameter; use one of {', '.join(PARAMETERS)}")
        kind = PARAMETERS[name][0]
        try:
            number = int(value) if kind == "Integer" else float(value) if kind == "Float" else None
        except ValueError:
            raise MeterError(f"--param {name}={value}: expected {kind.lower()}") from None
        if number is not None and not (math.isfinite(number) and number > 0):
            raise MeterError(f"--param {name}={value}: expected a positive, finite {kind.lower()}")
        if name == "ApproachingFraction" and not number <= 1:
            raise MeterError(f"--param {name}={value}: expected a fraction of the threshold in (0, 1]")
        if name in ENUMS and value not in ENUMS[name]:
            raise MeterError(f"--param {name}={value}: expected one of {', '.join(ENUMS[name])}")
        params[name] = value
    return params


def cmd_start(config, params: dict[str, str], display_name: str | None) -> int:
    with _aws_errors():
        sm = _client("sagemaker", config)
        extra: dict[str, Any] = {"PipelineExecutionDisplayName": display_name} if display_name else {}
        response = sm.start_pipeline_execution(
            PipelineName=config.pipeline_name,
            PipelineParameters=[{"Name": k, "Value": v} for k, v in params.items()],
            **extra,
        )
    print(response["PipelineExecutionArn"])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.local.governed import run_governed

    if args.definition:  # any definition: its own parameters, checked by the runner
        from pipelines.local import LocalRunner
        from pipelines.local.governed import local_store_uri

        bad = [item for item in args.param if "=" not in item]
        if bad:
            raise MeterError(f"--param {bad[0]!r}: write NAME=VALUE")
        overrides = dict(item.partition("=")[::2] for item in args.param)
        definition = _read_definition(args.definition)
        store = local_store_uri(Path(args.home), args.store)  # a definition's s3:// audit store is this one here
        runner = LocalRunner(Path(args.home), quiet=args.quiet, store_uri=store)
        execution = runner.run(definition, overrides, args.run_dir)
    else:
        overrides = parse_params(args.param)
        execution = run_governed(
            Path(args.home),
            overrides,
            config_path=args.config,
            store_uri=args.store,
            run_dir=args.run_dir,
            quiet=args.quiet,
        )
    from pipelines.local.governed import load_execution

    print_summary(load_execution(execution.run_dir, Path(args.home)), Path(args.home))
    return execution.exit_code


def _read_definition(path: str) -> dict[str, Any]:
    from meter.jsonfile import read_json_object

    doc = read_json_object(path, "definition", hint="write one with `flops-meter pipeline definition > FILE`")
    if "Steps" not in doc:
        raise MeterError(f"definition {path} has no Steps: is it a SageMaker pipeline definition?")
    steps = doc["Steps"]
    if not isinstance(steps, list):
        raise MeterError(f"definition {path}: Steps must be a JSON array of steps")
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not all(isinstance(step.get(k), str) for k in ("Name", "Type")):
            raise MeterError(f"definition {path}: Steps[{index}] must be an object with a Name and a Type")
    return doc


def cmd_status(run: str, home: str, as_json: bool) -> int:
    from pathlib import Path

    from pipelines.local.governed import load_execution

    doc = load_execution(run, Path(home))
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print_summary(doc, Path(home))
    return 0 if doc["status"] == "Succeeded" else 1


def print_summary(doc: dict[str, Any], home) -> None:
    """The steps, the verdict and where the evidence is."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=120)  # logs and CI: no 80-column folding
    table = Table(title=f"execution {doc['execution_id']}: {doc['status']}")
    for col in ("step", "type", "status", "seconds", "detail"):
        table.add_column(col, justify="right" if col == "seconds" else "left", no_wrap=col != "detail")
    for s in doc["steps"]:
        seconds = f"{s['seconds']:.1f}" if s.get("seconds") is not None else ""
        detail = s.get("failure") or (f"branch: {s['outcome']}" if s.get("outcome") else "")
        detail = detail or s.get("properties", {}).get("ModelPackageArn", "")
        table.add_row(s["name"], s["type"], s["status"], seconds, detail)
    console.print(table)
    run_dir = doc["run_dir"]
    for name, file in (("ClassifyCompliance", "compliance/compliance.json"), ("PublishAudit", "audit/audit.json")):
        path = f"{run_dir}/steps/{name}/opt_ml/processing/output/{file}"
        try:
            with open(path, "rb") as f:
                found = json.loads(f.read())
        except OSError:
            continue
        except ValueError:
            raise MeterError(f"{path} is not valid JSON: the step's output was altered or truncated") from None
        try:
            if name == "ClassifyCompliance":
                line = (
                    f"verdict: {found['status']} (crossed={found['crossed']}): lineage {found['lineage']} "
                    f"{found['figures']['cumulative']} against {found['figures']['threshold']} "
                    f"({rule_text(found['threshold_rule'])})"
                )
            else:
                line = f"audit record: {found['record_uri']} (sha256 {found['record_sha256'][:16]}…)"
        except (KeyError, TypeError):
            raise MeterError(f"{path} lacks what its step writes: the step's output was altered") from None
        console.print(line)
    if doc.get("failure"):
        console.print(f"[bold]{doc['status']}[/bold]: {doc['failure']}", highlight=False)
    console.print(f"run directory: {run_dir} (logs in steps/<Name>/log.txt)")


def _client(service: str, config):
    import boto3

    from meter.audit.aws import boto_config

    return boto3.client(service, region_name=config.region, config=boto_config())


class _aws_errors:
    """AWS failures a user can fix (credentials, endpoint, permissions) as one line, not a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        from meter.audit.aws import aws_error

        problem = None if error is None else aws_error(error, "AWS", "set region in the pipeline config", any_code=True)
        if problem is not None:
            raise problem from None
        return False


def main(argv: list[str] | None = None) -> int:
    from meter.cli import main as meter_main

    return meter_main(["pipeline", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
