"""Two processes (torchrun, gloo on CPU) count exactly what one process counts over the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

JOB = Path(__file__).with_name("ddp_job.py")


def _run(args: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(JOB.parent.parent), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "FLOPS_METER_NVML": "0",
    }
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_equal_one(tmp_path) -> None:
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",  # torchrun picks a free port itself: no window in which another process takes it
            str(JOB),
            str(tmp_path / "o2"),
            str(two),
            "2",
        ],
        tmp_path,
    )
    _run([str(JOB), str(tmp_path / "o1"), str(one), "4"], tmp_path)
    a, b = json.loads(two.read_text()), json.loads(one.read_text())
    assert a["hardware"]["world_size"] == 2 and b["hardware"]["world_size"] == 1
    assert a["flops"]["regulatory"] == b["flops"]["regulatory"] > 0
    assert a["flops"]["executed"] == b["flops"]["executed"]
    passes = a["tokens"].pop("passes"), b["tokens"].pop("passes")
    assert a["tokens"] == b["tokens"]
    assert passes == (8, 4)  # forward passes: 4 steps on each of 2 ranks, 4 steps on one
