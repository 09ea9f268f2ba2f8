"""A human-readable report of one audit record, for the compliance officer: Markdown or self-contained HTML.

The plot shows the lineage's cumulative regulatory compute over the run's training time against the threshold
and the "approaching" line. HTML embeds it as a PNG; Markdown writes it beside the report. Needs matplotlib
(``pip install 'flops-meter[report]'``).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from meter.errors import MeterError
from meter.thresholds import NOT_LEGAL_ADVICE, rule_text, two_significant

STATUS_TEXT = {
    "downstream_modifier": "Downstream modifier: below the threshold",
    "approaching": "Approaching the threshold",
    "gpai_provider": "Provider of a general-purpose AI model (threshold crossed)",
    "gpai_sr_provider": "Provider of a GPAI model with systemic risk (threshold crossed)",
}


def plot_png(record: dict[str, Any]) -> bytes:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MeterError("the report plot needs matplotlib: pip install 'flops-meter[report]'") from None
    run, verdict = record["run"], record["verdict"]
    prior = verdict.get("prior_lineage_flops", 0)
    timeline = run.get("timeline") or []
    seconds = [0.0] + [t["seconds"] for t in timeline]
    flops = [prior] + [prior + t["regulatory_flops"] for t in timeline]
    if len(seconds) == 1:  # no timeline: the run's end point only
        seconds.append((run.get("time") or {}).get("wall_seconds", 0))
        flops.append(verdict["cumulative_flops"])
    unit, scale = next(
        (u, s) for u, s in (("hours", 3600), ("minutes", 60), ("seconds", 1)) if max(seconds) >= 2 * s or s == 1
    )
    times = [t / scale for t in seconds]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    ax.plot(times, flops, color="#1f4e79", linewidth=2, label="cumulative regulatory compute (lineage)")
    threshold = verdict["threshold_flops"]
    ax.axhline(threshold, color="#b22222", linestyle="-", label=f"threshold {two_significant(threshold)}")
    approaching = verdict.get("approaching_fraction")
    if approaching:
        ax.axhline(threshold * approaching, color="#d48a00", linestyle="--", label=f"approaching ({approaching:.0%})")
    ax.set_xlabel(f"training time ({unit})")
    ax.set_ylabel("FLOP")
    ax.set_ylim(bottom=0, top=max(max(flops), threshold) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _facts(record: dict[str, Any]) -> list[tuple[str, str]]:
    run, v = record["run"], record["verdict"]
    energy = run.get("energy") or {}
    hardware = run.get("hardware") or {}
    kwh = energy.get("energy_kwh")
    original = v.get("original") or {}
    base = record["lineage"]["base_model"]
    original_flops = two_significant(original["flops"]) if original.get("flops") else "unknown"
    original_basis = original.get("method") or original.get("basis")
    energy_text = (
        f"{kwh:.2g} kWh ({energy.get('energy_method')})" if kwh is not None else f"not measured: {energy.get('reason')}"
    )
    return [
        ("Model lineage", f"{record['lineage']['id']} (record #{record['sequence']})"),
        ("Base model", f"{base['id']} {base.get('revision') or ''}".strip()),
        ("Method", (run.get("method") or {}).get("setup", "")),
        ("Compute of this run (regulatory)", two_significant(run["flops"]["regulatory"])),
        *_parts(run["flops"]),
        ("Compute of the lineage", two_significant(v["cumulative_flops"])),
        ("Threshold", f"{two_significant(v['threshold_flops'])} ({rule_text(v['threshold_rule'])})"),
        ("Share of the threshold", f"{v['cumulative_flops'] / v['threshold_flops']:.1%}"),
        ("Original model's compute", f"{original_flops} ({original_basis}; {original.get('source', '')})"),
        ("Executed compute (padding, recomputation)", two_significant(run["flops"]["executed"])),
        ("Tokens", f"{(run.get('tokens') or {}).get('tokens', 0):,}"),
        ("Energy", energy_text),
        ("Hardware", f"{hardware.get('device', '')} × {hardware.get('world_size', 1)}"),
        ("Training time", _duration((run.get("time") or {}).get("wall_seconds", 0))),
        ("Record SHA-256", record["record_sha256"]),
        ("Previous record", record.get("previous_record_sha256") or "none (first of its lineage)"),
    ]


def _parts(flops: dict[str, Any]) -> list[tuple[str, str]]:
    """The parts of a preference or RL run, and whether the count is exact (records before parts have neither)."""
    rows = []
    parts = {p: v for p, v in (flops.get("parts") or {}).items() if v.get("passes")}
    if set(parts) - {"training"}:
        text = "; ".join(
            f"{p.replace('_', ' ')} {two_significant(v['regulatory_flops'])}"
            + ("" if v.get("included") else " (not counted)")
            for p, v in parts.items()
        )
        rows.append((f"Parts of the run ({flops.get('regulatory_scope', 'conservative')})", text))
    if flops.get("confidence") == "lower_bound":
        rows.append(("Confidence", "lower bound: " + "; ".join(flops.get("degraded") or [])))
    return rows


def _duration(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.2f} s"


def render_markdown(record: dict[str, Any], png_name: str) -> str:
    v = record["verdict"]
    lines = [
        f"# Compute report — {record['lineage']['id']}",
        "",
        f"**{STATUS_TEXT[v['status']]}**",
        "",
        f"Rule: {v['threshold_citation']}",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {str(val).replace('|', '/')} |" for k, val in _facts(record)],
        "",
        f"![cumulative compute against the threshold]({png_name})",
        "",
    ]
    if v.get("notification_required"):
        lines += [f"**Notify the Commission by {v['notification_deadline']} (Art. 52(1)).**", ""]
    if v.get("duties"):
        lines += ["## Duties (limited to the modification)", "", *[f"- {d}" for d in v["duties"]], ""]
    if v.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in v["notes"]], ""]
    lines += [
        "## Methodology",
        "",
        record["methodology"],
        "",
        record["uncertainty"]["statement"],
        "",
        f"*{NOT_LEGAL_ADVICE}*",
        "",
    ]
    return "\n".join(lines)


def render_html(record: dict[str, Any], png: bytes) -> str:
    v = record["verdict"]
    e = html.escape
    rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(val))}</td></tr>" for k, val in _facts(record))
    css_class = (
        "ok" if v["status"] == "downstream_modifier" else ("warn" if v["status"] == "approaching" else "crossed")
    )
    items = lambda xs: "".join(f"<li>{e(x)}</li>" for x in xs)  # noqa: E731
    notify = (
        f'<p class="crossed"><b>Notify the Commission by {e(v["notification_deadline"])} (Art. 52(1)).</b></p>'
        if v.get("notification_required")
        else ""
    )
    duties = f"<h2>Duties (limited to the modification)</h2><ul>{items(v['duties'])}</ul>" if v.get("duties") else ""
    notes = f"<h2>Notes</h2><ul>{items(v['notes'])}</ul>" if v.get("notes") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Compute report — {e(record["lineage"]["id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ text-align: left; padding: .3rem .6rem;
border-bottom: 1px solid #ddd; vertical-align: top; }} th {{ width: 18rem; font-weight: 600; }}
.status {{ font-size: 1.3rem; padding: .6rem 1rem; border-radius: .4rem; }}
.ok {{ background: #e6f4ea; }} .warn {{ background: #fff4e0; }} .crossed {{ background: #fde8e8; }}
img {{ max-width: 100%; }} .small {{ color: #555; font-size: .9rem; }}
</style></head><body>
<h1>Compute report — {e(record["lineage"]["id"])}</h1>
<p class="status {css_class}" id="status">{e(STATUS_TEXT[v["status"]])}</p>
{notify}
<p class="small">Rule: {e(v["threshold_citation"])}</p>
<table id="facts">{rows}</table>
<h2>Cumulative compute against the threshold</h2>
<img alt="cumulative compute against the threshold" src="data:image/png;base64,{base64.b64encode(png).decode()}">
{duties}{notes}
<h2>Methodology</h2><p>{e(record["methodology"])}</p><p>{e(record["uncertainty"]["statement"])}</p>
<p><i>{NOT_LEGAL_ADVICE}</i></p>
</body></html>
"""


def write_report(record: dict[str, Any], out: Path, fmt: str) -> list[Path]:
    """Write the report (and, for Markdown, its PNG beside it); returns the files written."""
    png = plot_png(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(render_html(record, png))
        return [out]
    image = out.with_suffix(".png")
    image.write_bytes(png)
    out.write_text(render_markdown(record, image.name))
    return [out, image]
