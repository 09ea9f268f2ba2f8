"""A human-readable report of one audit record, for the compliance officer: Markdown, self-contained HTML, or PDF.

One module (over 400 lines): the plot, the sections and the three renderings share the record's reading; each is
short, and together they are the one document a compliance officer files.

The report shows the verdict, every Annex XI item the record holds (an item the record lacks reads "not recorded",
never disappears), the decision taken on the record's flagged item when there is one, and a plot of the lineage's
cumulative regulatory compute over the run's training time against the threshold. The plot's compute axis is
logarithmic, so a run far below the threshold and one that crossed it by orders of magnitude both stay visible.

HTML embeds the plot as a PNG; Markdown writes it beside the report; PDF is the HTML printed by headless Chromium
(for filing). Needs matplotlib (``pip install 'flops-meter[report]'``); PDF also needs Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from meter.audit.flagged import FLAGGED_STATUSES, check_decision, item_id
from meter.errors import MeterError
from meter.policy.thresholds import NOT_LEGAL_ADVICE, rule_text, two_significant

STATUS_TEXT = {
    "downstream_modifier": "Downstream modifier: below the threshold",
    "approaching": "Approaching the threshold",
    "gpai_provider": "Provider of a general-purpose AI model (threshold crossed)",
    "gpai_sr_provider": "Provider of a GPAI model with systemic risk (threshold crossed)",
}
NOT_RECORDED = "not recorded"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
PDF_TIMEOUT_S = 120

_METHOD_TEXT = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "freeze": "partial (frozen layers)"}
_PRECISION_TEXT = {"bf16": "bfloat16 (bf16)", "fp16": "float16 (fp16)", "fp32": "float32 (fp32)"}
_ENERGY_METHOD_TEXT = {
    "nvml_energy_counter": "measured by the GPUs' energy counters (NVML)",
    "nvml_power_integral": "measured by sampling GPU power over the run (NVML)",
    "mixed": "measured on the GPUs (energy counters on some, sampled power on others)",
    "tdp_times_time": "estimated as board power × training time: an upper estimate, not a measurement",
}
_MARGIN = 10**0.5  # the y-axis reaches half a decade beyond the lowest and highest values it must show


# -- the plot ------------------------------------------------------------------------------------------------------


def _series(record: dict[str, Any]) -> list[tuple[float, float]]:
    """(seconds, lineage FLOP) from the start of the run to its end: the prior lineage total, the timeline, and
    the verdict's cumulative figure as the end point. Zero values are left out: a log scale cannot show them."""
    run, verdict = record["run"], record["verdict"]
    prior = verdict.get("prior_lineage_flops") or 0
    points = [(0.0, float(prior))]
    points += [(float(t["seconds"]), float(prior + t["regulatory_flops"])) for t in run.get("timeline") or []]
    end = float(verdict["cumulative_flops"])
    if points[-1][1] != end:  # no timeline, or the last read-back before the end: the record's figure closes it
        wall = float((run.get("time") or {}).get("wall_seconds") or 0)
        points.append((max(wall, points[-1][0]), end))
    return [(t, f) for t, f in points if f > 0]


def _forecast(record: dict[str, Any], last: tuple[float, float] | None) -> tuple[float, float] | None:
    """The forecast end (seconds, lineage FLOP) at the run's max_steps, at the pace seen so far; None without one."""
    forecast = record["run"].get("forecast") or {}
    final = forecast.get("final_regulatory_flops")
    if final is None or last is None:
        return None
    total = float((record["verdict"].get("prior_lineage_flops") or 0) + final)
    max_steps, at_step = forecast.get("max_steps"), forecast.get("at_step")
    t_last, f_last = last
    t_end = t_last * max_steps / at_step if max_steps and at_step and at_step > 0 else t_last
    if total <= f_last and t_end <= t_last:
        return None  # the run reached its forecast: nothing left to draw
    return t_end, total


def y_limits(record: dict[str, Any]) -> tuple[float, float]:
    """The plot's FLOP range: the first nonzero point, the approaching band, the threshold, the end point and the
    forecast, with half a decade of margin either side."""
    series = _series(record)
    threshold = float(record["verdict"]["threshold_flops"])
    values = [threshold, threshold * (record["verdict"].get("approaching_fraction") or 1)]
    values += [f for _, f in series[:1] + series[-1:]]
    forecast = _forecast(record, series[-1] if series else None)
    if forecast is not None:
        values.append(forecast[1])
    return min(values) / _MARGIN, max(values) * _MARGIN


