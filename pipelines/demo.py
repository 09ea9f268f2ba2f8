"""The README's main command: the governed pipeline on one machine, three ways, on a tiny Llama-style model.

1. as deployed: the plan and the run stay below the threshold; the model is registered, PendingManualApproval;
2. with a tiny PretrainFlops (1e9 FLOP): the plan crosses, and the pre-flight gate stops it before training;
3. the same, with AllowPlannedCrossing=true: it trains, crosses, is published, and its registration is blocked;

and then, outside the pipeline, one run of the training script with the meter on, left unpublished at
``<home>/flops_meter.json``: what the README's "After training" commands classify and publish.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from meter.errors import MeterError

PATHS = [
    ("below the threshold", {}),
    ("plan crosses: pre-flight gate", {"PretrainFlops": "1e9"}),
    ("crossing allowed: trains, registration blocked", {"PretrainFlops": "1e9", "AllowPlannedCrossing": "true"}),
]


def run_demo(home: Path, quiet: bool = True) -> int:
    from rich.console import Console
    from rich.table import Table

    from meter.audit.store import DEFAULT_STORE
    from pipelines.local import LocalRegistry
    from pipelines.local.governed import local_store_uri, run_governed, stage_governed

    console = Console() if sys.stdout.isatty() else Console(width=120)
    home = Path(home).resolve()
    definition = stage_governed(home)  # one build for the three runs: only their parameters differ
    results = []
    for number, (title, params) in enumerate(PATHS, start=1):
        shown = " ".join(f"--param {k}={v}" for k, v in params.items()) or "(defaults)"
        console.rule(f"[bold]{number}. {title}[/bold]  {shown}")
        with console.status(f"running the governed pipeline ({title})…"):
            execution = run_governed(
                home, params, definition=definition, quiet=quiet, echo=lambda line: console.print(line, highlight=False)
            )
        results.append((title, execution))  # a failure's message was printed with its step

    table = Table(title="flops-meter demo: the governed pipeline on one machine", show_lines=True)
    for col in ("path", "exit", "planned", "run (lineage)", "threshold", "verdict", "outcome"):
        table.add_column(col, overflow="fold")
    for title, execution in results:
        states = execution.states
        estimate = states["EstimateFLOPs"].property_files.get("EstimateReport", {})
        compliance = states["ClassifyCompliance"].property_files.get("ComplianceReport")
        planned = estimate.get("verdict", {}).get("figures", {}).get("this_run", "")
        if compliance:
            ran = f"{compliance['figures']['this_run']} ({compliance['figures']['cumulative']})"
            verdict = f"{compliance['status']}, crossed={compliance['crossed']}"
        else:
            ran, verdict = "not trained", f"plan: {estimate.get('planned_status', '?')}"
        threshold = estimate.get("verdict", {}).get("figures", {}).get("threshold", "")
        if states["RegisterModel"].status == "Succeeded":
            package = states["RegisterModel"].properties["ModelPackageArn"].split("model-package/", 1)[-1]
            outcome = f"registered as {package}, PendingManualApproval"
        elif states["RegistrationBlocked"].status == "Failed":
            outcome = "registration blocked (record published)"
        elif states["PlanCrossesThreshold"].status == "Failed":
            outcome = "stopped before training"
        else:
            outcome = execution.status
        table.add_row(title, str(execution.exit_code), planned, ran, threshold, verdict, outcome)
    console.print(table)
    with console.status("a run outside the pipeline, for the README's classify and publish…"):
        record = train_unpublished(home)
    console.print(f"a run of your own, metered and not yet published: {_shown(record)}")

    store = local_store_uri(home)
    # the shared default (`audit`, `approvals` and `pipeline run --local` from this directory): no flag needed
    shared = (os.environ.get("FLOPS_METER_STORE"), f"file://{Path(DEFAULT_STORE.removeprefix('file://')).resolve()}")
    flag = "" if store in shared else f" --store {store}"
    packages = LocalRegistry(home / "registry.db").packages()
    console.print(f"audit store: {store}  (records and the SQLite ledger; lineages add up across runs)")
    console.print(f"model registry: {home / 'registry.db'}  ({len(packages)} package(s))")
    console.print(f"run directories: {home / 'runs'}")
    console.print("next:")
    console.print(f"  flops-meter audit verify{flag}")
    last = results[-1][1]
    sha = last.states["PublishAudit"].property_files.get("AuditReport", {}).get("record_sha256")
    if sha:
        console.print(f"  flops-meter report {sha[:12]}{flag} --out report.html")
    if sha:
        console.print(f"  flops-meter approvals list{flag}   # the blocked run waits for a named person's decision")
    console.print(f"  flops-meter pipeline status {last.execution_id} --home {home}")
    console.print("  flops-meter pipeline definition > pipeline.json   # the same pipeline, for SageMaker")
    console.print(f"  flops-meter classify {_shown(record)} --base-model meta-llama/Meta-Llama-3-8B")
    expected = [0, 1, 1]
    if [e.exit_code for _, e in results] != expected:
        raise MeterError(f"the demo's paths ended {[e.exit_code for _, e in results]}, expected {expected}")
    return 0


def train_unpublished(home: Path) -> Path:
    """The TrainWithMeter script on the demo recipe and data, run as a user's own training job would run it (no
    pipeline, nothing published); its record is copied to ``<home>/flops_meter.json``."""
    import steps

    bundled = Path(steps.__file__).parent
    job = home / "trainer"
    shutil.rmtree(job, ignore_errors=True)  # a fresh job: never resume the previous demo's checkpoints
    job.mkdir(parents=True)
    env = {
        **os.environ,
        "OPT_ML": str(job),
        "SM_CHANNEL_TRAIN": str(bundled / "demo"),
        "SM_HPS": json.dumps({"recipe": str(bundled / "recipes" / "demo.yaml")}),
    }
    log = job / "log.txt"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "steps.train_with_meter"], env=env, stdout=out, stderr=out)
    record = job / "output" / "data" / "flops_meter.json"
    if done.returncode != 0 or not record.is_file():
        raise MeterError(f"the demo's own training run failed (exit {done.returncode}): see {log}")
    shutil.copy(record, home / "flops_meter.json")
    return home / "flops_meter.json"


def _shown(path: Path) -> str:
    """A path as the user can type it: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
