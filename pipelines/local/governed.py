"""The governed pipeline on this machine: its definition built and its code staged under the local home, runs of
it, and the record of a finished run.

Kept apart from the runner: building the definition imports ``pipelines.governed`` (and the SDK), which imports
``pipelines.registries``, which imports the local registry; nothing on that path may import this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meter.errors import MeterError
from pipelines.local.objects import LocalObjects
from pipelines.local.runner import Execution, LocalRunner


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