def plot_figure(record: dict[str, Any]):
    """The matplotlib Figure of the report's plot (no pyplot state: safe in threads and servers)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MeterError("the report plot needs matplotlib: pip install 'flops-meter[report]'") from None
    verdict = record["verdict"]
    series = _series(record)
    forecast = _forecast(record, series[-1] if series else None)
    longest = max([t for t, _ in series] + ([forecast[0]] if forecast else []) + [0.0])
    unit, scale = next(
        (u, s) for u, s in (("hours", 3600), ("minutes", 60), ("seconds", 1)) if longest >= 2 * s or s == 1
    )
    fig = Figure(figsize=(7.5, 3.8), dpi=110)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    threshold = float(verdict["threshold_flops"])
    approaching = verdict.get("approaching_fraction")
    if approaching:
        ax.axhspan(threshold * approaching, threshold, color="#f5b041", alpha=0.25,
                   label=f"approaching ({approaching:.0%} of the threshold and above)")  # fmt: skip
    ax.axhline(threshold, color="#b22222", linewidth=1.5, label=f"threshold {two_significant(threshold)}")
    if series:
        times, flops = [t / scale for t, _ in series], [f for _, f in series]
        if len(series) > 1:  # a run without a timeline (and no prior lineage compute) has its end point only
            ax.plot(times, flops, color="#1f4e79", linewidth=2, label="cumulative regulatory compute (lineage)")
        ax.plot(times[-1:], flops[-1:], "o", color="#1f4e79", label=f"end of run {two_significant(flops[-1])}")
        if forecast is not None:
            ax.plot([times[-1], forecast[0] / scale], [flops[-1], forecast[1]], linestyle="--", color="#1f4e79",
                    alpha=0.8, label=f"forecast {two_significant(forecast[1])}")  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no compute counted", transform=ax.transAxes, ha="center", va="center", color="#555")
    ax.set_ylim(*y_limits(record))
    ax.set_xlim(0, (longest / scale or 1) * 1.03)
    ax.set_xlabel(f"training time ({unit})")
    ax.set_ylabel("FLOP (log scale)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="best", fontsize=7.5, framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_png(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    plot_figure(record).savefig(buf, format="png")
    return buf.getvalue()


# -- the facts -----------------------------------------------------------------------------------------------------


def _given(value: Any, text=str) -> str:
    return NOT_RECORDED if value is None or value == "" else text(value)


def _bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.3g} {unit})"
    return f"{n:,} bytes"


def _share(ratio: float) -> str:
    """The lineage's compute as a share of the threshold, legible from 1e-12 to 1e4."""
    return f"{ratio:.1%}" if 0.001 <= ratio < 100 else f"{ratio:.2g} × the threshold"


def _on_gpu(run: dict[str, Any]) -> bool | None:
    """Whether the run trained on GPUs; None when the record does not say."""
    hardware = run.get("hardware")
    if not hardware:
        return None
    return bool(hardware.get("chip") or hardware.get("gpu_hours") is not None or (run.get("energy") or {}).get("gpus"))


def hardware_text(run: dict[str, Any]) -> str:
    """The hardware in plain language: "1 × NVIDIA H100 80GB HBM3", or "CPU only (no GPU)"."""
    hardware, sagemaker = run.get("hardware") or {}, run.get("sagemaker") or {}
    gpu = _on_gpu(run)
    if gpu is None:
        return NOT_RECORDED
    world = hardware.get("world_size") or 1
    text = f"{world} × {hardware.get('device')}" if gpu else "CPU only (no GPU)"
    if not gpu and world > 1:
        text += f", {world} processes"
    return text + (f" on {sagemaker['instance_type']}" if sagemaker.get("instance_type") else "")


