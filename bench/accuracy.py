"""Accuracy of FLOPs formulas against FlopCounterMode, and the latency of a config-only estimate.

For every supported family and training method, builds a tiny random-initialised model (eager attention, eager
experts), measures one training step on an unpadded batch with ``torch.utils.flop_counter.FlopCounterMode`` and
prints the relative error of:

- ours      ``executed_flops`` of meter.engine.count (what the kernels run: full L² attention for eager);
- 6ND       6 · N_total · D, the usual rule of thumb;
- HF        ``Trainer.floating_point_ops()`` (what Trainer reports as ``total_flos``): 6 · N_non-embedding · D;
- AWS       the AWS sample's (4 · N_total + 2 · N_trainable) · D.

Then the same at full size on the meta device for real configs, the families outside the engine (the generic path)
set beside 6·N·D, 6·N_active·D, HF ``total_flos`` and FlopCounterMode on the model transformers builds by default
(what ``--measure`` counted before it ran eager experts), and times ``CostModel(spec).count(stats)`` for
Llama-3.1-405B from its config alone, with the peak Python allocation (no model is built). Writes
``bench/results/accuracy.json`` (committed: the README's tables quote it).

    python bench/accuracy.py [--seq-len 512] [--rows 2] [--families llama,mixtral]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package (reference fixtures)

from meter.engine.catalog import resolve_model
from meter.engine.count import CostModel, TrainingSetup
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats
from tests.reference import TINY_CONFIGS, build_model, standard_setups


def measure(family: str, label: str, setup: TrainingSetup, seq_len: int, rows: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = TINY_CONFIGS[family]
    model = build_model(config, setup)
    ids = torch.randint(1, config["vocab_size"], (rows, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    truth = counter.get_total_flops()
    tokens = rows * seq_len
    base = model.get_base_model() if setup.uses_lora else model
    n_total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cost = CostModel(spec_from_config(config), setup)
    ours = cost.count(TokenStats.from_lengths([seq_len] * rows, windows=cost.windows))
    estimates = {
        "ours": ours.executed_flops,
        "6ND": 6 * n_total * tokens,
        # Trainer.floating_point_ops (transformers 5), the source of total_flos
        "HF": 6 * ids.numel() * base.num_parameters(exclude_embeddings=True),
        "AWS": (4 * n_total + 2 * n_trainable) * tokens,
    }
    return {
        "family": family,
        "method": label,
        "truth": truth,
        "regulatory": ours.regulatory_flops,
        **{f"err_{k}": (v - truth) / truth for k, v in estimates.items()},
    }


# (model id, sequence length, method label): dense models at real size on the meta device. transformers' mask
# code calls .item() under gradient checkpointing and peft, and MoE experts route data-dependently: those
# cases are covered exactly by the tiny-model table and tests/test_flop_counter.py instead.
REAL = [
    ("meta-llama/Llama-2-7b-hf", 4096, "full"),
    ("meta-llama/Llama-3.1-8B", 8192, "full"),
    ("meta-llama/Llama-3.1-8B", 8192, "freeze half"),
    ("Qwen/Qwen2.5-0.5B", 4096, "full"),
    ("Qwen/Qwen2.5-7B", 4096, "full"),
    ("google/gemma-2-9b", 4096, "full"),
    ("microsoft/Phi-3-mini-4k-instruct", 4096, "full"),
    ("microsoft/phi-4", 4096, "full"),
    ("mistralai/Mistral-Small-24B-Base-2501", 4096, "full"),
    ("EleutherAI/pythia-6.9b", 2048, "full"),
    ("tiiuae/falcon-7b", 2048, "full"),
    ("openai-community/gpt2", 1024, "full"),
]


def measure_real(model_id: str, seq_len: int, label: str) -> dict:
    """A full-size model built on the meta device (no memory): FlopCounterMode counts shapes, not values."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from meter.engine.measure import model_from_config
    from tests.reference import upper_half_regex

    config = resolve_model(model_id).config
    spec = spec_from_config(config)
    setup = {
        "full": TrainingSetup(attn_implementation="eager"),
        "freeze half": TrainingSetup(attn_implementation="eager", method="freeze", trainable=(upper_half_regex(spec),)),
    }[label]
    with torch.device("meta"):
        model = model_from_config(config, attn_implementation="eager")
    if setup.method == "freeze":
        import re

        rx = re.compile(setup.trainable[0])
        for name, p in model.named_parameters():
            p.requires_grad_(bool(rx.search(name)))
    model.train()
    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    truth = counter.get_total_flops()
    cost = CostModel(spec, setup)
    ours = cost.count(TokenStats.uniform(1, seq_len, windows=cost.windows))
    n_total = spec.parameter_count()
    n_trainable = cost.trainable_parameters()
    # Trainer.floating_point_ops: num_parameters(exclude_embeddings=True) drops nn.Embedding modules only
    n_embed = (spec.vocab_size + spec.position_embeddings) * spec.hidden_size
    estimates = {
        "ours": ours.executed_flops,
        "6ND": 6 * n_total * seq_len,
        "HF": 6 * seq_len * (n_total - n_embed),
        "AWS": (4 * n_total + 2 * n_trainable) * seq_len,
    }
    return {
        "model": model_id,
        "seq_len": seq_len,
        "method": label,
        "truth": truth,
        "regulatory": ours.regulatory_flops,
        **{f"err_{k}": (v - truth) / truth for k, v in estimates.items()},
    }


