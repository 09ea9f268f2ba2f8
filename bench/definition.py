"""Time to import the SageMaker SDK and build the governed pipeline's definition (target: under 5 s in total).

Each measurement runs in a fresh process, as `flops-meter pipeline definition` does:

- cli        the whole command, from process start to the JSON on stdout;
- import     importing the SDK modules the pipeline uses;
- build      building the pipeline and rendering its definition, after the import.

Prints a table; writes bench/results/definition.json.

    python bench/definition.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = """
import json, time
t0 = time.perf_counter()
from pipelines.session import sdk_environment
with sdk_environment("us-east-1"):
    import sagemaker.core.processing, sagemaker.mlops.workflow.pipeline, sagemaker.train
t1 = time.perf_counter()
from pipelines.governed import build
text = build().definition
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "chars": len(text)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "definition.json"))
    args = parser.parse_args()

    cli, phases = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "meter.cli", "pipeline", "definition"], capture_output=True, text=True, cwd=ROOT
        )
        cli.append(time.perf_counter() - t0)
        if out.returncode != 0:
            sys.exit(f"flops-meter pipeline definition failed: {out.stderr.strip()}")
        run = subprocess.run([sys.executable, "-c", PHASES], capture_output=True, text=True, cwd=ROOT, check=True)
        phases.append(json.loads(run.stdout.strip().splitlines()[-1]))

    from rich.console import Console
    from rich.table import Table

    rows = {
        "cli (process start to JSON)": cli,
        "import SDK": [p["import"] for p in phases],
        "build + render": [p["build"] for p in phases],
    }
    table = Table(title=f"Governed pipeline definition ({phases[0]['chars']:,} characters), {args.runs} runs")
    for col in ("phase", "median (s)", "min (s)", "max (s)"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, values in rows.items():
        table.add_row(name, f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    Console(width=100).print(table)
    result = {name: statistics.median(v) for name, v in rows.items()}
    result.update(chars=phases[0]["chars"], target_s=5.0, runs=args.runs)
    verdict = "within" if result["cli (process start to JSON)"] < 5 else "OVER"
    print(f"{verdict} the 5 s target: {result['cli (process start to JSON)']:.2f} s for the whole command")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
