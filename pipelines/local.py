"""Run a pipeline definition on one machine: the very JSON `flops-meter pipeline definition` produces.

Processing and Training steps run as subprocesses of their own entrypoints with ``/opt/ml`` remapped under the run
directory (``OPT_ML``); S3 URIs map to a local object directory; PropertyFiles, ``JsonGet``, ``Join``, conditions,
ConditionStep branches and FailStep messages are evaluated as SageMaker does; RegisterModel writes a local model
registry (SQLite). A step type it does not know is an error naming the step.

Layout of the local home (default ``./flops-meter-local``)::

    objects/<bucket>/<key>     what s3://bucket/key holds
    audit/                     the audit store (file://), shared by runs: lineages add up
    registry.db                model packages, approval status, customer metadata
    runs/<execution-id>/       definition.json, parameters.json, execution.json, steps/<Name>/{log.txt,opt_ml/}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from meter.errors import MeterError

SUPPORTED = ("Processing", "Training", "Condition", "Fail", "RegisterModel")


class StepError(MeterError):
    """A step could not run or its output is not what the definition says."""


class ExecutionStopped(Exception):
    pass


# -- S3 on disk ------------------------------------------------------------------------------------------------------


@dataclass
class LocalObjects:
    root: Path

    def path(self, uri: str) -> Path:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise MeterError(f"not an S3 URI: {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        return self.root / bucket / key

    def download(self, uri: str, dest: Path) -> int:
        """S3Prefix semantics: every object whose key starts with the URI's key, under dest; returns files."""
        base = self.path(uri)
        dest.mkdir(parents=True, exist_ok=True)
        if base.is_file():
            shutil.copy2(base, dest / base.name)
            return 1
        if base.is_dir():
            shutil.copytree(base, dest, dirs_exist_ok=True)
            return sum(1 for p in dest.rglob("*") if p.is_file())
        return 0

    def upload(self, src: Path, uri: str) -> None:
        target = self.path(uri)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


# -- the registry ----------------------------------------------------------------------------------------------------


