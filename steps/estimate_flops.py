"""EstimateFLOPs — the plan before any GPU is paid for: planned compute, the threshold, the pre-flight gate.

Inputs (processing): ``recipe/`` (recipe YAML), ``dataset/`` (JSON Lines), optionally ``model/`` (config.json and
tokenizer). Output: ``estimate/estimate.json`` — a PropertyFile with ``planned_regulatory_flops``,
``threshold_flops``, ``crosses`` and ``gate_passed`` (false when the plan crosses and crossing is not allowed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

from meter.booleans import parse_bool
from meter.engine.catalog import resolve_model
from meter.engine.count import CostModel
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats
from meter.errors import MeterError
from meter.policy.compliance import classify
from meter.policy.governance import base_and_lineage
from meter.policy.original import resolve_original
from meter.policy.thresholds import rule_text
from meter.runtime.recipe import load_recipe
from steps.common import MODEL_INPUTS, given_model, hub_token, one_file, run_step
from steps.contract import ESTIMATE
from steps.data import sequences, tokenizer_for
from steps.settings import Recipe


def parse(argv=None) -> argparse.Namespace:
    return ESTIMATE.parse(argv)  # the arguments are declared in steps/contract.py


# Accelerators per SageMaker training instance (torchrun starts one process each), from the AWS instance-type pages
# (2026-11). Only a recipe with max_steps needs it: the plan of an epoch-based recipe is the dataset × epochs.
GPUS = {
    **{f"ml.g5.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"ml.g6.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"ml.g6e.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "ml.g5.12xlarge": 4, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
    "ml.g6.12xlarge": 4, "ml.g6.24xlarge": 4, "ml.g6.48xlarge": 8,
    "ml.g6e.12xlarge": 4, "ml.g6e.24xlarge": 4, "ml.g6e.48xlarge": 8,
    "ml.p3.2xlarge": 1, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8, "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8,
    "ml.p5en.48xlarge": 8, "ml.p6-b200.48xlarge": 8,
    "ml.trn1.2xlarge": 2, "ml.trn1.32xlarge": 32, "ml.trn1n.32xlarge": 32,
}  # fmt: skip
UNKNOWN_GPUS = 8  # an unknown GPU type is planned with 8 processes per node: the gate errs towards closing


def world_size(args: argparse.Namespace) -> tuple[int, str | None]:
    """Training processes for a max_steps plan, and a note when the instance type had to be guessed."""
    if args.world_size > 0:
        return args.world_size, None
    kind = args.instance_type.strip()
    if not kind or kind.startswith(("ml.m", "ml.c", "ml.r", "ml.t")):  # CPU instances: one process
        return args.instance_count, None
    if kind in GPUS:
        return args.instance_count * GPUS[kind], None
    return args.instance_count * UNKNOWN_GPUS, (
        f"instance type {kind} is not in the table: planned with {UNKNOWN_GPUS} processes per instance "
        "(give --world-size for the exact figure)"
    )


def model_source() -> Path | None:
    """The model's config.json and tokenizer files from the ModelS3Uri inputs, in one directory; None: the hub."""
    model = given_model(ESTIMATE.input("model"))
    if model is not None:
        for name in (n for n in MODEL_INPUTS if n != "model"):
            for path in sorted(ESTIMATE.input(name).glob("*")) if ESTIMATE.input(name).is_dir() else ():
                shutil.copy(path, model / path.name)
    return model


def model_config(recipe: Recipe, model: Path | None) -> tuple[dict, str]:
    if model is not None:
        return json.loads((model / "config.json").read_text()), recipe.base_model_id
    resolved = resolve_model(recipe.base_model_id)
    return resolved.config, resolved.name


def main() -> int:
    args = parse()
    if args.instance_count < 1:  # here, before CreateTrainingJob refuses it with the training already paid for
        raise MeterError(f"InstanceCount {args.instance_count}: give 1 or more training instances")
    recipe = Recipe.from_dict(
        load_recipe(one_file(ESTIMATE.input("recipe"), ("*.yaml", "*.yml"), "recipe")),
        base_model_id=args.base_model_id,
        method=args.training_method,
    )
    recipe.check_trained()  # here, before the training instance starts
    hub_token()
    model = model_source()
    config, name = model_config(recipe, model)
    spec = spec_from_config(config, name=name)
    tokenizer = tokenizer_for(
        recipe.base_model_id, model if model is not None and (model / "tokenizer_config.json").is_file() else None
    )
    lengths = [len(s) for s in sequences(ESTIMATE.input("dataset"), tokenizer, recipe.max_length)]
    notes = []
    if recipe.max_steps > 0:  # the run stops after max_steps optimizer steps of the global batch
        processes, note = world_size(args)
        notes += [note] if note else []
        n = recipe.max_steps * recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * processes
        planned = list(itertools.islice(itertools.cycle(lengths), n))
    else:
        planned = lengths * recipe.num_train_epochs
    cost = CostModel(spec, recipe.setup())
    count = cost.count(TokenStats.from_lengths(planned, windows=cost.windows))

    prior = 0
    _, lineage = base_and_lineage(recipe.base_model_id, args.lineage)
    if args.store_uri:  # the plan adds up with the lineage's recorded jobs, as the verdict after training will
        from meter.audit.store import open_store

        prior = open_store(args.store_uri).lineage_flops(lineage)
    original = resolve_original(
        recipe.base_model_id,
        args.pretrain_flops,
        systemic_risk=parse_bool(args.original_systemic_risk, default=False) or None,
        label="PretrainFlops",
    )
    verdict = classify(
        count.regulatory_flops,
        original,
        prior_lineage_flops=prior,
        flops_per_token=count.flops_per_token,
        approaching_fraction=args.approaching_fraction,
    )
    allow = parse_bool(args.allow_planned_crossing, default=False)
    doc = {
        "model": name,
        "method": recipe.setup().describe(),
        "planned_tokens": count.tokens,
        "planned_sequences": len(planned),
        "planned_regulatory_flops": count.regulatory_flops,
        "planned_executed_flops": count.executed_flops,
        "flops_per_token": count.flops_per_token,
        "prior_lineage_flops": prior,
        "threshold_flops": verdict.threshold_flops,
        "threshold_rule": verdict.threshold_rule,
        "planned_status": verdict.status,
        "crosses": verdict.crossed,
        "allow_planned_crossing": allow,
        "gate_passed": (not verdict.crossed) or allow,
        "verdict": verdict.to_dict(),
        "notes": notes,
    }
    path = ESTIMATE.write_report(doc)  # validated against steps/schemas/estimate.v1.json first
    print(
        f"estimate_flops: plan {verdict.figures['this_run']} ({count.tokens:,} tokens), lineage "
        f"{verdict.figures['cumulative']}, threshold {verdict.figures['threshold']} "
        f"({rule_text(verdict.threshold_rule)}): "
        f"{verdict.status}; gate {'passed' if doc['gate_passed'] else 'CLOSED'}; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    run_step(main)
