"""End-to-end time of the demo (the governed pipeline on one machine, three paths) and of each step.

Prints a table; writes bench/results/local_pipeline.json. The README's target: the demo in under 3 minutes on
2 cores from a fresh clone, set-up included (set-up is not timed here).

    python bench/local_pipeline.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from pipelines.demo import PATHS
    from pipelines.local.governed import run_governed, stage_governed

    rows, totals = [], {}
    with tempfile.TemporaryDirectory() as home:
        t_all = time.perf_counter()
        definition = stage_governed(Path(home))  # built once, as the demo does
        totals["build and stage the definition"] = time.perf_counter() - t_all
        for title, params in PATHS:
            t0 = time.perf_counter()
            execution = run_governed(Path(home), params, definition=definition, quiet=True, echo=lambda line: None)
            totals[title] = time.perf_counter() - t0
            for name, state in execution.states.items():
                if state.seconds is not None:
                    rows.append((title, name, state.status, state.seconds))
        total = time.perf_counter() - t_all

    table = Table(title=f"Local governed pipeline: demo end to end {total:.1f} s")
    for col in ("path", "step", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for title, name, status, seconds in rows:
        table.add_row(title, name, status, f"{seconds:.2f}")
    for title, seconds in totals.items():
        table.add_row(title, "[bold]whole[/bold]", "", f"{seconds:.2f}")
    Console(width=120).print(table)
    out = Path(__file__).parent / "results" / "local_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = [{"path": p, "step": n, "status": st, "seconds": sec} for p, n, st, sec in rows]
    out.write_text(json.dumps({"total_s": total, "runs_s": totals, "steps": steps}, indent=2))
    print(f"demo end to end: {total:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
