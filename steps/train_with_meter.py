"""TrainWithMeter — fine-tunes a Hugging Face causal LM from a recipe, always with the FLOPs meter on.

Channels: ``train`` (JSON Lines), ``recipe`` (recipe YAML), optionally ``model`` (weights, config, tokenizer).
Hyperparameters (strings, as SageMaker passes them) override the recipe: ``base_model_id``, ``training_method``,
``pretrain_flops``, ``original_systemic_risk``, ``save_steps``. Checkpoints go to /opt/ml/checkpoints (synced to
S3 by SageMaker, so a spot job resumes from the last one). The model goes to /opt/ml/model; the run record to
/opt/ml/output/data and, copied, into the model directory, where the next steps find it. Under torchrun every
rank runs this script.
"""

from __future__ import annotations

import json
import os
import shutil

from meter.booleans import parse_bool
from meter.errors import MeterError
from meter.runtime.recipe import load_recipe
from steps.common import checkpoint_dir, given_model, hub_token, hyperparameters, one_file, run_step
from steps.contract import TRAIN
from steps.data import DEMO_MODELS, PadCollator, sequences, tokenizer_for
from steps.settings import Recipe


def build_model(recipe: Recipe, local):
    """The model to fine-tune: from ``local`` (the model channel's directory) when given, else the demo model or
    the hub."""
    import torch
    from transformers import AutoModelForCausalLM

    if recipe.base_model_id in DEMO_MODELS and local is None:
        from meter.engine.catalog import resolve_model
        from meter.engine.measure import model_from_config

        torch.manual_seed(0)
        model = model_from_config(
            resolve_model(recipe.base_model_id).config, attn_implementation=recipe.attn_implementation
        )
        model.config._name_or_path = recipe.base_model_id
    else:
        source = str(local) if local is not None else recipe.base_model_id
        model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=recipe.attn_implementation)
        model.config._name_or_path = recipe.base_model_id  # the id, not a container path: the table is keyed by it
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = recipe.lora_targets if isinstance(recipe.lora_targets, str) else list(recipe.lora_targets)
        model = get_peft_model(
            model,
            LoraConfig(
                r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                target_modules=targets, task_type="CAUSAL_LM",
            ),
        )  # fmt: skip
    return model


def save_servable(trainer, out, tokenizer) -> None:
    """A LoRA run's model directory, as a serving container loads it: the adapter merged into the base weights at
    the top (config.json, safetensors, tokenizer), and the adapter alone under ``adapter/`` (to serve it on the
    base model instead, or to audit it)."""
    if not trainer.is_world_process_zero():
        return
    model = trainer.model
    model.save_pretrained(str(out / "adapter"))
    model.merge_and_unload().save_pretrained(str(out))
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))


def main() -> int:
    from steps.vendor import use

    use()  # the bundle's wheels of what the image lacks (pynvml for the energy sampler …); no pip
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from meter.runtime.callback import FlopsMeterCallback

    hps = TRAIN.hyperparameters(hyperparameters())  # declared in steps/contract.py; an undeclared one is refused
    doc = load_recipe(hps["recipe"] or one_file(TRAIN.input("recipe"), ("*.yaml", "*.yml"), "recipe"))
    if doc.get("compute_flops") is False:
        print("train_with_meter: the recipe says compute_flops: false; TrainWithMeter meters every run regardless")
    recipe = Recipe.from_dict(
        {k: v for k, v in doc.items() if k != "compute_flops"},
        base_model_id=hps["base_model_id"],
        method=hps["training_method"],
    )
    recipe.check_trained()
    hub_token()
    local = given_model(TRAIN.input("model"))
    model = build_model(recipe, local)
    tokenizer_source = local if local is not None and (local / "tokenizer_config.json").is_file() else None
    tokenizer = tokenizer_for(recipe.base_model_id, tokenizer_source)
    rows = [{"input_ids": s} for s in sequences(TRAIN.input("train"), tokenizer, recipe.max_length)]

    meter_options = dict(recipe.flops_meter)
    pretrain = hps["pretrain_flops"] or os.environ.get("PRETRAIN_FLOPS")
    if pretrain not in (None, ""):
        meter_options["pretrain_flops"] = pretrain
    if hps["original_systemic_risk"] not in (None, ""):
        meter_options["original_systemic_risk"] = parse_bool(hps["original_systemic_risk"], default=False)
    data, saved = TRAIN.output("data"), TRAIN.output("model")
    record = TRAIN.output_dir(data.name) / data.file
    callback = FlopsMeterCallback(output_path=str(record), **meter_options)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoint_dir()),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        gradient_checkpointing=recipe.gradient_checkpointing,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        logging_steps=int(meter_options.get("log_every", 10)),
        save_strategy="steps",
        save_steps=hps["save_steps"],
        save_total_limit=2,
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PadCollator(), callbacks=[callback])
    last = get_last_checkpoint(str(checkpoint_dir())) if checkpoint_dir().is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    out = TRAIN.output_dir(saved.name)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.method == "lora":
        save_servable(trainer, out, tokenizer)
    else:
        trainer.save_model(str(out))
        if trainer.is_world_process_zero() and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(out))
    if not trainer.is_world_process_zero():
        return 0
    if not record.is_file():
        raise MeterError(f"the model was saved to {out}, but the meter wrote no record ({record}): not registered")
    shutil.copy(record, out / saved.file)
    summary = json.loads(record.read_text())
    if summary.get("status") == "not_counted":
        # the trained model is kept (nothing lost), but the step fails so that no unmetered model is registered
        raise MeterError(
            f"the model was saved to {out}, but its compute was not counted ({summary.get('reason')}): the "
            "pipeline stops here so that no unmetered model is registered"
        )
    print(f"train_with_meter: {summary['flops']['regulatory_2sf']} regulatory; record in {record} and {out}")
    return 0


if __name__ == "__main__":
    run_step(main)
