"""Step-time overhead of the meter, measured side by side in one run.

Three modes on the same model and batches, interleaved round by round so that drift (thermal, other load) hits
them alike:

- off   plain training step;
- meter flops-meter: token statistics accumulated on the device, read back every 10 steps (log_every=10);
- aws   the AWS sample's way: copy input_ids to the host and count ``!= pad_token_id`` at every micro-step
        (a device sync per step; with several ranks it also all-reduces every step).

Prints median step time per mode and the ratios to ``off``; writes bench/results/overhead.json.
Target: meter/off ≤ 1.01 on a small model on CPU.

    python bench/overhead.py [--device cpu|cuda] [--dtype bfloat16] [--rounds 15] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def build(device: str, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
    )
    return LlamaForCausalLM(cfg).to(device)


def batches(n: int, batch: int, seq: int, device: str):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 4096, (batch, seq), generator=g)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, 2)
        out.append(
            {
                k: v.to(device)
                for k, v in {
                    "input_ids": ids,
                    "attention_mask": mask,
                    "labels": ids.masked_fill(mask == 0, -100),
                }.items()
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per mode per round")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = parser.parse_args()

    from meter.runtime.meter import FlopsMeter

    device = args.device
    model = build(device, args.hidden, args.layers).to(getattr(torch, args.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = batches(args.steps, args.batch, args.seq, device)
    meter = FlopsMeter(
        model, hook=False, log_every=10, nvml=False, output_path=Path(args.out).with_name("overhead_meter.json")
    )
    meter.start()
    aws_tokens = 0

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step(batch, mode: str) -> None:
        nonlocal aws_tokens
        if mode == "meter":
            meter.observe(batch)
        elif mode == "aws":  # the sample: host copy and a pad-id comparison at every micro-step
            aws_tokens += int((batch["input_ids"].cpu() != 2).sum().item())
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mode == "meter":
            meter.step()

    modes = ("off", "meter", "aws")
    times: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    own = {"observe": 0.0, "step": 0.0}  # seconds inside the meter's own calls

    real_observe, real_step = meter.observe, meter.step

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                own[key] += time.perf_counter() - t0

        return wrapper

    meter.observe, meter.step = timed(real_observe, "observe"), timed(real_step, "step")
    for batch in data[:3]:  # warm-up
        train_step(batch, "off")
    for r in range(args.rounds):
        order = modes[r % 3 :] + modes[: r % 3]  # rotate: no mode always runs first
        block = {}
        for mode in order:
            # One sync per block of steps, not per step: on a GPU the host runs ahead of the kernels, and a
            # per-step sync would hide the cost of a method that forces one (as the AWS-style count does).
            sync()
            t0 = time.perf_counter()
            for batch in data:
                train_step(batch, mode)
            sync()
            block[mode] = (time.perf_counter() - t0) / len(data)
        for mode in modes:  # the same batches, back to back: paired ratios cancel slow drift
            times[mode].append(block[mode])
            ratios[mode].append(block[mode] / block["off"])
    meter.stop()

    from rich.console import Console
    from rich.table import Table

    median = {m: statistics.median(v) for m, v in times.items()}
    paired = {m: statistics.median(v) for m, v in ratios.items()}
    n_steps = len(times["meter"]) * len(data)
    observe_per_step, step_per_step = own["observe"] / n_steps, own["step"] / n_steps
    shape = f"Llama h={args.hidden} L={args.layers}, batch {args.batch}×{args.seq}"
    table = Table(title=f"Step time on {device} ({args.dtype}): {shape}")
    for col in ("mode", "median step (ms)", "p90 of blocks (ms)", "median paired ratio to off"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for m in modes:
        p90 = statistics.quantiles(times[m], n=10)[-1]
        table.add_row(m, f"{median[m] * 1e3:.2f}", f"{p90 * 1e3:.2f}", f"{paired[m]:.4f}")
    Console(width=110).print(table)
    print(
        f"host time in the meter's calls per step: observe {observe_per_step * 1e6:.0f} µs "
        f"({observe_per_step / median['off']:.3%} of a step), step {step_per_step * 1e6:.0f} µs "
        "(on a GPU this includes waiting for the queued kernels at each read-back, every 10 steps)"
    )
    result = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "config": vars(args),
        "median_step_s": median,
        "ratio_meter": paired["meter"],
        "ratio_aws": paired["aws"],
        "meter_observe_seconds_per_step": observe_per_step,
        "meter_step_seconds_per_step": step_per_step,
        "samples_per_mode": len(times["off"]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"meter/off = {result['ratio_meter']:.4f}, aws/off = {result['ratio_aws']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
