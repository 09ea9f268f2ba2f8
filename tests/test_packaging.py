"""The wheel as PyPI would get it: four import packages and nothing else at top level, the version from one place,
the console script, the extras named in the README, a LICENSE, package data, and metadata that `twine check` passes.
Built from a copy of the tracked files with the installed setuptools (no network, no build isolation)."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import meter
from tests.repo import ROOT, tracked_copy

PACKAGES = {"meter", "steps", "pipelines", "infra"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(build, check=True, capture_output=True)
    (built,) = out.glob("*.whl")
    return built


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def test_only_the_four_packages_land_at_top_level(wheel) -> None:
    with zipfile.ZipFile(wheel) as z:
        top = {n.split("/", 1)[0] for n in z.namelist()}
        names = set(z.namelist())
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == PACKAGES
    # what runs inside the containers travels with the wheel
    for data in ("meter/schemas/audit_record.v1.json", "meter/data/pretrain_compute.json", "steps/recipes/demo.yaml"):
        assert data in names
    assert any(n.startswith("steps/vendor/") and n.endswith(".whl") for n in names)
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_version_license_script_and_extras(wheel) -> None:
    meta = _metadata(wheel)
    assert meta["Version"] == meter.__version__  # pyproject reads it from meter/__init__.py: one place
    assert wheel.name.startswith(f"flops_meter-{meter.__version__}-")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in meta.get_all("License-File")
    extras = set(meta.get_all("Provides-Extra"))
    assert {"hf", "gpu", "pipeline", "infra", "report", "demo", "dev"} <= extras
    readme = (ROOT / "README.md").read_text()
    for extra in extras - {"dev"}:  # every extra a user may install is named in the README
        assert f"flops-meter[{extra}]" in readme, extra
    with zipfile.ZipFile(wheel) as z:
        entry = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        scripts = z.read(entry).decode()
    assert re.search(r"^flops-meter = meter\.cli:main$", scripts, re.M)


def test_twine_check_passes(wheel) -> None:
    twine = shutil.which("twine", path=str(Path(sys.executable).parent))
    if twine is None:
        pytest.skip("twine is not installed (pip install -e '.[dev]')")
    result = subprocess.run([twine, "check", "--strict", str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
