"""The README's two set-up commands, timed as a new user meets them: a fresh clone of this repository, then
`make demo`, then `make test` in the same clone (which adds the development set over the demo's install).

The package cache is whatever pip's cache holds on this machine (the README states the figures with a warm
cache). Prints a table and writes bench/results/setup.json.

    python bench/setup.py [--repo PATH] [--demo-only] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, rc


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(ROOT), help="what to clone (default: this repository's committed HEAD)")
    ap.add_argument("--demo-only", action="store_true", help="time `make demo` only")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flops-meter-setup-"))
    clone = work / "flops-meter"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    rows = []
    for target in ("demo",) if args.demo_only else ("demo", "test"):
        seconds, rc = timed(["make", target], clone, work / f"make-{target}.log")
        rows.append({"command": f"make {target}", "seconds": round(seconds, 1), "exit": rc})
        print(f"make {target}: {minutes(seconds)}, exit {rc} (log {work / f'make-{target}.log'})", flush=True)
        if rc != 0:
            break
    result = {
        "date": dt.date.today().isoformat(),
        "commit": head.strip(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pip_cache": "warm (this machine's cache)",
        "runs": rows,
    }
    print()
    print(f"{'command':<12} {'time':>16} {'exit':>5}   fresh clone of {result['commit']}, {result['cores']} cores")
    for row in rows:
        print(f"{row['command']:<12} {minutes(row['seconds']):>16} {row['exit']:>5}")
    out = ROOT / "bench" / "results" / "setup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    ok = all(r["exit"] == 0 for r in rows)
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"clone and logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