def energy_text(run: dict[str, Any]) -> str:
    """The energy in plain language: kWh and how it was obtained, or why there is none."""
    energy = run.get("energy")
    if not energy:
        return NOT_RECORDED
    kwh = energy.get("energy_kwh")
    if kwh is not None:
        how = _ENERGY_METHOD_TEXT.get(energy.get("energy_method"), energy.get("energy_method") or "method not recorded")
        gpus = energy.get("gpus") or []
        return f"{kwh:.2g} kWh, {how}" + (f", over {len(gpus)} GPU(s)" if gpus else "")
    if _on_gpu(run) is False:
        return "not measured: no GPU was used"
    return f"not measured: {energy.get('reason') or 'no reason recorded'}"


def _method_text(run: dict[str, Any]) -> str:
    method = run.get("method") or {}
    name, setup = method.get("method"), method.get("setup")
    if not name and not setup:
        return NOT_RECORDED
    plain = _METHOD_TEXT.get(name, name or "")
    return f"{plain} ({setup})" if setup and setup != name else plain or setup


def _parameters_text(model: dict[str, Any]) -> str:
    total, trainable = model.get("parameters"), model.get("trainable_parameters")
    if total is None:
        return NOT_RECORDED
    text = f"{total:,}"
    if trainable is not None:
        text += f" ({trainable:,} trainable)"
    return text + (", quantized" if model.get("quantized") else "")


def _model_text(model: dict[str, Any]) -> str:
    name, kind = model.get("name"), model.get("model_type")
    if not name:
        return NOT_RECORDED
    return name + (f" ({kind})" if kind and kind != name else "")


def _software_text(run: dict[str, Any]) -> str:
    software = run.get("software")
    if not software:
        return NOT_RECORDED
    return ", ".join(f"{k} {v}" for k, v in software.items() if v)


def _sagemaker_text(run: dict[str, Any]) -> str:
    if "sagemaker" not in run:
        return NOT_RECORDED
    job = run["sagemaker"]
    if not job:
        return "none (not run as a SageMaker training job)"
    return f"{_given(job.get('training_job_name'))} ({_given(job.get('instance_type'))})"


