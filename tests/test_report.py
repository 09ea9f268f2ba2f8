"""The report: Markdown with its PNG, self-contained HTML and PDF, rendered in headless Chromium where available.

Every expected value is read from the record (or the decision) the test published, never from the renderer.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")

from meter.audit.chain import draft_record
from meter.audit.file_store import FileStore
from meter.audit.flagged import decision_document, flag
from meter.cli import main
from meter.policy.compliance import classify
from meter.policy.thresholds import two_significant
from tests.test_audit import ORIGINAL, draft, run_record

PNG = b"\x89PNG\r\n\x1a\n"
H100 = "NVIDIA H100 80GB HBM3"


def _timeline(steps: int, per_step: int) -> list[dict]:
    return [
        {"step": s, "seconds": 600.0 * s, "tokens": 1000 * s, "regulatory_flops": per_step * s,
         "executed_flops": per_step * s * 5 // 4}
        for s in range(1, steps + 1)
    ]  # fmt: skip


@pytest.fixture
def record_sha(tmp_path):
    store = FileStore(tmp_path / "audit")
    d = draft(2 * 10**23, "acme/support-bot")
    d["run"]["timeline"] = _timeline(5, 4 * 10**22)
    return store.publish(d).record["record_sha256"], f"file://{tmp_path / 'audit'}"


def gpu_run(flops: int) -> dict:
    """A run record as the meter writes it on one GPU with NVML, with its forecast."""
    run = run_record(flops)
    run["model"] = {"name": "meta-llama/Meta-Llama-3-8B", "model_type": "llama", "parameters": 8030261248,
                    "trainable_parameters": 6815744, "quantized": False}  # fmt: skip
    run["hardware"] = {"device": H100, "world_size": 1, "precision": "bf16", "gpu_hours": 1.0, "chip": "H100-SXM"}
    gpu = {"index": 0, "name": H100, "energy_kwh": 0.42, "energy_method": "nvml_energy_counter", "samples": 3600}
    run["energy"] = {"available": True, "reason": None, "gpus": [gpu], "energy_kwh": 0.42, "estimated": False,
                     "energy_method": "nvml_energy_counter", "energy_kwh_2sf": "0.42 kWh"}  # fmt: skip
    run["software"] = {"python": "3.11.7", "flops-meter": "0.1.0", "torch": "2.5.1", "deepspeed": None}
    run["sagemaker"] = {"training_job_name": "sft-support-bot-7", "instance_type": "ml.p5.48xlarge"}
    run["timeline"] = _timeline(5, flops // 5)
    run["forecast"] = {"final_regulatory_flops": 2.0 * flops, "max_steps": 10, "at_step": 5, "crosses_threshold": True}
    return run


@pytest.fixture
def gpu_record(tmp_path):
    """An approaching GPU run with every Annex XI item the schema holds, published in a local store."""
    store = FileStore(tmp_path / "audit")
    parent = store.publish(draft(10**21, "acme/support-bot-sft")).record["record_sha256"]
    run = gpu_run(2 * 10**23)
    d = draft_record(
        run, classify(run["flops"]["regulatory"], ORIGINAL).to_dict(), lineage_id="acme/support-bot",
        base_model="meta-llama/Meta-Llama-3-8B", base_revision="8cde5ca8380496c9a6cc7ef3a8b46a0372a1d920",
        parent_records=[parent],
        dataset={"uri": "s3://data/train.jsonl", "size_bytes": 73_400_320, "sha256": "ab" * 32, "etag": '"9f3c-2"'},
        code={"git_commit": "0123456789abcdef0123456789abcdef01234567",
              "container_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/train:7"},
    )  # fmt: skip
    return store, store.publish(d).record


def annex_xi_values(record: dict) -> list[str]:
    """What the report must show of a record, each as the record holds it."""
    run, v, lineage, dataset, code = (record[k] for k in ("run", "verdict", "lineage", "dataset", "code"))
    values = [
        run["model"]["name"], f"{run['model']['parameters']:,}", lineage["base_model"]["id"], lineage["id"],
        *lineage["parent_records"], code["package_version"],
        run["time"]["started"], run["time"]["ended"], record["published_at"], run["method"]["setup"],
        f"{run['tokens']['tokens']:,}", two_significant(run["flops"]["regulatory"]),
        two_significant(run["flops"]["executed"]), two_significant(v["threshold_flops"]), v["threshold_citation"],
        v["original"]["source"], v["original"]["method"], record["record_sha256"],
    ]  # fmt: skip
    size = dataset["size_bytes"]
    optional = [
        dataset["uri"], None if size is None else f"{size:,}", dataset["sha256"], dataset["etag"],
        lineage["base_model"]["revision"], code["git_commit"],
        code["container_image"], (run.get("hardware") or {}).get("precision"),
        (run.get("energy") or {}).get("energy_kwh_2sf"),
    ]  # fmt: skip
    return values + [x for x in optional if x]


def test_markdown_report_with_png_beside(tmp_path, record_sha, capsys) -> None:
    sha, store = record_sha
    assert (
        main(["report", sha[:10], "--store", store, "--format", "md", "--out", str(tmp_path / "r" / "report.md")]) == 0
    )
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Approaching the threshold" in text and "2.0e+23 FLOP" in text and "2.4e+23 FLOP" in text
    assert "](report.png)" in text and "not legal advice" in text
    assert (tmp_path / "r" / "report.png").read_bytes().startswith(PNG)
    # what the draft leaves out is said, not dropped; a pending flagged run says so
    record = FileStore(tmp_path / "audit").get(sha)
    assert record["code"]["git_commit"] is None and "| Git commit | not recorded |" in text
    assert "| Dataset ETag | not recorded |" in text and "| Hardware | not recorded |" in text
    assert f"pending: no decision recorded in {store}" in text
    for value in annex_xi_values(record):
        assert value in text, value


def test_markdown_report_holds_every_annex_xi_item(tmp_path, gpu_record) -> None:
    store, record = gpu_record
    out = tmp_path / "report.md"
    assert main(["report", record["record_sha256"], "--store", store.uri, "--format", "md", "--out", str(out)]) == 0
    text = out.read_text()
    for value in annex_xi_values(record):
        assert value in text, value
    hardware, energy = record["run"]["hardware"], record["run"]["energy"]
    assert f"| Hardware | {hardware['world_size']} × {hardware['device']}" in text
    assert f"| Energy | {energy['energy_kwh_2sf']}, measured by the GPUs' energy counters (NVML)" in text
    assert "not recorded" not in text  # this record holds every item


# -- the plot ------------------------------------------------------------------------------------------------------


def _plot(record: dict):
    from meter.report import plot_figure

    fig = plot_figure(record)
    [ax] = fig.axes
    return ax


def _run_line(ax):
    return next(line for line in ax.get_lines() if line.get_label().startswith("cumulative regulatory compute"))


@pytest.mark.parametrize("flops", [10**27, 10**12], ids=["crossed-by-far", "far-below"])
def test_plot_is_log_scale_and_shows_the_run_and_the_threshold(tmp_path, flops) -> None:
    store = FileStore(tmp_path / "audit")
    d = draft(flops, "acme/far")
    d["run"]["timeline"] = [{**t, "regulatory_flops": 0} for t in _timeline(1, 0)] + _timeline(5, flops // 5)[1:]
    record = store.publish(d).record
    ax = _plot(record)
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    threshold, end = record["verdict"]["threshold_flops"], record["verdict"]["cumulative_flops"]
    first = record["run"]["timeline"][1]["regulatory_flops"]  # the first nonzero point: the zero one cannot show
    assert low < first and low < threshold < high and low < end < high
    assert high / low < max(end, threshold) / min(first, threshold) * 100  # a margin, not a wasted plot
    line = _run_line(ax)
    assert min(line.get_ydata()) == first and line.get_ydata()[-1] == end and min(line.get_ydata()) > 0
    assert any(list(x.get_ydata()) == [threshold, threshold] for x in ax.get_lines())


def test_plot_band_forecast_and_prior_lineage(tmp_path) -> None:
    store = FileStore(tmp_path / "audit")
    prior = store.publish(draft(5 * 10**22, "acme/bot")).record["verdict"]["cumulative_flops"]
    run = gpu_run(10**23)
    d = draft_record(run, classify(10**23, ORIGINAL, prior_lineage_flops=prior).to_dict(), lineage_id="acme/bot",
                     base_model="meta-llama/Meta-Llama-3-8B")  # fmt: skip
    record = store.publish(d).record
    v = record["verdict"]
    ax = _plot(record)
    assert ax.get_yscale() == "log"
    line = _run_line(ax)
    assert line.get_ydata()[0] == prior and line.get_ydata()[-1] == v["cumulative_flops"] == prior + 10**23
    [band] = ax.patches
    assert band.get_y() == pytest.approx(v["approaching_fraction"] * v["threshold_flops"])
    assert band.get_y() + band.get_height() == pytest.approx(v["threshold_flops"])
    [forecast] = [x for x in ax.get_lines() if x.get_linestyle() == "--"]
    ys, xs = forecast.get_ydata(), forecast.get_xdata()
    assert ys[0] == v["cumulative_flops"] and ys[-1] == prior + run["forecast"]["final_regulatory_flops"]
    assert xs[-1] == pytest.approx(xs[0] * run["forecast"]["max_steps"] / run["forecast"]["at_step"])
    assert ax.get_ylim()[1] > ys[-1]


# -- headless Chromium ---------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _render(page, tmp_path) -> tuple[str, object]:
    """The DOM Chromium builds from the page, and a screenshot of it (pixels)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian package chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800",
    ]  # fmt: skip
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120
    )
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    from matplotlib.image import imread

    return dom, imread(shot)


