"""Wheels of the small libraries the steps need that a SageMaker image may lack, shipped inside the code bundle.

No pip at run time: a VPC without internet cannot reach PyPI, and installing from a requirements file would replace
the image's own libraries. Here a wheel is unpacked (into a temporary directory) and appended to ``sys.path`` only
when the image does not have the library; the image's own version always wins. The wheels are for the images the
pipeline uses (CPython 3.12, x86_64 Linux; see pipelines/images.py); refresh them with ``make vendor``.

    jsonschema (+ referencing, rpds-py, jsonschema-specifications, attrs, typing-extensions): record validation
    nvidia-ml-py (pynvml): the meter's GPU power and energy sampler
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# distribution (as the wheel file names it) -> the module whose presence means the image has it
PROVIDES = {
    "jsonschema": "jsonschema",
    "jsonschema_specifications": "jsonschema_specifications",
    "referencing": "referencing",
    "rpds_py": "rpds",
    "attrs": "attrs",
    "typing_extensions": "typing_extensions",
    "nvidia_ml_py": "pynvml",
}


def wheels() -> dict[str, Path]:
    return {path.name.split("-", 1)[0]: path for path in sorted(HERE.glob("*.whl"))}


def use() -> list[str]:
    """Append the bundled wheels the image lacks to ``sys.path``; returns their distribution names."""
    added = []
    for distribution, wheel in wheels().items():
        module = PROVIDES.get(distribution)
        if module is None or importlib.util.find_spec(module) is not None:
            continue
        sys.path.append(str(_unpacked(wheel)))
        added.append(distribution)
    if added:
        importlib.invalidate_caches()
        print(f"flops-meter: using the code bundle's {', '.join(added)} (not in this image)", flush=True)
    return added


def _unpacked(wheel: Path) -> Path:
    """The wheel's contents in a directory of their own (shared by the processes of one job; written atomically)."""
    target = Path(tempfile.gettempdir()) / "flops-meter-vendor" / wheel.stem
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{wheel.stem}-", dir=target.parent))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process of the job was first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return target