def sections(record: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The report's tables: (id, title, rows of (label, text)). Every Annex XI item the schema knows is a row."""
    run, v, lineage = record["run"], record["verdict"], record["lineage"]
    dataset, code = record["dataset"], record["code"]
    model, hardware, time = run.get("model") or {}, run.get("hardware") or {}, run.get("time") or {}
    original = v.get("original") or {}
    base = lineage["base_model"]
    original_flops = two_significant(original["flops"]) if original.get("flops") else "unknown"
    tokens = (run.get("tokens") or {}).get("tokens")
    notify = (
        f"required by {v.get('notification_deadline')} (Art. 52(1))"
        if v.get("notification_required")
        else "not required"
    )
    return [
        ("verdict", "Verdict", [
            ("Compute of the lineage", two_significant(v["cumulative_flops"])),
            ("Threshold", f"{two_significant(v['threshold_flops'])} ({rule_text(v['threshold_rule'])})"),
            ("Threshold source", v["threshold_citation"]),
            ("Share of the threshold", _share(v["cumulative_flops"] / v["threshold_flops"])),
            ("Original model's compute", f"{original_flops} ({original.get('basis') or NOT_RECORDED})"),
            ("Original compute basis", f"{_given(original.get('method'))}; source: {_given(original.get('source'))}"),
            ("Notification to the Commission", notify),
        ]),
        ("model", "Model and lineage (Annex XI 1(1)(d))", [
            ("Model", _model_text(model)),
            ("Parameters", _parameters_text(model)),
            ("Base model", base["id"]),
            ("Base model revision", _given(base.get("revision"))),
            ("Lineage", f"{lineage['id']} (record #{record['sequence']} of its chain)"),
            ("Parent records", ", ".join(lineage["parent_records"]) or "none given"),
        ]),
        ("training", "Training process (Annex XI 1(2)(b))", [
            ("Method", _method_text(run)),
            ("Precision", _given(hardware.get("precision"), lambda p: _PRECISION_TEXT.get(p, p))),
            ("Run", f"{run['run_id']} ({_given(run.get('status'))})"),
        ]),
        ("data", "Training data (Annex XI 1(2)(c))", [
            ("Dataset URI", _given(dataset.get("uri"))),
            ("Dataset size", _given(dataset.get("size_bytes"), _bytes)),
            ("Dataset SHA-256", _given(dataset.get("sha256"))),
            ("Dataset ETag", _given(dataset.get("etag"))),
            ("Tokens trained on", _given(tokens, lambda n: f"{n:,}")),
        ]),
        ("compute", "Computational resources and training time (Annex XI 1(2)(d))", [
            ("Compute of this run (regulatory)", two_significant(run["flops"]["regulatory"])),
            *_parts(run["flops"]),
            ("Executed compute (padding, recomputation)", two_significant(run["flops"]["executed"])),
            ("Hardware", hardware_text(run)),
            ("Training started", _given(time.get("started"))),
            ("Training ended", _given(time.get("ended"))),
            ("Training time", _given(time.get("wall_seconds"), _duration)),
        ]),
        ("energy", "Energy (Annex XI 1(2)(e))", [("Energy", energy_text(run))]),
        ("code", "Code identity", [
            ("flops-meter version", _given(code.get("package_version"))),
            ("Git commit", _given(code.get("git_commit"))),
            ("Container image", _given(code.get("container_image"))),
            ("Software", _software_text(run)),
            ("SageMaker training job", _sagemaker_text(run)),
        ]),
        ("record", "Audit record", [
            ("Record SHA-256", record["record_sha256"]),
            ("Previous record", record.get("previous_record_sha256") or "none (first of its lineage)"),
            ("Classified at", _given(v.get("decided_at"))),
            ("Published at", record["published_at"]),
        ]),
    ]  # fmt: skip


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


# -- the decision --------------------------------------------------------------------------------------------------


def decision_for(store, record: dict[str, Any]) -> dict[str, Any] | None:
    """The decision on the record's flagged item in ``store``, or None. An altered decision is refused, as an
    altered record is: a report never shows one as if it held."""
    if store is None:
        return None
    name = item_id(record["record_sha256"])
    decision = store.get_document("decisions", name)
    if decision is None:
        return None
    problem = check_decision(decision, store.get_document("flagged", name), record)
    if problem:
        raise MeterError(f"the decision on item {name} does not hold: {problem} (see flops-meter audit verify)")
    return decision


def decision_rows(record: dict[str, Any], decision: dict[str, Any] | None, source: str | None) -> list[tuple[str, str]]:
    """Who decided, when, what, why, and whether provider obligations were accepted; or why there is nothing."""
    if decision is not None:
        return [
            ("Decision", str(decision["decision"]).capitalize()),
            ("Decided by", decision["approver"]),
            ("Decided at", decision["decided_at"]),
            ("Reason", decision["reason"]),
            ("Provider obligations accepted", "yes" if decision.get("accepted_provider_obligations") else "no"),
            ("Model package", decision.get("model_package") or "none named (a blocked model is registered after it)"),
            ("Decision SHA-256", decision["decision_sha256"]),
        ]
    status = record["verdict"]["status"]
    if status not in FLAGGED_STATUSES:
        return [("Decision", "none needed: below the threshold and not approaching it")]
    if source is None:
        return [("Decision", "not looked up: give --store to include the decision on this record")]
    return [("Decision", f"pending: no decision recorded in {source}")]


# -- rendering -----------------------------------------------------------------------------------------------------


def _tables(record: dict[str, Any], decision: dict[str, Any] | None, source: str | None):
    """The verdict, the decision on it, then the Annex XI items and the record's identity."""
    verdict, *rest = sections(record)
    return [verdict, ("decision", "Decision", decision_rows(record, decision, source)), *rest]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render_markdown(
    record: dict[str, Any], png_name: str, *, decision: dict[str, Any] | None = None, decision_source: str | None = None
) -> str:
    v = record["verdict"]
    tables = _tables(record, decision, decision_source)
    lines = [f"# Compute report — {record['lineage']['id']}", "", f"**{STATUS_TEXT[v['status']]}**", ""]
    if v.get("notification_required"):
        lines += [f"**Notify the Commission by {v['notification_deadline']} (Art. 52(1)).**", ""]
    lines += [f"![cumulative compute against the threshold (log scale)]({png_name})", ""]
    for _, title, rows in tables:
        lines += [f"## {title}", "", "| | |", "| --- | --- |", *[f"| {k} | {_md_cell(val)} |" for k, val in rows], ""]
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


def render_html(
    record: dict[str, Any], png: bytes, *, decision: dict[str, Any] | None = None, decision_source: str | None = None
) -> str:
    v = record["verdict"]
    e = html.escape
    css_class = (
        "ok" if v["status"] == "downstream_modifier" else ("warn" if v["status"] == "approaching" else "crossed")
    )
    tables = _tables(record, decision, decision_source)
    body = "\n".join(
        f'<h2>{e(title)}</h2>\n<table id="{key}">'
        + "".join(f"<tr><th>{e(k)}</th><td>{e(str(val))}</td></tr>" for k, val in rows)
        + "</table>"
        for key, title, rows in tables
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
td {{ overflow-wrap: anywhere; }} h2 {{ font-size: 1.1rem; margin-top: 1.6rem; }}
.status {{ font-size: 1.3rem; padding: .6rem 1rem; border-radius: .4rem; }}
.ok {{ background: #e6f4ea; }} .warn {{ background: #fff4e0; }} .crossed {{ background: #fde8e8; }}
img {{ max-width: 100%; }} .small {{ color: #555; font-size: .9rem; }}
@page {{ size: A4; margin: 14mm; }}
@media print {{ body {{ margin: 0; max-width: none; font-size: 10pt; }} tr, img {{ break-inside: avoid; }}
h2 {{ break-after: avoid; }} }}
</style></head><body>
<h1>Compute report — {e(record["lineage"]["id"])}</h1>
<p class="status {css_class}" id="status">{e(STATUS_TEXT[v["status"]])}</p>
{notify}
<p class="small">Rule: {e(v["threshold_citation"])}</p>
<h2>Cumulative compute against the threshold</h2>
<img id="plot" alt="cumulative compute against the threshold (log scale)"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
{body}
{duties}{notes}
<h2>Methodology</h2><p>{e(record["methodology"])}</p><p>{e(record["uncertainty"]["statement"])}</p>
<p><i>{NOT_LEGAL_ADVICE}</i></p>
</body></html>
"""


# -- PDF -----------------------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """Chromium on PATH, under the names its packages give it."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def require_chromium() -> str:
    browser = find_chromium()
    if browser is None:
        raise MeterError(
            "PDF export needs Chromium on PATH (chromium, chromium-browser or google-chrome): install it "
            "(apt-get install chromium), or write --format html and print that"
        )
    return browser


def html_to_pdf(page: Path, pdf: Path) -> None:
    """Print an HTML file to PDF with headless Chromium; MeterError (one line) when it is missing or fails."""
    browser = require_chromium()
    with tempfile.TemporaryDirectory(prefix="flops-meter-chromium-") as profile:
        command = [
            browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
            "--no-pdf-header-footer", f"--print-to-pdf={pdf.resolve()}", page.resolve().as_uri(),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MeterError(f"Chromium did not print the PDF within {PDF_TIMEOUT_S} s ({browser})") from None
        except OSError as err:
            raise MeterError(f"could not run Chromium ({browser}): {err}") from None
    if not pdf.is_file() or pdf.read_bytes()[:5] != b"%PDF-":
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise MeterError(f"Chromium did not write the PDF {pdf}: {last}")


def write_report(
    record: dict[str, Any],
    out: Path,
    fmt: str,
    *,
    decision: dict[str, Any] | None = None,
    decision_source: str | None = None,
) -> list[Path]:
    """Write the report: "html", "md" (its PNG beside it) or "pdf" (via headless Chromium); the files written.

    ``decision``: the decision on the record's flagged item (``decision_for``); ``decision_source``: the store it
    was looked up in, None when none was.
    """
    if fmt == "pdf":
        require_chromium()  # says what to install, before any work
    png = plot_png(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    context = {"decision": decision, "decision_source": decision_source}
    if fmt == "html":
        out.write_text(render_html(record, png, **context))
        return [out]
    if fmt == "pdf":
        with tempfile.TemporaryDirectory(prefix="flops-meter-report-") as tmp:
            page = Path(tmp) / "report.html"
            page.write_text(render_html(record, png, **context))
            html_to_pdf(page, out)
        return [out]
    image = out.with_suffix(".png")
    image.write_bytes(png)
    out.write_text(render_markdown(record, image.name, **context))
    return [out, image]
