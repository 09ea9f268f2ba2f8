"""Checks that need a GPU: they skip cleanly without one (CI never has one)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_qlora_is_counted_by_logical_shape(tmp_path) -> None:
    """4-bit packed weights report half their numel; the count must not shrink."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from meter import CostModel, FlopsMeterCallback, TokenStats, TrainingSetup, spec_from_config
    from meter.engine.measure import model_from_config
    from tests.reference import TINY_CONFIGS
    from tests.trainer_jobs import lengths, read_record, run, sequences

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    cfg = dict(TINY_CONFIGS["llama"], hidden_size=128, intermediate_size=256)
    base = model_from_config(cfg, attn_implementation="eager")
    base.save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map={"": 0})
    model = get_peft_model(prepare_model_for_kbit_training(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    rows = sequences(8)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    run(model, rows, tmp_path / "out", [callback], max_steps=2, use_cpu=False, bf16=True)
    record = read_record(tmp_path / "m.json")
    assert record["method"]["method"] == "qlora" and record["model"]["quantized"]
    spec = spec_from_config({**TINY_CONFIGS["llama"], "hidden_size": 128, "intermediate_size": 256})
    setup = TrainingSetup(method="qlora", lora_r=4, lora_targets=("q_proj", "v_proj"), gradient_checkpointing=True)
    want = CostModel(spec, setup).count(TokenStats.from_lengths(lengths(rows))).regulatory_flops
    assert record["flops"]["regulatory"] == want
    assert record["model"]["parameters"] == spec.parameter_count()


def test_nvml_on_a_real_gpu(tmp_path) -> None:
    pytest.importorskip("pynvml")
    import time

    from meter.runtime.nvml import NvmlSampler

    sampler = NvmlSampler(interval=0.1).start()
    x = torch.randn(4096, 4096, device="cuda")
    t0 = time.time()
    while time.time() - t0 < 2:
        x = x @ x
        x = x / x.norm()
    torch.cuda.synchronize()
    summary = sampler.stop()
    assert summary["available"] and summary["energy_kwh"] > 0
    gpu = summary["gpus"][0]
    assert gpu["samples"] >= 15 and gpu["power_max_w"] > gpu["power_mean_w"] * 0.5 > 0
    if summary["energy_method"] == "nvml_energy_counter":  # Volta and later: the counter and the integral agree
        integral_kwh = sampler.devices[0].power_integral_j / 3.6e6
        assert abs(integral_kwh - summary["energy_kwh"]) <= 0.25 * summary["energy_kwh"]


def test_full_run_on_gpu_counts_exactly_and_measures_energy(tmp_path) -> None:
    """A bf16 Trainer run on the GPU: the count is the engine's, and the record holds NVML energy and the chip."""
    pytest.importorskip("pynvml")
    from meter import CostModel, FlopsMeterCallback, TokenStats, TrainingSetup, spec_from_config
    from tests.reference import TINY_CONFIGS
    from tests.trainer_jobs import lengths, read_record, run, sequences, tiny_model

    model = tiny_model("llama").cuda()
    rows = sequences(16)
    callback = FlopsMeterCallback(output_path=str(tmp_path / "m.json"))
    run(model, rows, tmp_path / "out", [callback], max_steps=4, use_cpu=False, bf16=True)
    record = read_record(tmp_path / "m.json")
    want = CostModel(spec_from_config(TINY_CONFIGS["llama"]), TrainingSetup(method="full"))
    assert record["flops"]["regulatory"] == want.count(TokenStats.from_lengths(lengths(rows))).regulatory_flops
    assert record["energy"]["available"] and record["energy"]["energy_kwh"] > 0
    assert record["hardware"]["chip"] is not None
