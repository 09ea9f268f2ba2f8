"""flops-meter: exact FLOPs of LLM fine-tuning, for the EU AI Act's one-third rule.

Light by design: importing ``meter`` loads no torch, transformers, sagemaker or boto3; the analytic engine is
pure Python. Typical use::

    from meter import ModelSpec, TrainingSetup, TokenStats, CostModel, spec_from_config
    spec = spec_from_config("config.json")
    count = CostModel(spec, TrainingSetup(method="lora", lora_r=16)).count(TokenStats.uniform(10_000, 2048))
    count.regulatory_flops, count.executed_flops
"""

from meter.engine.count import CostModel, FlopsCount, TrainingSetup, count_flops
from meter.engine.spec import ModelSpec, MoESpec, spec_from_config
from meter.engine.tokens import TokenStats
from meter.errors import MeterError

__version__ = "0.1.0"

_LAZY = {  # these import torch/transformers: loaded on first use only
    "FlopsMeter": "meter.runtime.meter",
    "FlopsMeterCallback": "meter.runtime.callback",
    "from_recipe": "meter.runtime.recipe",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        try:
            return getattr(importlib.import_module(_LAZY[name]), name)
        except ModuleNotFoundError as e:
            if e.name not in ("transformers", "torch", "peft"):
                raise
            raise ImportError(
                f"meter.{name} needs {e.name}, which is not installed: pip install 'flops-meter[hf]'"
            ) from None
    raise AttributeError(f"module 'meter' has no attribute {name!r}")


__all__ = [
    "CostModel",
    "FlopsCount",
    "FlopsMeter",
    "FlopsMeterCallback",
    "MeterError",
    "MoESpec",
    "ModelSpec",
    "TokenStats",
    "TrainingSetup",
    "__version__",
    "count_flops",
    "from_recipe",
    "spec_from_config",
]