# families outside the analytic engine, at full size: counted by the generic path (meter.engine.measure) on the meta
# device. Their exactness is proven on tiny models against FlopCounterMode with eager experts
# (tests/test_model_families.py); here they are set beside the rules of thumb, and the path is timed.
OUTSIDE = [
    ("google/gemma-3-1b-pt", 8192),
    ("openai/gpt-oss-120b", 8192),
    ("deepseek-ai/DeepSeek-V3", 4096),
    ("moonshotai/Kimi-K2-Instruct", 4096),
    ("meta-llama/Llama-4-Maverick-17B-128E (text model)", 8192),
    ("meta-llama/Llama-4-Scout-17B-16E (text model)", 16384),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", 4096),
]


def measure_outside(model_id: str, seq_len: int) -> dict:
    from meter.engine.catalog import original_facts
    from meter.engine.measure import MeasuredCostModel

    text_only = model_id.endswith(" (text model)")
    model_id = model_id.removesuffix(" (text model)")
    config = resolve_model(model_id).config
    if text_only:  # the language model of a multimodal checkpoint, as it would be fine-tuned text-only
        config = {"model_type": f"{config['model_type']}_text", **config["text_config"]}
    t0 = time.perf_counter()
    cost = MeasuredCostModel(config, name=model_id)
    count = cost.count(TokenStats.uniform(1, seq_len, windows=cost.windows))
    seconds = time.perf_counter() - t0
    n_total = cost.parameters
    facts = original_facts(model_id)
    active = (facts[0].get("active_parameters") if facts else None) or n_total
    hf, naive = _hf_and_naive(config, seq_len)
    return {
        "model": model_id,
        "seq_len": seq_len,
        "seconds": seconds,
        "regulatory": count.regulatory_flops,
        "executed": count.executed_flops,
        "6ND": 6 * n_total * seq_len,
        "6·N_active·D": 6 * active * seq_len,
        "HF total_flos": hf,
        "FlopCounterMode, default experts": naive,
    }


