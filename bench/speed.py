"""How long an estimate takes: every bundled model from its config alone, and the generic path at 400B+ scale.

Two tables (issue 15's targets: a config-only estimate of any bundled model under 50 ms after import; a
generic-path measurement of a 400B-class model under 10 s on 2 cores, with no weights allocated):

1. ``flops-meter estimate --model ID --tokens 1e9`` as the CLI plans it (meter.cli.estimate.plan), in this
   process after ``import meter``: the first call and the median of the next ones. Models outside the analytic
   engine read the rates shipped for them (meter/data/measured_rates.json).
2. MeasuredCostModel(config) on the meta device: the measurement itself, full fine-tuning and
   LoRA (all linear layers), with the process's peak RSS before and after (no weights: the RSS barely moves).

Run: ``python bench/speed.py`` (writes bench/results/speed.json). A benchmark, not a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GENERIC = (
    "deepseek-ai/DeepSeek-V3",
    "moonshotai/Kimi-K2-Instruct",
    "meta-llama/Llama-4-Maverick-17B-128E (text model)",
    "openai/gpt-oss-120b",
    "Qwen/Qwen3-Next-80B-A3B-Instruct",
)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config_only(repeats: int) -> list[dict]:
    from meter.cli.estimate import plan
    from meter.cli.parser import build_parser
    from meter.engine.catalog import bundled_configs
    from meter.errors import MeterError

    parser = build_parser()
    rows = []
    for path in sorted(set(bundled_configs().values())):
        model = path.stem.replace("--", "/")
        argv = ["estimate", "--model", model, "--tokens", "1000000000", "--seq-len", "4096", "--store", "/nonexistent"]
        args = parser.parse_args(argv)
        try:
            t0 = time.perf_counter()
            p = plan(args)
            first = time.perf_counter() - t0
        except MeterError as e:  # multimodal configs: refused with their reason
            rows.append({"model": model, "refused": str(e)[:80]})
            continue
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            plan(args)
            times.append(time.perf_counter() - t0)
        rows.append({"model": model, "path": "measured (shipped rates)" if p.spec is None else "analytic",
                     "first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3})  # fmt: skip
    return rows


def generic(models) -> list[dict]:
    from meter.engine.catalog import resolve_model
    from meter.engine.count import TrainingSetup
    from meter.engine.measure import MeasuredCostModel

    rows = []
    for label in models:
        text_only = label.endswith(" (text model)")
        model = label.removesuffix(" (text model)")
        config = resolve_model(model).config
        if text_only:  # the language model of a multimodal checkpoint, as it would be fine-tuned text-only
            config = {"model_type": f"{config['model_type']}_text", **config["text_config"]}
        for method in ("full", "lora"):
            before = _rss_mib()
            t0 = time.perf_counter()
            m = MeasuredCostModel(config, TrainingSetup(method=method), name=model)
            seconds = time.perf_counter() - t0
            rows.append({"model": label, "method": method, "parameters": m.parameters, "seconds": seconds,
                         "peak_rss_mib_before": before, "peak_rss_mib_after": _rss_mib()})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.json"))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    import meter  # noqa: F401

    import_ms = (time.perf_counter() - t0) * 1e3
    console = Console(width=130)
    rows = config_only(args.repeats)
    table = Table(title=f"Config-only estimate of every bundled model (after import meter: {import_ms:.0f} ms)")
    for col in ("model", "path", "first", "median"):
        table.add_column(col, justify="left" if col in ("model", "path") else "right")
    for r in rows:
        if "refused" in r:
            table.add_row(r["model"], "refused: multimodal", "", "")
        else:
            table.add_row(r["model"], r["path"], f"{r['first_ms']:.1f} ms", f"{r['median_ms']:.1f} ms")
    console.print(table)
    timed = [r for r in rows if "refused" not in r]
    worst = max(timed, key=lambda r: r["first_ms"])
    console.print(f"slowest first call: {worst['model']} {worst['first_ms']:.1f} ms; "
                  f"slowest median: {max(r['median_ms'] for r in timed):.1f} ms")  # fmt: skip

    grows = generic(GENERIC)
    gtable = Table(title="Generic path on the meta device (measurement only, bundled rates not read)")
    for col in ("model", "method", "parameters", "time", "peak RSS"):
        gtable.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in grows:
        gtable.add_row(r["model"], r["method"], f"{r['parameters'] / 1e9:.0f}B", f"{r['seconds']:.2f} s",
                       f"{r['peak_rss_mib_before']:.0f} → {r['peak_rss_mib_after']:.0f} MiB")  # fmt: skip
    console.print(gtable)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"import_ms": import_ms, "config_only": rows, "generic": grows}, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
