"""Energy and the hardware bound of a run, and the device facts they rest on (which chip, what precision).

Energy is NVML's measurement where a node's local rank 0 sampled its GPUs (meter.runtime.nvml), summed over the
nodes; else board power × time, marked as an upper estimate; else a reason. The hardware bound is N·L·H·U of the
Guidelines (Annex A) from the chip's sourced peak (meter.runtime.hardware), or a reason when it does not apply.
"""

from __future__ import annotations

import platform
from typing import Any

from meter.runtime.hardware import identify, peak_flops
from meter.runtime.log import log


def run_energy(sampler: Any, *, use_nvml: bool, device: str | None, seconds: float, world_size: int) -> dict[str, Any]:
    """Stop the NVML sampler (if any) and say the run's energy: measured, estimated from board power, or why not."""
    measured = sampler.stop() if sampler is not None else None
    measured = sum_over_nodes(measured, world_size)
    if measured and measured.get("available"):
        return {**measured, "estimated": measured["energy_method"] != "nvml_energy_counter"}
    reason = (measured or {}).get("reason") or (
        "NVML disabled (nvml=False or FLOPS_METER_NVML=0)" if not use_nvml else "NVML sampled on local rank 0 only"
    )
    if device is None:
        return {"available": False, "reason": f"{reason}; no GPU in use", "energy_kwh": None}
    chip = identify(device)
    if chip is None or chip.tdp_watts is None:
        return {"available": False, "reason": f"{reason}; no board power known for {device}", "energy_kwh": None}
    kwh = chip.tdp_watts * seconds * world_size / 3.6e6
    return {
        "available": False,
        "reason": reason,
        "energy_kwh": kwh,
        "energy_method": "tdp_times_time",
        "estimated": True,
        "note": f"{chip.key} board power {chip.tdp_watts} W × {seconds:.0f} s × {world_size} devices: "
        "an upper estimate, not a measurement",
    }


def hardware_bound(
    energy: dict[str, Any], *, device: str | None, precision: str | None, seconds: float, world_size: int
) -> dict[str, Any]:
    """The record's hardware section: the device, GPU hours and the bound N·L·H·U, or why it does not apply."""
    gpus = energy.get("gpus") or []
    info: dict[str, Any] = {
        "device": device or platform.processor() or "cpu",
        "world_size": world_size,
        "precision": precision,
        "gpu_hours": seconds * world_size / 3600 if device else None,
    }
    if device is None:
        return {**info, "hardware_bound_flops": None, "reason": "no GPU: the hardware-based method does not apply"}
    peak = peak_flops(device, precision or "bf16")
    util = sum(g["utilization_mean"] for g in gpus) / len(gpus) if gpus else None
    bound = None
    if peak.flops is not None:
        bound = world_size * seconds * peak.flops * (util if util is not None else 1.0)
    return {
        **info,
        "chip": peak.chip,
        "peak_flops_per_device": peak.flops,
        "peak_source": peak.source,
        "utilization_mean": util,
        "hardware_bound_flops": bound,
        "hardware_bound_method": "N·L·H·U (Guidelines Annex A); U is NVML kernel-busy time, so this is an upper "
        "bound" + ("" if util is not None else "; U unknown (no NVML): taken as 1"),
    }


def sum_over_nodes(measured: dict[str, Any] | None, world_size: int) -> dict[str, Any] | None:
    """Each node's local rank 0 measures its GPUs; sum the energy of all nodes (collective on every rank)."""
    if world_size <= 1:
        return measured
    try:
        import torch.distributed as dist

        if not dist.is_initialized():
            return measured
        box: list[Any] = [None] * world_size
        dist.all_gather_object(box, measured)
    except Exception as e:
        log.warning("flops_meter: could not gather energy from other nodes: %s", e)
        return measured
    nodes = [m for m in box if m and m.get("available")]
    if not nodes:
        return measured
    gpus = [g for m in nodes for g in m["gpus"]]
    methods = {m["energy_method"] for m in nodes}
    return {**nodes[0], "gpus": gpus, "energy_kwh": sum(m["energy_kwh"] for m in nodes),
            "energy_method": methods.pop() if len(methods) == 1 else "mixed", "nodes": len(nodes)}  # fmt: skip


def precision_of(model: Any) -> str:
    """The precision most of the weights compute in (LoRA adapters are often fp32 on bf16 weights)."""
    sizes: dict[str, int] = {}
    for p in model.parameters():
        sizes[str(p.dtype)] = sizes.get(str(p.dtype), 0) + p.numel()
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    dtype = str(compute) if compute is not None else max(sizes, key=sizes.get, default="torch.float32")
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(dtype, "fp32")


def on_cuda(model: Any) -> bool:
    """Whether the model computes on a CUDA device (a CPU run on a GPU machine must not claim the GPU's energy)."""
    for p in model.parameters() if hasattr(model, "parameters") else ():
        if p.device.type != "meta":
            return p.device.type == "cuda"
    return False


def cuda_device_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception as e:
        log.debug("flops_meter: no CUDA device name: %s", e)
    return None
