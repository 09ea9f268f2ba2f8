"""meter/ runs inside training containers: importing it must not pull sagemaker, boto3, aws_cdk (or even torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meter.engine.count import CostModel, TrainingSetup
from meter.engine.measure import MeasuredCostModel
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats
from meter.errors import MeterError
from tests.reference import TINY_CONFIGS


def test_import_is_light() -> None:
    code = (
        "import sys, meter, meter.engine.count, meter.cli, meter.engine.catalog, meter.policy.thresholds;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sagemaker', 'boto3', 'aws_cdk') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_fallback_matches_the_engine_on_a_known_family() -> None:
    pytest.importorskip("transformers")
    config = dict(TINY_CONFIGS["qwen2"], _name_or_path="tiny-qwen2")
    stats = TokenStats.from_lengths([100, 64], padded_to=100)
    measured = MeasuredCostModel(config).count(stats)
    analytic = CostModel(spec_from_config(config), TrainingSetup(attn_implementation="eager")).count(stats)
    assert (measured.regulatory_flops, measured.executed_flops) == (analytic.regulatory_flops, analytic.executed_flops)


def test_fallback_from_a_config_counts_lora_as_the_engine_does() -> None:
    """--measure from a config alone: peft adapters on a meta model, counted as the analytic engine counts them."""
    setup = TrainingSetup(method="lora", lora_r=4, lora_targets=("q_proj", "v_proj"), attn_implementation="eager")
    stats = TokenStats.from_lengths([7, 30, 64], padded_to=64, rows=3)
    measured = MeasuredCostModel(TINY_CONFIGS["llama"], setup).count(stats)
    analytic = CostModel(spec_from_config(TINY_CONFIGS["llama"]), setup).count(stats)
    assert (measured.regulatory_flops, measured.executed_flops) == (analytic.regulatory_flops, analytic.executed_flops)
    with pytest.raises(MeterError, match="qlora as lora"):
        MeasuredCostModel(TINY_CONFIGS["llama"], TrainingSetup(method="qlora"))


def test_invalid_setups() -> None:
    for kwargs, match in [
        (dict(method="sft"), "unknown training method"),
        (dict(method="lora", lora_r=0), "LoRA rank"),
        (dict(method="freeze"), "--trainable"),
        (dict(method="freeze", trainable=("([",)), "not a valid regex"),
        (dict(attn_implementation="magic"), "attention implementation"),
    ]:
        with pytest.raises(MeterError, match=match):
            TrainingSetup(**kwargs)
    spec = spec_from_config(TINY_CONFIGS["llama"])
    with pytest.raises(MeterError, match="matches no parameter"):
        CostModel(spec, TrainingSetup(method="freeze", trainable=("transformer\\.h",)))
    from meter.engine.count import peft_maps_expert_parameters

    # peft >= 0.19 maps w1 onto the fused gate_up_proj (w3 must come with it); peft 0.18 targets linear layers only
    fused = "fused into gate_up_proj: also target w3" if peft_maps_expert_parameters() else "match no linear layer"
    with pytest.raises(MeterError, match=fused):
        CostModel(spec_from_config(TINY_CONFIGS["mixtral"]), TrainingSetup(method="lora", lora_targets=("w1",)))
