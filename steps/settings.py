"""Training settings of a recipe, shared by EstimateFLOPs (the plan) and TrainWithMeter (the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meter.engine.count import METHODS, TrainingSetup
from meter.errors import MeterError
from meter.runtime.recipe import meter_options

# the methods TrainWithMeter's bundled script trains (the meter counts more: QLoRA needs bitsandbytes on a GPU,
# freeze a list of trainable modules, neither of which the script sets up); "recipe": the recipe's own method
TRAINED = ("full", "lora")
FROM_RECIPE = "recipe"


@dataclass(frozen=True)
class Recipe:
    base_model_id: str = "tiny-llama"
    method: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str = ("q_proj", "v_proj")
    lora_dropout: float = 0.0
    max_length: int = 128
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 1
    max_steps: int = -1
    learning_rate: float = 1e-4
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    compute_flops: bool = True
    flops_meter: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], **overrides: Any) -> Recipe:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise MeterError(f"unknown recipe setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
        values = {**doc, **{k: v for k, v in overrides.items() if v not in (None, "", FROM_RECIPE)}}
        lora = values.get("lora_targets")
        if isinstance(lora, list):
            values["lora_targets"] = tuple(lora)
        # the meter's section is read by the meter's one reader: the same checks and conversions as from_recipe
        values["flops_meter"] = meter_options({"compute_flops": True, "flops_meter": values.get("flops_meter")})
        try:
            recipe = cls(**values)
        except TypeError as e:
            raise MeterError(f"recipe: {e}") from None
        recipe.check()
        return recipe

    def check(self) -> None:
        if self.method not in METHODS:
            raise MeterError(f"recipe method '{self.method}': use one of {', '.join(METHODS)}")
        for name in (
            "lora_r",
            "max_length",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise MeterError(f"recipe {name} must be a positive integer, got {value!r}")

    def check_trained(self) -> None:
        """Refuse, before any training instance starts, a method the bundled training script cannot train."""
        if self.method not in TRAINED:
            raise MeterError(
                f"training method '{self.method}' is not trained by TrainWithMeter's bundled script (it trains "
                f"{' and '.join(TRAINED)}): set method in the recipe or the TrainingMethod parameter to one of them"
            )

    def setup(self) -> TrainingSetup:
        return TrainingSetup(
            method=self.method,
            lora_r=self.lora_r,
            lora_targets=self.lora_targets if self.method in ("lora", "qlora") else None,
            lora_dropout=self.lora_dropout,
            gradient_checkpointing=self.gradient_checkpointing,
            attn_implementation=self.attn_implementation,
        )
