"""Run a pipeline definition on one machine: each step in the scheduler's order, with its expressions resolved.

Processing and Training steps run as subprocesses of their own entrypoints with ``/opt/ml`` remapped under the run
directory (``OPT_ML``); their inputs and outputs go through the local objects (S3 on disk); ConditionStep branches
and FailStep messages are evaluated as SageMaker does; RegisterModel writes the local registry. The execution's
state is saved to ``execution.json`` after every change, so an interrupted run leaves a readable record.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter.jsonfile import write_atomic
from meter.timestamps import utc_timestamp
from pipelines.local.expressions import Resolver, StepError, as_text, evaluate_condition, resolve_parameters
from pipelines.local.objects import LocalObjects
from pipelines.local.registry import LocalRegistry
from pipelines.local.scheduler import Node, plan


class ExecutionStopped(Exception):
    """SIGINT during a run: the running step is stopped and the execution saved as Stopped."""


@dataclass
class StepState:
    name: str
    type: str
    status: str = "Pending"  # Pending, Executing, Succeeded, Failed, Skipped, Stopped
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    failure: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    property_files: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None  # a condition's branch: "if" or "else"


class LocalRunner:
    def __init__(
        self,
        home: Path,
        *,
        echo: Callable[[str], None] | None = None,
        quiet: bool = False,
        store_uri: str | None = None,
    ):
        self.home = Path(home).resolve()  # the steps run in their own directories: a relative home would move
        # S3 is this machine's objects/ folder; so is the audit store: a definition's s3:// store becomes this one
        self.store_uri = store_uri
        self.objects = LocalObjects(self.home / "objects")
        self.registry = LocalRegistry(self.home / "registry.db")
        self.echo = echo or (lambda line: print(line, flush=True))
        self.quiet = quiet
        self._child: subprocess.Popen | None = None

    # public ------------------------------------------------------------------------------------------------------

    def run(self, definition: dict[str, Any], overrides: dict[str, str] | None = None, run_dir: Path | None = None):
        parameters = resolve_parameters(definition, overrides or {})
        nodes = plan(definition)
        execution_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        run_dir = Path(run_dir) if run_dir else self.home / "runs" / execution_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "definition.json").write_text(json.dumps(definition, indent=1, sort_keys=True))
        (run_dir / "parameters.json").write_text(json.dumps(parameters, indent=1, sort_keys=True))
        states = {n: StepState(n, node.step["Type"]) for n, node in nodes.items()}
        execution = Execution(execution_id, run_dir, states, parameters)
        resolver = Resolver(parameters, execution_id, states)
        execution.save()
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._interrupt)
        try:
            for name, node in nodes.items():
                state = states[name]
                if execution.status != "Executing":
                    state.status = "Skipped" if state.status == "Pending" else state.status
                    continue
                if not self._enabled(node, states):
                    state.status = "Skipped"
                    continue
                self._run_step(node, state, resolver, execution)
                execution.save()
                if state.status == "Failed":
                    execution.status = "Failed"
                    execution.failure = state.failure
        except ExecutionStopped:
            execution.status = "Stopped"
            current = next((s for s in states.values() if s.status == "Executing"), None)
            if current is not None:
                current.status, current.failure = "Stopped", "interrupted (SIGINT)"
                execution.failure = f"interrupted during step {current.name}"
            for s in states.values():
                if s.status == "Pending":
                    s.status = "Skipped"
        finally:
            signal.signal(signal.SIGINT, previous)
            if execution.status == "Executing":
                execution.status = "Succeeded"
            execution.save()
        return execution

    # steps -------------------------------------------------------------------------------------------------------

    def _enabled(self, node: Node, states: dict[str, StepState]) -> bool:
        if any(states[n].status in ("Failed", "Skipped", "Stopped") for n in node.needs):
            return False
        if node.guard is None:
            return True
        return states[node.guard[0]].outcome == node.guard[1]

    def _run_step(self, node: Node, state: StepState, resolve: Resolver, execution: Execution) -> None:
        step = node.step
        state.status, state.started = "Executing", utc_timestamp()
        execution.save()
        t0 = time.perf_counter()
        self.echo(f"▶ {state.name} ({state.type})")
        try:
            handler = getattr(self, f"_step_{state.type.lower()}")
            handler(step, state, resolve, execution)
            if state.status == "Executing":
                state.status = "Succeeded"
        except StepError as e:
            state.status, state.failure = "Failed", str(e)
        finally:
            state.ended, state.seconds = utc_timestamp(), time.perf_counter() - t0
        mark = {"Succeeded": "✔", "Failed": "✘"}.get(state.status, "•")
        detail = f": {state.failure}" if state.failure else (f" → {state.outcome}" if state.outcome else "")
        self.echo(f"{mark} {state.name} {state.status.lower()} in {state.seconds:.1f} s{detail}")

    def _step_condition(self, step, state, resolve, execution) -> None:
        conditions = step["Arguments"].get("Conditions") or []
        result = all(evaluate_condition(c, lambda v: resolve(v, state.name)) for c in conditions)
        state.outcome = "if" if result else "else"
        state.properties["Outcome"] = result

    def _step_fail(self, step, state, resolve, execution) -> None:
        message = resolve(step["Arguments"].get("ErrorMessage", ""), state.name)
        state.status, state.failure = "Failed", str(message)

    def _step_registermodel(self, step, state, resolve, execution) -> None:
        request = resolve(step["Arguments"], state.name)
        metadata = request.get("CustomerMetadataProperties") or {}
        request["CustomerMetadataProperties"] = {k: as_text(v) for k, v in metadata.items()}
        arn = self.registry.register(request, execution.execution_id)
        state.properties["ModelPackageArn"] = arn
        self.echo(f"  registered {arn} ({request.get('ModelApprovalStatus')})")

    def _step_processing(self, step, state, resolve, execution) -> None:
        args = resolve(step["Arguments"], state.name)
        opt_ml = execution.run_dir / "steps" / state.name / "opt_ml"
        for item in args.get("ProcessingInputs") or []:
            s3 = item["S3Input"]
            dest = _local(s3["LocalPath"], opt_ml)
            if self.objects.download(s3["S3Uri"], dest) == 0:
                raise StepError(f"step {state.name}: input {item['InputName']} is empty: nothing at {s3['S3Uri']}")
        app = args["AppSpecification"]
        command = [_program(p, opt_ml) for p in app.get("ContainerEntrypoint") or []]
        command += [self._store(str(a)) for a in app.get("ContainerArguments") or []]
        env = {k: _mapped(str(v), opt_ml) for k, v in (args.get("Environment") or {}).items()}
        self._subprocess(command, env, opt_ml, execution.run_dir / "steps" / state.name, state)
        outputs = {}
        for item in (args.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
            s3 = item["S3Output"]
            local = _local(s3["LocalPath"], opt_ml)
            local.mkdir(parents=True, exist_ok=True)
            self.objects.upload(local, s3["S3Uri"])
            outputs[item["OutputName"]] = local
            state.properties[f"ProcessingOutputConfig.Outputs['{item['OutputName']}'].S3Output.S3Uri"] = s3["S3Uri"]
        for pf in step.get("PropertyFiles") or []:
            local = outputs.get(pf["OutputName"])
            path = local / pf["FilePath"] if local is not None else None
            if path is None or not path.is_file():
                raise StepError(
                    f"step {state.name}: did not write property file {pf['PropertyFileName']} "
                    f"({pf['OutputName']}/{pf['FilePath']})"
                )
            state.property_files[pf["PropertyFileName"]] = json.loads(path.read_text())

    def _step_training(self, step, state, resolve, execution) -> None:
        args = resolve(step["Arguments"], state.name)
        step_dir = execution.run_dir / "steps" / state.name
        opt_ml = step_dir / "opt_ml"
        for channel in args.get("InputDataConfig") or []:
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            if self.objects.download(uri, opt_ml / "input" / "data" / channel["ChannelName"]) == 0:
                raise StepError(f"step {state.name}: channel {channel['ChannelName']} is empty: nothing at {uri}")
        hps = {k: as_text(v) for k, v in (args.get("HyperParameters") or {}).items()}
        config = opt_ml / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(hps))
        source = opt_ml / "input" / "data" / "sm_drivers" / "sourcecode.json"
        entry = json.loads(source.read_text()).get("entry_script") if source.is_file() else None
        if not entry:
            raise StepError(f"step {state.name}: no entry script (the sm_drivers channel holds no sourcecode.json)")
        code = opt_ml / "input" / "data" / "code"
        env = {k: _mapped(str(v), opt_ml) for k, v in (args.get("Environment") or {}).items()}
        env["SM_HPS"] = json.dumps(hps)
        # one process here; on SageMaker the SDK's driver starts torchrun on every node
        self._subprocess([sys.executable, str(code / entry)], env, opt_ml, step_dir, state, cwd=code)
        job_name = f"{state.name}-{execution.execution_id}"
        output = args["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{job_name}"
        model_tar = step_dir / "model.tar.gz"
        _tar(opt_ml / "model", model_tar)
        self.objects.upload(model_tar, f"{output}/output/model.tar.gz")
        if (opt_ml / "output" / "data").is_dir():
            _tar(opt_ml / "output" / "data", step_dir / "output.tar.gz")
            self.objects.upload(step_dir / "output.tar.gz", f"{output}/output/output.tar.gz")
        checkpoints = (args.get("CheckpointConfig") or {}).get("S3Uri")
        if checkpoints and (opt_ml / "checkpoints").is_dir():
            self.objects.upload(opt_ml / "checkpoints", checkpoints)
        state.properties["ModelArtifacts.S3ModelArtifacts"] = f"{output}/output/model.tar.gz"
        state.properties["OutputDataConfig.S3OutputPath"] = args["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        state.properties["TrainingJobName"] = job_name

    # processes ---------------------------------------------------------------------------------------------------

    def _subprocess(self, command, env, opt_ml: Path, step_dir: Path, state: StepState, cwd: Path | None = None):
        step_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **env, "OPT_ML": str(opt_ml), "PYTHONUNBUFFERED": "1"}
        # the definition's path first (the code bundle it was given), then this environment's own
        paths = [env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
        environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        with open(step_dir / "log.txt", "w") as log:
            self._child = subprocess.Popen(
                command, env=environment, cwd=cwd or step_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            )  # fmt: skip
            for line in self._child.stdout:
                log.write(line)
                log.flush()
                if not self.quiet or line.startswith("flops_meter: cumulative_flops="):  # training progress
                    self.echo(f"  {state.name} │ {line.rstrip()}")
            code = self._child.wait()
            self._child = None
        if code != 0:
            failure = opt_ml / "output" / "failure"
            reason = failure.read_text().strip() if failure.is_file() else f"exit status {code}; see {step_dir}/log.txt"
            raise StepError(f"step {state.name}: {reason}")

    def _interrupt(self, signum, frame) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                child.kill()
        raise ExecutionStopped()

    def _store(self, argument: str) -> str:
        if self.store_uri and argument.startswith("--store-uri=s3://"):
            return f"--store-uri={self.store_uri}"
        return argument


@dataclass
class Execution:
    execution_id: str
    run_dir: Path
    states: dict[str, StepState]
    parameters: dict[str, Any]
    status: str = "Executing"
    failure: str | None = None
    started: str = field(default_factory=utc_timestamp)

    def save(self) -> None:
        doc = {
            "execution_id": self.execution_id,
            "status": self.status,
            "failure": self.failure,
            "started": self.started,
            "parameters": self.parameters,
            "steps": [
                {k: v for k, v in vars(s).items() if k != "property_files"}
                | {"property_files": sorted(s.property_files)}
                for s in self.states.values()
            ],
        }
        # atomic: an interrupted run leaves a readable state
        write_atomic(self.run_dir / "execution.json", json.dumps(doc, indent=1, default=str))

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "Succeeded" else 130 if self.status == "Stopped" else 1


def _local(container_path: str, opt_ml: Path) -> Path:
    if not container_path.startswith("/opt/ml/"):
        raise StepError(f"container path {container_path} is outside /opt/ml")
    return opt_ml / container_path.removeprefix("/opt/ml/")


def _mapped(value: str, opt_ml: Path) -> str:
    return value.replace("/opt/ml/", f"{opt_ml}/")


def _program(part: str, opt_ml: Path) -> str:
    if part in ("python3", "python"):
        return sys.executable
    return _mapped(part, opt_ml)


def _tar(directory: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz") as tar:
        if directory.is_dir():
            for path in sorted(directory.rglob("*")):
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