class LocalRegistry:
    """Model package groups and packages, as SageMaker's registry holds them (approval status, metadata, card)."""

    # name: SQL type; columns added after a registry was created are added to it when it is opened
    COLUMNS: ClassVar[dict[str, str]] = {
        "arn": "TEXT PRIMARY KEY",
        "group_name": "TEXT",
        "version": "INTEGER",
        "approval_status": "TEXT",
        "model_data_url": "TEXT",
        "image": "TEXT",
        "metadata": "TEXT",
        "execution_id": "TEXT",
        "created": "TEXT",
        "description": "TEXT",
        "approval_description": "TEXT",
        "model_card": "TEXT",
    }

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            columns = ", ".join(f"{k} {v}" for k, v in self.COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS model_packages ({columns})")
            have = {row[1] for row in db.execute("PRAGMA table_info(model_packages)")}
            for name in self.COLUMNS.keys() - have:
                db.execute(f"ALTER TABLE model_packages ADD COLUMN {name} {self.COLUMNS[name]}")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def register(self, request: dict[str, Any], execution_id: str) -> str:
        """CreateModelPackage: a new version in its group; returns its ARN."""
        group = request["ModelPackageGroupName"]
        container = request["InferenceSpecification"]["Containers"][0]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # the version number and the insert under one write lock
            version = db.execute("SELECT COUNT(*) FROM model_packages WHERE group_name = ?", (group,)).fetchone()[0] + 1
            row = {
                "arn": f"arn:aws:sagemaker:local:000000000000:model-package/{group}/{version}",
                "group_name": group,
                "version": version,
                "approval_status": request.get("ModelApprovalStatus", "PendingManualApproval"),
                "model_data_url": container.get("ModelDataUrl"),
                "image": container.get("Image"),
                "metadata": json.dumps(request.get("CustomerMetadataProperties") or {}, sort_keys=True),
                "execution_id": execution_id,
                "created": _now(),
                "description": request.get("ModelPackageDescription"),
                "approval_description": None,  # UpdateModelPackage sets it (CreateModelPackage has no such field)
                "model_card": (request.get("ModelCard") or {}).get("ModelCardContent"),
            }
            db.execute(f"INSERT INTO model_packages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))  # fmt: skip
        return row["arn"]

    def update(self, arn: str, status: str, description: str, metadata: dict[str, str]) -> None:
        """UpdateModelPackage: the approval status, its description, and metadata added to what is there."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            found = db.execute("SELECT metadata FROM model_packages WHERE arn = ?", (arn,)).fetchone()
            if found is None:
                raise MeterError(f"no model package {arn} in {self.path}")
            merged = json.dumps({**json.loads(found[0]), **metadata}, sort_keys=True)
            db.execute(
                "UPDATE model_packages SET approval_status = ?, approval_description = ?, metadata = ? WHERE arn = ?",
                (status, description, merged, arn),
            )

    def packages(self, group: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM model_packages" + (" WHERE group_name = ?" if group else "") + " ORDER BY created"
            rows = db.execute(query, (group,) if group else ()).fetchall()
        return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]


# -- expressions -----------------------------------------------------------------------------------------------------


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


_OUTPUT_REF = re.compile(r"^ProcessingOutputConfig\.Outputs\['([^']+)'\]\.S3Output\.S3Uri$")


class Resolver:
    def __init__(self, parameters: dict[str, Any], execution_id: str, states: dict[str, StepState]):
        self.parameters, self.execution_id, self.states = parameters, execution_id, states

    def __call__(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [self(v, where) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Get"}:
            return self.get(value["Get"], where)
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return str(join["On"]).join(_text(self(v, where)) for v in join["Values"])
        if set(value) == {"Std:JsonGet"}:
            spec = value["Std:JsonGet"]
            ref = spec["PropertyFile"]["Get"]
            step, _, rest = ref.removeprefix("Steps.").partition(".PropertyFiles.")
            doc = self._state(step, where).property_files.get(rest)
            if doc is None:
                raise StepError(f"step {where}: step {step} has no property file {rest}")
            return _json_path(doc, spec["Path"], f"step {where}: {rest}")
        return {k: self(v, where) for k, v in value.items()}

    def get(self, ref: str, where: str) -> Any:
        if ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in self.parameters:
                raise StepError(f"step {where}: parameter {name} is not defined")
            return self.parameters[name]
        if ref == "Execution.PipelineExecutionId":
            return self.execution_id
        if ref.startswith("Execution."):
            raise StepError(f"step {where}: execution variable {ref} is not supported locally")
        if ref.startswith("Steps."):
            step, _, prop = ref.removeprefix("Steps.").partition(".")
            state = self._state(step, where)
            if prop not in state.properties:
                raise StepError(f"step {where}: property {prop} of step {step} is not available")
            return state.properties[prop]
        raise StepError(f"step {where}: unsupported reference {ref}")

    def _state(self, step: str, where: str) -> StepState:
        state = self.states.get(step)
        if state is None:
            raise StepError(f"step {where}: refers to unknown step {step}")
        if state.status != "Succeeded":
            raise StepError(f"step {where}: step {step} has not succeeded ({state.status})")
        return state


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_path(doc: Any, path: str, what: str) -> Any:
    value = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (KeyError, IndexError, TypeError):
            raise StepError(f"{what} has no value at {path}") from None
    return value


def _references(value: Any) -> set[str]:
    """Names of the steps an expression reads from."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Get" and isinstance(v, str) and v.startswith("Steps."):
                found.add(v.removeprefix("Steps.").split(".", 1)[0])
            else:
                found |= _references(v)
    elif isinstance(value, list):
        for v in value:
            found |= _references(v)
    return found


def evaluate_condition(condition: dict[str, Any], resolve: Callable[[Any], Any]) -> bool:
    kind = condition["Type"]
    if kind == "Not":
        return not evaluate_condition(condition["Condition"], resolve)
    if kind == "Or":
        return any(evaluate_condition(c, resolve) for c in condition["Conditions"])
    if kind == "In":
        return resolve(condition["QueryValue"]) in [resolve(v) for v in condition["Values"]]
    left, right = resolve(condition["LeftValue"]), resolve(condition["RightValue"])
    compare = {
        "Equals": lambda a, b: a == b,
        "GreaterThan": lambda a, b: a > b,
        "GreaterThanOrEqualTo": lambda a, b: a >= b,
        "LessThan": lambda a, b: a < b,
        "LessThanOrEqualTo": lambda a, b: a <= b,
    }
    if kind not in compare:
        raise MeterError(f"condition type {kind} is not supported locally")
    return compare[kind](left, right)


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Node:
    step: dict[str, Any]
    guard: tuple[str, str] | None  # (condition step, "if"/"else") whose branch holds it
    needs: set[str]


def plan(definition: dict[str, Any]) -> dict[str, Node]:
    """Every step with its branch and what it waits for; unknown types and cycles are errors naming the step."""
    nodes: dict[str, Node] = {}

    def add(steps: list[dict[str, Any]], guard: tuple[str, str] | None) -> None:
        for step in steps:
            name, kind = step.get("Name"), step.get("Type")
            if kind not in SUPPORTED:
                raise MeterError(
                    f"step {name}: type {kind} is not supported by the local runner ({', '.join(SUPPORTED)})"
                )
            if name in nodes:
                raise MeterError(f"step {name} appears twice in the definition")
            own = step.get("Arguments") or {}
            if kind == "Condition":  # its branches are steps of their own, not inputs of the condition
                own = own.get("Conditions")
            needs = _references(own) | _references(step.get("PropertyFiles"))
            needs |= {d if isinstance(d, str) else d.get("Step") for d in step.get("DependsOn") or []}
            if guard:
                needs.add(guard[0])
            nodes[name] = Node(step, guard, needs)
            if kind == "Condition":
                add(step["Arguments"].get("IfSteps") or [], (name, "if"))
                add(step["Arguments"].get("ElseSteps") or [], (name, "else"))

    add(definition.get("Steps") or [], None)
    for name, node in nodes.items():
        unknown = node.needs - set(nodes)
        if unknown:
            raise MeterError(f"step {name}: depends on unknown step(s) {', '.join(sorted(unknown))}")
    order, done = [], set()
    remaining = dict(nodes)
    while remaining:
        ready = [n for n, node in remaining.items() if node.needs <= done]
        if not ready:
            raise MeterError(f"the definition has a dependency cycle among steps {', '.join(sorted(remaining))}")
        for n in sorted(ready):
            order.append(n)
            done.add(n)
            del remaining[n]
    return {n: nodes[n] for n in order}


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
        state.status, state.started = "Executing", _now()
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
            state.ended, state.seconds = _now(), time.perf_counter() - t0
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
        request["CustomerMetadataProperties"] = {k: _text(v) for k, v in metadata.items()}
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
        hps = {k: _text(v) for k, v in (args.get("HyperParameters") or {}).items()}
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
    started: str = field(default_factory=lambda: _now())

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
        tmp = self.run_dir / "execution.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, self.run_dir / "execution.json")  # atomic: an interrupted run leaves a readable state

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "Succeeded" else 130 if self.status == "Stopped" else 1


def resolve_parameters(definition: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    declared = {p["Name"]: p for p in definition.get("Parameters") or []}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise MeterError(f"unknown parameter(s) {', '.join(unknown)}: the pipeline has {', '.join(declared)}")
    values = {}
    for name, p in declared.items():
        raw = overrides.get(name, p.get("DefaultValue"))
        if raw is None:
            raise MeterError(f"parameter {name} has no default: give --param {name}=VALUE")
        try:
            values[name] = {"Integer": int, "Float": float, "Boolean": _boolean}.get(p["Type"], str)(raw)
        except ValueError:
            raise MeterError(f"parameter {name}={raw!r} is not a valid {p['Type']}") from None
        if p.get("EnumValues") and str(raw) not in p["EnumValues"]:
            raise MeterError(f"parameter {name}={raw!r}: use one of {', '.join(p['EnumValues'])}")
    return values


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "false"):
        return str(raw).lower() == "true"
    raise ValueError(raw)


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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def local_store_uri(home: Path, store_uri: str | None = None) -> str:
    """The audit store of local runs: --store, else FLOPS_METER_STORE, else the home's audit/ (the shared default)."""
    return store_uri or os.environ.get("FLOPS_METER_STORE") or f"file://{Path(home).resolve() / 'audit'}"


def stage_governed(home: Path, config_path: str | None = None, store_uri: str | None = None) -> dict[str, Any]:
    """The governed definition for this machine (its audit store: local_store_uri), its code staged where it points."""
    from pipelines.config import PipelineConfig
    from pipelines.governed import build

    home = Path(home).resolve()
    config = PipelineConfig.load(config_path, audit_store_uri=local_store_uri(home, store_uri))
    governed = build(config)
    objects = LocalObjects(home / "objects")
    for key_prefix, artifact in governed.artifacts.items():  # what `upload-code` puts in S3
        artifact.write(objects.root / config.bucket / key_prefix)
    return json.loads(governed.definition)


def run_governed(
    home: Path,
    overrides: dict[str, str] | None = None,
    *,
    config_path: str | None = None,
    store_uri: str | None = None,
    definition: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Execution:
    """Run the governed pipeline here; ``definition`` (from stage_governed) saves rebuilding it for each run."""
    home = Path(home).resolve()
    definition = definition if definition is not None else stage_governed(home, config_path, store_uri)
    return LocalRunner(home, echo=echo, quiet=quiet).run(definition, overrides, run_dir)


def load_execution(run: str | Path | None, home: Path) -> dict[str, Any]:
    """A finished (or interrupted) run's execution.json, by run directory or execution id; None: the latest run."""
    if run is None:
        runs = sorted((Path(home) / "runs").glob("*/execution.json"))  # execution ids begin with their UTC time
        if not runs:
            raise MeterError(f"no runs under {Path(home) / 'runs'}: run one with flops-meter pipeline run --local")
        run = runs[-1].parent
    from meter.jsonfile import check_shape, read_json_object

    for candidate in (Path(run), Path(home) / "runs" / str(run)):
        path = candidate / "execution.json"
        try:
            found = path.is_file()
        except OSError as e:  # a name too long for the file system
            raise MeterError(
                f"no run {str(run)[:60]}…: {e.strerror}: give a run directory or an execution id"
            ) from None
        if found:
            doc = read_json_object(path, "execution record")
            where = f"execution record {path}"
            missing = [k for k in ("execution_id", "status", "steps") if k not in doc]
            if missing:
                raise MeterError(f"{where} has no {', '.join(missing)}: it was not written by `pipeline run`")
            check_shape(doc, {"execution_id": "string", "status": "string", "steps": "array"}, where)
            for index, step in enumerate(doc["steps"]):
                if not isinstance(step, dict) or not all(
                    isinstance(step.get(k), str) for k in ("name", "type", "status")
                ):
                    raise MeterError(f"{where}: steps[{index}] must be an object with a name, a type and a status")
                fields = {"seconds": "number", "failure": "string", "outcome": "string", "properties": "object"}
                check_shape(step, fields, f"{where}: steps[{index}]")
            return {**doc, "run_dir": str(candidate)}
    raise MeterError(f"no run {run}: give a run directory or an execution id under {Path(home) / 'runs'}")
