"""The report: Markdown with its PNG, self-contained HTML, rendered in headless Chromium where available."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")

from meter.cli import main
from meter.stores import FileStore
from tests.test_audit import draft

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def record_sha(tmp_path):
    store = FileStore(tmp_path / "audit")
    d = draft(2 * 10**23, "acme/support-bot")
    d["run"]["timeline"] = [
        {
            "step": s,
            "seconds": 600.0 * s,
            "tokens": 1000 * s,
            "regulatory_flops": 4 * 10**22 * s,
            "executed_flops": 5 * 10**22 * s,
        }
        for s in range(1, 6)
    ]
    return store.publish(d).record["record_sha256"], f"file://{tmp_path / 'audit'}"


def test_markdown_report_with_png_beside(tmp_path, record_sha, capsys) -> None:
    sha, store = record_sha
    assert (
        main(["report", sha[:10], "--store", store, "--format", "md", "--out", str(tmp_path / "r" / "report.md")]) == 0
    )
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Approaching the threshold" in text and "2.0e+23 FLOP" in text and "2.4e+23 FLOP" in text
    assert "![cumulative compute against the threshold](report.png)" in text and "not legal advice" in text
    assert (tmp_path / "r" / "report.png").read_bytes().startswith(PNG)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_in_headless_chromium(tmp_path, record_sha) -> None:
    sha, store = record_sha
    page = tmp_path / "report.html"
    assert main(["report", sha, "--store", store, "--format", "html", "--out", str(page)]) == 0
    html = page.read_text()
    assert "data:image/png;base64," in html and 'id="status"' in html
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
    assert "Approaching the threshold" in dom and "2.0e+23 FLOP" in dom and "2.4e+23 FLOP" in dom and sha in dom
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.05  # not a blank page: text, table and the plot were painted