def test_html_report_renders_in_headless_chromium(tmp_path, record_sha) -> None:
    sha, store = record_sha
    page = tmp_path / "report.html"
    assert main(["report", sha, "--store", store, "--format", "html", "--out", str(page)]) == 0
    html = page.read_text()
    assert "data:image/png;base64," in html and 'id="status"' in html
    dom, pixels = _render(page, tmp_path)
    assert "Approaching the threshold" in dom and "2.0e+23 FLOP" in dom and "2.4e+23 FLOP" in dom and sha in dom
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.05  # not a blank page: text, table and the plot were painted


def test_html_report_shows_the_annex_xi_items_and_the_decision(tmp_path, gpu_record) -> None:
    store, record = gpu_record
    item = flag(store, record, f"{store.uri}/records/{record['record_sha256']}.json")
    decision = decision_document(
        item, decision="approved", approver="Dana Compliance", reason="within the lineage budget agreed with legal",
        decided_at="2026-11-23T09:30:00Z", accepted_provider_obligations=True,
    )  # fmt: skip
    store.put_document("decisions", item["id"], decision)
    page = tmp_path / "report.html"
    assert main(["report", record["record_sha256"][:12], "--store", store.uri, "--out", str(page)]) == 0
    dom, pixels = _render(page, tmp_path)
    for value in annex_xi_values(record):
        assert value in dom, value
    hardware, energy = record["run"]["hardware"], record["run"]["energy"]
    assert f"<th>Hardware</th><td>{hardware['world_size']} × {hardware['device']}" in dom
    assert f"<th>Energy</th><td>{energy['energy_kwh_2sf']}, measured" in dom
    assert f"<th>Decided by</th><td>{decision['approver']}</td>" in dom
    assert f"<th>Decided at</th><td>{decision['decided_at']}</td>" in dom
    assert f"<th>Reason</th><td>{decision['reason']}</td>" in dom
    assert "<th>Decision</th><td>Approved</td>" in dom and decision["decision_sha256"] in dom
    assert "<th>Provider obligations accepted</th><td>yes</td>" in dom
    assert "not recorded" not in dom
    assert pixels.shape[:2] == (1800, 1200) and pixels.std() > 0.05


