"""NVML sampling (driven by a fake pynvml, as CodeCarbon's tests do), the peak table, and the recipe flag."""

from __future__ import annotations

import sys
import time
import types

import pytest

from meter.errors import MeterError
from meter.runtime.hardware import identify, peak_flops
from meter.runtime.nvml import NvmlSampler
from meter.runtime.recipe import from_recipe, load_recipe, meter_options


def fake_pynvml(devices: dict[int, dict], energy: bool = True) -> types.ModuleType:
    """A pynvml stand-in: each device has a name, a power draw (W) and an energy counter advancing with time."""
    mod = types.ModuleType("pynvml")
    mod.NVML_CLOCK_SM = 1
    start = time.time()
    mod.shutdown_called = False

    class NVMLError(Exception):
        pass

    mod.NVMLError = NVMLError
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h]["name"].encode()
    mod.nvmlDeviceGetPowerUsage = lambda h: int(devices[h]["watts"] * 1000)
    mod.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=devices[h]["util"], memory=10)
    mod.nvmlDeviceGetClockInfo = lambda h, kind: 1980

    def energy_mj(h):
        if not energy:
            raise NVMLError("Not Supported")
        return int(5_000_000 + (time.time() - start) * devices[h]["watts"] * 1000)

    mod.nvmlDeviceGetTotalEnergyConsumption = energy_mj

    def shutdown():
        mod.shutdown_called = True

    mod.nvmlShutdown = shutdown
    return mod


DEVICES = {
    0: {"name": "NVIDIA H100 80GB HBM3", "watts": 500.0, "util": 80},
    1: {"name": "NVIDIA H100 80GB HBM3", "watts": 300.0, "util": 60},
}


def test_energy_from_the_counter(monkeypatch) -> None:
    fake = fake_pynvml(DEVICES)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = NvmlSampler(interval=0.02).start()
    time.sleep(0.3)
    summary = sampler.stop()
    assert summary["available"] and summary["energy_method"] == "nvml_energy_counter" and fake.shutdown_called
    assert len(summary["gpus"]) == 2
    seconds = summary["seconds"]
    expected_kwh = (500 + 300) * seconds / 3.6e6
    assert summary["energy_kwh"] == pytest.approx(expected_kwh, rel=0.15)
    gpu0 = summary["gpus"][0]
    assert gpu0["power_mean_w"] == 500 and gpu0["utilization_mean"] == pytest.approx(0.8) and gpu0["samples"] >= 3


def test_power_integral_when_the_counter_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(DEVICES, energy=False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sampler = NvmlSampler(interval=0.02).start()
    time.sleep(0.3)
    summary = sampler.stop()
    assert [g["index"] for g in summary["gpus"]] == [1]  # only the visible device
    assert summary["energy_method"] == "nvml_power_integral"
    assert summary["energy_kwh"] == pytest.approx(300 * summary["seconds"] / 3.6e6, rel=0.25)


def test_no_nvml_is_a_reason_not_a_crash(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    summary = NvmlSampler().start().stop()
    assert not summary["available"] and "nvidia-ml-py" in summary["reason"] and summary["energy_kwh"] is None
    broken = fake_pynvml(DEVICES)

    def fail():
        raise broken.NVMLError("Driver Not Loaded")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    summary = NvmlSampler().start().stop()
    assert not summary["available"] and "Driver Not Loaded" in summary["reason"]


@pytest.mark.parametrize(
    "name, chip, bf16",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5e12),
        ("NVIDIA H200", "H200", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM", 312e12),
        ("NVIDIA L40S", "L40S", 362.05e12),
        ("NVIDIA L4", "L4", 121e12),
        ("NVIDIA A10G", "A10G", None),  # known chip, no published peak: no guess
        ("NVIDIA H20", None, None),  # not an H200 (the AWS sample's substring match says 148 TFLOP/s)
        ("Some Future Accelerator", None, None),
    ],
)
def test_peak_table_refuses_to_guess(name, chip, bf16) -> None:
    peak = peak_flops(name, "bf16")
    assert peak.chip == chip and peak.flops == bf16 and peak.source
    assert (identify(name) is None) == (chip is None)


def test_recipe_flag(tmp_path) -> None:
    pytest.importorskip("transformers")
    on = tmp_path / "on.yaml"
    on.write_text(
        "model: meta-llama/Llama-3.1-8B\ncompute_flops: true\nflops_meter:\n  pretrain_flops: 1e23\n  log_every: 5\n"
    )
    callback = from_recipe(on)
    assert (
        type(callback).__name__ == "FlopsMeterCallback" and callback.pretrain_flops == 1e23 and callback.log_every == 5
    )
    off = tmp_path / "off.yaml"
    off.write_text("model: x\n")
    assert from_recipe(off) is None
    assert from_recipe({"compute_flops": False}) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("compute_flops: [true\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("compute_flops: 'yes please'\n", "must be true or false"),
        ("compute_flops: true\nflops_meter:\n  budget: 3\n", "unknown flops_meter option"),
        ("compute_flops: true\nflops_meter:\n  pretrain_flops: lots\n", "flops_meter.pretrain_flops"),
    ],
)
def test_malformed_recipes_fail_before_training(tmp_path, text, message) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(MeterError, match=message):
        meter_options(load_recipe(path))
    with pytest.raises(MeterError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
