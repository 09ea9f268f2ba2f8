"""Peak dense throughput and board power of accelerators, by chip and precision, each with its source.

Dense figures: NVIDIA datasheets quote tensor-core throughput "with sparsity"; the dense figure is half of it.
An unknown chip or precision gives ``None`` and a reason — never a guessed number (the hardware bound
N·L·H·U of the Guidelines is then reported as unavailable). Names are matched on word boundaries, so an "H20"
is not an H200 and an "L40S" is not an L4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_H100 = "NVIDIA H100 Tensor Core GPU datasheet (dense = sparse / 2); the Guidelines' examples use 989 TFLOP/s"


@dataclass(frozen=True)
class Chip:
    key: str
    peak: dict[str, float]  # precision -> dense FLOP/s
    tdp_watts: float | None
    source: str


CHIPS: tuple[tuple[str, Chip], ...] = (
    # (regex on the lower-cased device name, chip) — first match wins, so specific variants come first
    (
        r"\bh200\b",
        Chip(
            "H200",
            {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12, "fp32": 66.9e12},
            700,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM; dense = sparse / 2)",
        ),
    ),
    (r"\bh100\b.*\bnvl\b", Chip("H100 NVL", {}, 400, "NVIDIA H100 NVL: per-GPU dense peak not tabulated here")),
    (
        r"\bh100\b.*\bpcie\b",
        Chip(
            "H100 PCIe",
            {"bf16": 756.5e12, "fp16": 756.5e12, "fp8": 1513e12, "tf32": 378e12, "fp32": 51.2e12},
            350,
            _H100,
        ),
    ),
    (
        r"\bh100\b",
        Chip(
            "H100 SXM",
            {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12, "fp32": 66.9e12},
            700,
            _H100,
        ),
    ),
    (
        r"\ba100\b.*\bpcie\b",
        Chip(
            "A100 PCIe",
            {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
            300,
            "NVIDIA A100 Tensor Core GPU datasheet (80GB PCIe; dense); the Guidelines' examples use 300 TFLOP/s",
        ),
    ),
    (
        r"\ba100\b",
        Chip(
            "A100 SXM",
            {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
            400,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM; dense); the Guidelines' examples use 300 TFLOP/s",
        ),
    ),
    (
        r"\bl40s\b",
        Chip(
            "L40S",
            {"bf16": 362.05e12, "fp16": 362.05e12, "fp8": 733e12, "tf32": 183e12, "fp32": 91.6e12},
            350,
            "NVIDIA L40S datasheet (dense = sparse / 2)",
        ),
    ),
    (
        r"\bl4\b",
        Chip(
            "L4",
            {"bf16": 121e12, "fp16": 121e12, "fp8": 242.5e12, "tf32": 60e12, "fp32": 30.3e12},
            72,
            "NVIDIA L4 Tensor Core GPU datasheet (dense = sparse / 2)",
        ),
    ),
    (r"\ba10g\b", Chip("A10G", {}, None, "A10G (AWS G5): NVIDIA publishes no datasheet peak for this variant")),
    (r"\bb200\b", Chip("B200", {}, None, "B200: peak depends on the system's power envelope; not tabulated here")),
)


def identify(device_name: str) -> Chip | None:
    name = device_name.lower()
    for pattern, chip in CHIPS:
        if re.search(pattern, name):
            return chip
    return None


@dataclass(frozen=True)
class Peak:
    flops: float | None  # dense FLOP/s per device at the precision, None when unknown
    chip: str | None
    precision: str
    source: str


def peak_flops(device_name: str, precision: str) -> Peak:
    """Dense peak of one device at a precision ('bf16', 'fp16', 'fp8', 'tf32', 'fp32'); None when unknown."""
    chip = identify(device_name)
    if chip is None:
        return Peak(None, None, precision, f"'{device_name}' is not in the peak table: hardware bound not reported")
    flops = chip.peak.get(precision)
    if flops is None:
        return Peak(None, chip.key, precision, f"{chip.source}; no {precision} peak: hardware bound not reported")
    return Peak(flops, chip.key, precision, chip.source)