def test_an_altered_decision_is_refused(tmp_path, gpu_record, capsys) -> None:
    store, record = gpu_record
    item = flag(store, record, "file://records/x.json")
    decision = decision_document(
        item, decision="rejected", approver="Dana", reason="no", decided_at="2026-11-23T09:30Z"
    )
    store.put_document("decisions", item["id"], {**decision, "reason": "yes"})
    out = tmp_path / "report.html"
    assert main(["report", record["record_sha256"], "--store", store.uri, "--out", str(out)]) == 2
    assert "does not hold" in capsys.readouterr().err and not out.exists()


def test_cpu_run_reports_hardware_and_energy_in_plain_words(tmp_path) -> None:
    """A real meter run on the CPU: the report says no GPU was used, not the sampler's internal reason."""
    pytest.importorskip("transformers")
    from meter.runtime.meter import FlopsMeter
    from tests.trainer_jobs import PadCollator, sequences, tiny_model

    model, collate = tiny_model(), PadCollator()
    with FlopsMeter(model, output_path=tmp_path / "m.json", log_every=1, max_steps=4) as meter:
        for rows in (sequences(4, seed=1), sequences(4, seed=2)):
            model(**collate(rows)).loss.backward()
            meter.step()
    run = json.loads((tmp_path / "m.json").read_text())
    assert run["hardware"]["gpu_hours"] is None and run["energy"]["energy_kwh"] is None  # trained on the CPU
    store = FileStore(tmp_path / "audit")
    verdict = classify(run["flops"]["regulatory"], ORIGINAL).to_dict()
    record = store.publish(draft_record(run, verdict, lineage_id="acme/cpu", base_model="tiny")).record
    page = tmp_path / "report.html"
    assert main(["report", record["record_sha256"], "--store", store.uri, "--out", str(page)]) == 0
    dom, _ = _render(page, tmp_path)
    assert "<th>Hardware</th><td>CPU only (no GPU)</td>" in dom
    assert "<th>Energy</th><td>not measured: no GPU was used</td>" in dom
    assert "<th>Decision</th><td>none needed" in dom and "<th>Dataset URI</th><td>not recorded</td>" in dom
    for value in annex_xi_values(record):
        assert value in dom, value


# -- PDF -----------------------------------------------------------------------------------------------------------


def test_pdf_export_for_filing(tmp_path, record_sha) -> None:
    if _chromium() is None:
        pytest.skip("no Chromium on this machine (Debian package chromium)")
    sha, store = record_sha
    out = tmp_path / "filing" / "report.pdf"
    assert main(["report", sha, "--store", store, "--format", "pdf", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000  # the page with its plot, not an empty document


def test_pdf_without_chromium_is_a_one_line_error(tmp_path, record_sha, monkeypatch, capsys) -> None:
    sha, store = record_sha
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "report.pdf"
    assert main(["report", sha, "--store", store, "--format", "pdf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Chromium" in err and "apt-get install chromium" in err
    assert "Traceback" not in err and not out.exists()
