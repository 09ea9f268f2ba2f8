"""A background sampler of the local GPUs through NVML: power, utilisation, SM clock and the energy counter.

Energy comes from the delta of ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load, Volta and
later); where a device lacks that counter, power samples are integrated over time and the figure is marked so.
Only streaming aggregates are kept (count, sums, extrema, last values), so memory stays bounded on a week-long
job. Measuring never crashes the job it measures: every NVML failure becomes a recorded reason.
Needs ``nvidia-ml-py`` (imported as ``pynvml``); without it the sampler reports why it could not run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("flops_meter")


@dataclass
class _Device:
    index: int
    name: str
    handle: Any
    energy_start_mj: int | None = None
    energy_last_mj: int | None = None
    samples: int = 0
    power_sum_w: float = 0.0
    power_max_w: float = 0.0
    util_sum: float = 0.0
    clock_sum_mhz: float = 0.0
    power_integral_j: float = 0.0
    last_power_w: float | None = None
    last_time: float | None = None

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        if self.energy_start_mj is not None and self.energy_last_mj is not None:
            joules, method = (self.energy_last_mj - self.energy_start_mj) / 1000.0, "nvml_energy_counter"
        else:
            joules, method = self.power_integral_j, "nvml_power_integral"
        return {
            "index": self.index,
            "name": self.name,
            "energy_kwh": joules / 3.6e6,
            "energy_method": method,
            "samples": self.samples,
            "power_mean_w": self.power_sum_w / n,
            "power_max_w": self.power_max_w,
            "utilization_mean": self.util_sum / n / 100.0,
            "sm_clock_mean_mhz": self.clock_sum_mhz / n,
        }


@dataclass
class NvmlSampler:
    """Samples every ``interval`` seconds in a daemon thread; ``stop()`` returns the summary."""

    interval: float = 1.0
    devices: list[_Device] = field(default_factory=list)
    reason: str | None = None  # why there is no measurement, when there is none

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._started = self._stopped = None

    def start(self) -> NvmlSampler:
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install 'flops-meter[gpu]')"
            return self
        try:
            pynvml.nvmlInit()
            self._nvml = pynvml
            for index in _visible_indices(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                self.devices.append(_Device(index, name.decode() if isinstance(name, bytes) else str(name), handle))
        except Exception as e:  # NVMLError and driver problems: record, never raise into training
            self.reason = f"NVML unavailable: {e}"
            self.devices.clear()
            return self
        if not self.devices:
            self.reason = "no GPU visible to NVML"
            return self
        self._started = time.time()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="flops-meter-nvml", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        nvml, now = self._nvml, time.time()
        for d in self.devices:
            try:
                power = nvml.nvmlDeviceGetPowerUsage(d.handle) / 1000.0
                util = nvml.nvmlDeviceGetUtilizationRates(d.handle).gpu
                clock = nvml.nvmlDeviceGetClockInfo(d.handle, nvml.NVML_CLOCK_SM)
            except Exception as e:
                log.debug("flops_meter: NVML sample of GPU %d failed: %s", d.index, e)
                continue
            try:
                energy = nvml.nvmlDeviceGetTotalEnergyConsumption(d.handle)
                if d.energy_start_mj is None:
                    d.energy_start_mj = energy
                d.energy_last_mj = energy
            except Exception:
                if d.samples == 0:
                    log.warning("flops_meter: GPU %d has no energy counter; integrating power instead", d.index)
            if d.last_time is not None and d.last_power_w is not None:
                d.power_integral_j += (now - d.last_time) * (power + d.last_power_w) / 2
            d.samples += 1
            d.power_sum_w += power
            d.power_max_w = max(d.power_max_w, power)
            d.util_sum += util
            d.clock_sum_mhz += clock
            d.last_power_w, d.last_time = power, now

    def stop(self) -> dict[str, Any]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval + 1)
            self._sample()
            self._thread = None
            self._stopped = time.time()
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:
                log.debug("flops_meter: nvmlShutdown failed: %s", e)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        gpus = [d.summary() for d in self.devices]
        methods = {g["energy_method"] for g in gpus}
        return {
            "available": bool(gpus),
            "reason": self.reason,
            "gpus": gpus,
            "energy_kwh": sum(g["energy_kwh"] for g in gpus) if gpus else None,
            "energy_method": methods.pop() if len(methods) == 1 else ("mixed" if methods else None),
            "seconds": (self._stopped or time.time()) - self._started if self._started else None,
        }


def _visible_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES, when it lists indices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count)) if visible is None else []
    indices = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit():  # UUIDs or MIG ids: measure every device rather than guess the mapping
            return list(range(count))
        if int(part) < count:
            indices.append(int(part))
    return indices