def _hf_and_naive(config: dict, seq_len: int) -> tuple[int, int | str]:
    """HF Trainer's total_flos (6 × non-embedding parameters × tokens) and what FlopCounterMode reports on the model
    as transformers builds it by default (grouped_mm experts, which it does not see) — the old ``--measure``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from meter.engine.measure import model_from_config

    with torch.device("meta"):
        model = model_from_config(config, attn_implementation="eager")
    hf = 6 * seq_len * model.num_parameters(exclude_embeddings=True)
    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model.train()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
    except Exception as e:  # what the default kernels cannot run on the meta device
        return hf, f"fails: {type(e).__name__}"
    return hf, counter.get_total_flops()


def latency_405b(repeats: int = 50) -> dict:
    """Time the whole config-only path (read spec, build the cost model, count); allocation measured separately."""
    config = resolve_model("meta-llama/Llama-3.1-405B").config
    stats = TokenStats.uniform(100_000, 8192)
    result = {}
    for label, setup in (
        ("full", TrainingSetup()),
        ("lora all-linear", TrainingSetup(method="lora", lora_targets="all-linear")),
    ):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            CostModel(spec_from_config(config), setup).count(stats)
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        CostModel(spec_from_config(config), setup).count(stats)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result[label] = {
            "median_ms": statistics.median(times) * 1e3,
            "max_ms": max(times) * 1e3,
            "peak_alloc_kib": peak / 1024,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--families", default=",".join(sorted(TINY_CONFIGS)))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy.json"))
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    lat = latency_405b()  # first, before torch and seventy models are loaded into this process

    rows = []
    table = Table(title=f"Relative error vs FlopCounterMode (one step, {args.rows}×{args.seq_len} tokens, eager)")
    for col in ("family", "method", "FlopCounterMode", "ours", "6ND", "HF total_flos", "AWS sample"):
        table.add_column(col, justify="left" if col in ("family", "method") else "right")
    for family in args.families.split(","):
        for label, setup in standard_setups(family, lora_r=8).items():
            r = measure(family, label, setup, args.seq_len, args.rows)
            rows.append(r)
            table.add_row(
                family,
                label,
                f"{r['truth']:.3e}",
                *(f"{r[k] * 100:+.2f}%" for k in ("err_ours", "err_6ND", "err_HF", "err_AWS")),
            )
    console = Console(width=170)
    console.print(table)
    worst = {k: max(abs(r[f"err_{k}"]) for r in rows) for k in ("ours", "6ND", "HF", "AWS")}
    console.print("worst |error|: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in worst.items()))

    real_rows = []
    real = Table(
        title="Real configs at full size (meta device, one sequence, eager): relative error vs FlopCounterMode"
    )
    for col in ("model", "seq", "method", "FlopCounterMode", "ours", "6ND", "HF total_flos", "AWS sample"):
        real.add_column(col, justify="left" if col in ("model", "method") else "right")
    for model_id, seq_len, label in REAL:
        r = measure_real(model_id, seq_len, label)
        real_rows.append(r)
        real.add_row(
            model_id,
            str(seq_len),
            label,
            f"{r['truth']:.3e}",
            *(f"{r[k] * 100:+.2f}%" for k in ("err_ours", "err_6ND", "err_HF", "err_AWS")),
        )
    console.print(real)
    outside_rows = []
    outside = Table(title="Families outside the engine, full size (generic path on meta): one sequence, "
                    "each estimate relative to our regulatory count")  # fmt: skip
    others = ("6ND", "6·N_active·D", "HF total_flos", "FlopCounterMode, default experts")
    for col in ("model", "seq", "ours regulatory", "ours executed", *others, "time"):
        outside.add_column(col, justify="left" if col == "model" else "right")

    def rel(value, reference) -> str:
        return value if isinstance(value, str) else f"{(value - reference) / reference * 100:+.1f}%"

    for model_id, seq_len in OUTSIDE:
        r = measure_outside(model_id, seq_len)
        outside_rows.append(r)
        outside.add_row(model_id, str(seq_len), f"{r['regulatory']:.3e}", rel(r["executed"], r["regulatory"]),
                        *(rel(r[k], r["regulatory"]) for k in others), f"{r['seconds']:.1f} s")  # fmt: skip
    console.print(outside)
    for label, r in lat.items():
        console.print(
            f"config-only estimate of Llama-3.1-405B ({label}): median {r['median_ms']:.2f} ms, "
            f"max {r['max_ms']:.2f} ms, peak Python allocation {r['peak_alloc_kib']:.0f} KiB (no model built)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "tiny": {"seq_len": args.seq_len, "rows": args.rows, "results": rows, "worst": worst},
        "real": real_rows,
        "outside_engine": outside_rows,
    }
    out.write_text(json.dumps({**doc, "latency_405b": lat}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
