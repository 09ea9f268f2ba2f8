"""The meter under real trainers: every recorded part of a run against an independent count of its passes.

Trains a tiny random-initialised Llama (eager attention, CPU, 2 steps) through real TRL trainers (DPO, KTO, GRPO,
RLOO, ORPO, CPO, Reward, SFT padding-free) and a plain PyTorch loop, set up as in tests/test_trainers.py, with the
meter attached (``FlopsMeterCallback``; ``FlopsMeter`` for the loop). The truth is tests.pass_truth, which never reads
the meter: ``FlopCounterMode`` around the whole run and around each forward or ``generate()``, the kinds told apart
at the trainers' call sites (reference, reward, generation, policy forwards under ``no_grad``; the rest is training).

Per case and part: the meter's executed FLOPs, the truth, the relative error, whether the regulatory count
(conservative scope) includes the part, and the meter's regulatory FLOPs, which by design are below executed
(non-padding tokens, causal pairs, no recompute: meter/engine/count.py) and have no truth here. "naive" approximates the
old behaviour, a meter that takes every forward for a training step: training + 3 × the forward-only parts
(executed). It is computed from the recorded parts, not measured. Writes bench/results/trainers.json.

    python bench/trainers.py [--cases dpo-peft,grpo-one-prompt] [--out bench/results/trainers.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from meter import FlopsMeterCallback
from tests.pass_truth import PassTruth
from tests.test_trainers import LORA, common, plain_loop, preference_rows, reward_length, tiny_reward_model, train
from tests.trainer_jobs import read_record, sequences, tiny_model, word_tokenizer, words


def dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def attach(tmp: Path, peft: bool = False) -> dict:
    """What every trainer here gets: the tokenizer, the meter's callback, LoRA adapters if ``peft``."""
    from peft import LoraConfig

    extra = {"peft_config": LoraConfig(**LORA)} if peft else {}
    return dict(processing_class=word_tokenizer(), callbacks=[FlopsMeterCallback(output_path=str(tmp / "m.json"))],
                **extra)  # fmt: skip


def dpo(tmp: Path, peft: bool) -> PassTruth:
    from trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(model=tiny_model(), ref_model=None if peft else tiny_model(seed=1),
                         args=DPOConfig(**common(tmp)), train_dataset=dataset(preference_rows(8)),
                         **attach(tmp, peft))  # fmt: skip
    return train(trainer, reference=trainer.ref_model)


def kto(tmp: Path, peft: bool) -> PassTruth:
    from trl import KTOConfig, KTOTrainer

    rng = random.Random(0)
    rows = [{"prompt": words(rng, 3, 12), "completion": " " + words(rng, 2, 10), "label": i % 2 == 0}
            for i in range(8)]  # fmt: skip
    trainer = KTOTrainer(model=tiny_model(), ref_model=None if peft else tiny_model(seed=1),
                         args=KTOConfig(**common(tmp)), train_dataset=dataset(rows), **attach(tmp, peft))  # fmt: skip
    return train(trainer, reference=trainer.ref_model)


def grpo(tmp: Path, case: str) -> PassTruth:
    from trl import GRPOConfig, GRPOTrainer

    rng = random.Random(0)
    rows = [{"prompt": words(rng, 2, 9)} for _ in range(8)]
    if case == "one-prompt":
        rows = [rows[0]] * 8
    peft = case == "peft-beta"
    funcs: list = [reward_length, tiny_reward_model()] if case.endswith("reward-model") else [reward_length]
    args = GRPOConfig(**common(tmp), num_generations=2, max_completion_length=6, beta=0.1 if peft else 0.0)
    trainer = GRPOTrainer(model=tiny_model(), reward_funcs=funcs, args=args, train_dataset=dataset(rows),
                          reward_processing_classes=[None, word_tokenizer()] if len(funcs) > 1 else None,
                          **attach(tmp, peft))  # fmt: skip
    return train(trainer, rewards=[f for f in trainer.reward_funcs if isinstance(f, torch.nn.Module)])


def rloo(tmp: Path) -> PassTruth:
    from trl import RLOOConfig, RLOOTrainer

    rng = random.Random(1)
    rows = [{"prompt": words(rng, 2, 9)} for _ in range(8)]
    args = RLOOConfig(**common(tmp), num_generations=2, max_completion_length=5, beta=0.05)
    trainer = RLOOTrainer(model=tiny_model(), reward_funcs=[reward_length], args=args, train_dataset=dataset(rows),
                          **attach(tmp, peft=True))  # fmt: skip
    return train(trainer)


def reference_free(tmp: Path, name: str) -> PassTruth:
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config, trainer_class = {"orpo": (ORPOConfig, ORPOTrainer), "cpo": (CPOConfig, CPOTrainer)}[name]
    return train(trainer_class(model=tiny_model(), args=config(**common(tmp)),
                               train_dataset=dataset(preference_rows(8)), **attach(tmp)))  # fmt: skip


def reward_trainer(tmp: Path) -> PassTruth:
    from trl import RewardConfig, RewardTrainer

    return train(RewardTrainer(model=tiny_reward_model(), args=RewardConfig(**common(tmp)),
                               train_dataset=dataset(preference_rows(8)), **attach(tmp)))  # fmt: skip


def sft_padding_free(tmp: Path) -> PassTruth:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**common(tmp), padding_free=True, pad_to_multiple_of=64, max_length=None,
                     dataset_kwargs={"skip_prepare_dataset": True})  # fmt: skip
    return train(SFTTrainer(model=tiny_model(), args=args, train_dataset=dataset(sequences(12)[:8]), **attach(tmp)))


CASES = {
    "dpo-peft": lambda tmp: dpo(tmp, peft=True),
    "dpo-ref-model": lambda tmp: dpo(tmp, peft=False),
    "kto-peft": lambda tmp: kto(tmp, peft=True),
    "kto-ref-model": lambda tmp: kto(tmp, peft=False),
    "grpo-peft-beta": lambda tmp: grpo(tmp, "peft-beta"),
    "grpo-full-unequal-prompts-reward-model": lambda tmp: grpo(tmp, "full-unequal-prompts-reward-model"),
    "grpo-one-prompt": lambda tmp: grpo(tmp, "one-prompt"),
    "rloo-peft": rloo,
    "orpo": lambda tmp: reference_free(tmp, "orpo"),
    "cpo": lambda tmp: reference_free(tmp, "cpo"),
    "reward-model": reward_trainer,
    "sft-padding-free": sft_padding_free,
    "plain-loop-no-grad-validation": plain_loop,
}


def measure(case: str) -> dict:
    """Run one case in a temporary directory; the meter's parts next to the truth's."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{case}-") as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the trainers print their log dicts
            truth = CASES[case](Path(tmp))
        seconds = time.perf_counter() - t0
        record = read_record(Path(tmp) / "m.json")
    flops = record["flops"]
    parts = {}
    for part, v in flops["parts"].items():
        if not v["passes"] and not truth.parts.get(part):
            continue
        want = truth.parts.get(part, 0)
        parts[part] = {
            "recorded": v["executed_flops"],
            "truth": want,
            "rel_error": (v["executed_flops"] - want) / want if want else None,
            "passes": v["passes"],
            "included": v["included"],
            "regulatory": v["regulatory_flops"],
        }
    forward_only = sum(p["recorded"] for name, p in parts.items() if name != "training")
    return {
        "case": case,
        "seconds": seconds,
        "scope": flops["regulatory_scope"],
        "parts": parts,
        "executed": flops["executed"],
        "truth_executed": sum(v for p, v in truth.parts.items() if p != "evaluation"),
        "regulatory": flops["regulatory"],
        "naive_all_forwards_x3": parts.get("training", {}).get("recorded", 0) + 3 * forward_only,
    }


def percent(x: float | None) -> str:
    return "no truth" if x is None else "exact" if x == 0 else f"{x * 100:+.3f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "trainers.json"))
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    from datasets.utils.logging import disable_progress_bar
    from rich.console import Console
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    disable_progress_bar()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("trl", "flops_meter"):
        logging.getLogger(name).setLevel(logging.ERROR)

    t0 = time.perf_counter()
    results = [measure(case) for case in cases]
    wall = time.perf_counter() - t0

    table = Table(title="Meter vs FlopCounterMode per part (tiny Llama, CPU, conservative scope)")
    for col in ("case", "part", "recorded", "truth", "error", "in reg.", "regulatory", "naive (all fwd ×3)"):
        table.add_column(col, justify="left" if col in ("case", "part") else "right")
    for r in results:
        for i, (part, p) in enumerate(r["parts"].items()):
            table.add_row(r["case"] if i == 0 else "", part, f"{p['recorded']:.4e}", f"{p['truth']:.4e}",
                          percent(p["rel_error"]), "yes" if p["included"] else "no", f"{p['regulatory']:.4e}",
                          "")  # fmt: skip
        err = (r["executed"] - r["truth_executed"]) / r["truth_executed"]
        table.add_row("", "[b]total[/b]", f"{r['executed']:.4e}", f"{r['truth_executed']:.4e}", percent(err), "",
                      f"{r['regulatory']:.4e}", f"{r['naive_all_forwards_x3']:.4e}", end_section=True)  # fmt: skip
    console = Console(width=140)
    console.print(table)
    errors = [p["rel_error"] for r in results for p in r["parts"].values()]
    exact = sum(p["recorded"] == p["truth"] for r in results for p in r["parts"].values())
    worst = max((abs(e) for e in errors if e is not None), default=0.0)
    console.print(f"parts equal to the truth to the FLOP: {exact}/{len(errors)}; worst |error| {worst * 100:.4f}%")
    console.print("naive = training + 3 × forward-only parts: an approximation, not a measurement")
    console.print(f"{len(results)} cases in {wall:.1f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"torch": torch.__version__, "wall_seconds": wall, "worst_rel_error": worst, "results": results}
    out.write_text(json.dumps(doc, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
