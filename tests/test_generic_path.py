"""The generic path: families outside the analytic engine are measured on a meta-device copy and counted exactly.

Truths: FlopCounterMode around the real training (eager attention) for families the engine does not know (Gemma 3
with alternating sliding windows, OLMo 2); and, for families it does know, the analytic engine itself, which the
measured path must agree with although it shares none of its code (meter.engine.graph/count vs FlopCounterMode).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch
from transformers import TrainerCallback

from meter import CostModel, FlopsMeterCallback, TokenStats, spec_from_config
from meter.engine.measure import MeasuredCostModel
from meter.errors import MeterError
from meter.runtime.introspect import observe_model
from tests.pass_truth import PassTruth
from tests.reference import TINY_CONFIGS, build_model, standard_setups
from tests.trainer_jobs import read_record, run, sequences


class During(TrainerCallback):
    """The truth counts from on_train_begin on: the meter's own meta-device measurement is not training."""

    def __init__(self, truth: PassTruth):
        self.truth = truth

    def on_train_begin(self, args, state, control, **kwargs):
        self.truth.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self.truth.__exit__(None, None, None)


def gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                             sliding_window=16, attn_implementation="eager"))  # fmt: skip


def olmo2():
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, attn_implementation="eager"))  # fmt: skip


@pytest.mark.parametrize("family", [gemma3, olmo2], ids=["gemma3", "olmo2"])
@pytest.mark.parametrize("method", ["full", "lora", "lora-checkpointing", "full-checkpointing"])
def test_unknown_families_train_and_are_counted_exactly(tmp_path, family, method) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = family()
    if "lora" in method:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    truth = PassTruth().policy(model)
    extra = {"gradient_checkpointing": True} if "checkpointing" in method else {}
    callbacks = [FlopsMeterCallback(output_path=str(tmp_path / "m.json")), During(truth)]
    run(model, sequences(8), tmp_path / "out", callbacks, max_steps=2, **extra)
    record = read_record(tmp_path / "m.json")
    assert record["status"] == "completed" and record["model"]["counted_by"].startswith("measured")
    assert record["flops"]["executed"] == truth.parts["training"]
    assert record["flops"]["regulatory"] < record["flops"]["executed"]
    assert any("outside the analytic engine" in n for n in record["notes"])


# the named must-haves outside the analytic engine: sinks + alternating windows + MoE (gpt-oss), MLA + shared
# experts + dense first layer (DeepSeek-V3), dense-kernel MoE + chunked attention (Llama 4), hybrid linear
# attention + MoE (Qwen3-Next), Mistral 3 (ministral3), Gemma 3 (above)
MUST_HAVES = ("gpt_oss", "deepseek_v3", "llama4_text", "qwen3_next", "ministral3")


@pytest.mark.parametrize("model_type", MUST_HAVES)
@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "full-checkpointing"])
def test_must_have_families_train_and_are_counted_exactly(tmp_path, model_type, checkpointing) -> None:
    """A tiny Trainer run records the count FlopCounterMode sees (eager attention, eager experts). Rows of 64
    tokens with no padding: Qwen3-Next's chunked linear attention pads to 64 (meter.engine.measure states it)."""
    from tests.tiny_families import build

    torch.manual_seed(0)
    model = build(model_type)
    truth = PassTruth().policy(model)
    extra = {"gradient_checkpointing": True} if checkpointing else {}
    callbacks = [FlopsMeterCallback(output_path=str(tmp_path / "m.json")), During(truth)]
    run(model, sequences(8, low=64, high=64), tmp_path / "out", callbacks, max_steps=2, **extra)
    record = read_record(tmp_path / "m.json")
    assert record["status"] == "completed" and record["model"]["counted_by"].startswith("measured")
    assert record["flops"]["executed"] == truth.parts["training"]  # several rows a batch: per-row work included
    assert record["flops"]["regulatory"] < record["flops"]["executed"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "falcon"])
@pytest.mark.parametrize("label", ["full", "lora q,v", "lora all", "freeze half", "grad ckpt"])
def test_measured_path_agrees_with_the_analytic_engine(family, label) -> None:
    """Two independent methods, one answer: FlopCounterMode on a meta copy vs the matmul graph, both counts."""
    setup = standard_setups(family)[label]
    live = build_model(TINY_CONFIGS[family], setup)
    observed = observe_model(live)
    measured = MeasuredCostModel(observed.config, observed.setup, model=live)
    analytic = CostModel(spec_from_config(observed.config), observed.setup, trainable=observed.trainable)
    # rows past Gemma 2's sliding window (64): the measured path credits it per layer
    stats = TokenStats.from_lengths([7, 30, 200], padded_to=200, rows=3, windows=measured.windows | analytic.windows)
    m, a = measured.count(stats), analytic.count(stats)
    assert measured.windows == analytic.windows
    assert m.regulatory_flops == a.regulatory_flops, (family, label)
    if setup.attn_implementation == "eager":
        assert m.executed_flops == a.executed_flops, (family, label)


def test_experts_outside_transformers_dispatch_are_refused_not_guessed() -> None:
    """Experts modules that route with data-dependent shapes and do not dispatch through experts_implementation
    cannot be measured on meta: refused with a reason (the run is then recorded as not counted:
    tests/test_never_break.py). Those that dispatch are counted exactly: tests/test_model_families.py."""
    from tests.tiny_families import tiny_config

    with pytest.raises(MeterError, match="JetMoeParallelExperts does not dispatch"):
        MeasuredCostModel(tiny_config("jetmoe").to_dict())


def test_multimodal_models_are_refused_not_unwrapped() -> None:
    llava = {"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"},
             "text_config": {"model_type": "llama", "hidden_size": 64}}  # fmt: skip
    with pytest.raises(MeterError, match="multimodal model \\(vision_config\\)"):
        spec_from_config(llava)


def test_config_only_measure_counts_lora_and_freeze() -> None:
    """--measure from a config alone prepares the setup on a meta model: it must count what the live model, set up
    the same way, counts (and that equals FlopCounterMode: tests/test_model_families.py)."""
    from peft import LoraConfig, get_peft_model

    from meter.engine.count import TrainingSetup
    from tests.tiny_families import build, tiny_config

    config = tiny_config("gemma3_text").to_dict()
    stats = TokenStats.from_lengths([64, 40], padded_to=64, rows=2, windows=[8])
    lora = TrainingSetup(method="lora", lora_r=4, lora_targets="all-linear")
    live = get_peft_model(build("gemma3_text").train(), LoraConfig(r=4, target_modules="all-linear"))
    observed = observe_model(live)
    by_config = MeasuredCostModel(config, lora).count(stats)
    by_live = MeasuredCostModel(observed.config, observed.setup, model=live).count(stats)
    assert (by_config.regulatory_flops, by_config.executed_flops) == (by_live.regulatory_flops, by_live.executed_flops)
    frozen = MeasuredCostModel(config, TrainingSetup(method="freeze", trainable=(r"layers\.3\.",))).count(stats)
    assert frozen.regulatory_flops < MeasuredCostModel(config).count(stats).regulatory_flops
    with pytest.raises(MeterError, match="matches no parameter"):
        MeasuredCostModel(config, TrainingSetup(method="freeze", trainable=("nothing",)))


CHUNK = 16


def _llama4(chunk: int = CHUNK):
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, intermediate_size=64, intermediate_size_mlp=128,
                              num_local_experts=4, num_experts_per_tok=1, attention_chunk_size=chunk,
                              attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    return Llama4ForCausalLM(config).train()


def _allowed_pairs(model, attention_mask) -> int:
    """The query–key pairs of real queries that transformers' own chunked mask allows (eager: 0 kept, -inf cut)."""
    import inspect

    from transformers.masking_utils import create_chunked_causal_mask

    embeds = torch.zeros(*attention_mask.shape, model.config.hidden_size)
    kwargs = {"config": model.config, "inputs_embeds": embeds, "attention_mask": attention_mask,
              "past_key_values": None, "position_ids": None}  # fmt: skip
    if "cache_position" in inspect.signature(create_chunked_causal_mask).parameters:  # transformers < 5.4
        kwargs["cache_position"] = torch.arange(attention_mask.shape[1])
    mask = create_chunked_causal_mask(**kwargs)
    allowed = mask[:, 0] == 0 if mask.dtype != torch.bool else mask[:, 0]
    return int((allowed & attention_mask.bool()[:, :, None]).sum())


def test_llama4_chunked_attention_is_credited_its_chunks(tmp_path) -> None:
    """Llama 4's chunked layers see keys of their chunk only: the regulatory count credits exactly the pairs
    transformers' chunked mask allows (read from the mask it builds), and no more than causal attention would."""
    from meter import FlopsMeter

    model = _llama4()
    types = model.config.layer_types
    chunked = sum(t == "chunked_attention" for t in types)
    assert 0 < chunked < len(types)  # NoPE layers stay full causal attention
    measured = MeasuredCostModel(model.config.to_dict(), model=model)
    assert -CHUNK in measured.windows

    # the meter over a left- and right-padded batch: its pairs are the mask's
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :7] = 0  # left padding: transformers' chunks start after it
    mask[1, 35:] = 0
    ids = torch.randint(3, 500, mask.shape)
    meter = FlopsMeter(model, output_path=tmp_path / "m.json", nvml=False).start()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    meter.step()
    meter.stop()
    assert meter.stats.causal_pairs(-CHUNK) == _allowed_pairs(model, mask)

    # the regulatory count: the chunked layers' pairs, each pair's forward and backward work by hand
    stats = TokenStats.from_lengths([40, 25], windows=measured.windows)
    assert stats.causal_pairs(-CHUNK) == 2 * 136 + 36 + 136 + 45  # chunks of 16: 16+16+8 and 16+9
    causal = stats.causal_pairs()
    as_causal = measured.count(TokenStats.from_lengths([40, 25])).regulatory_flops  # no chunk counts: causal
    per_pair = 3 * 2 * 2 * model.config.num_attention_heads * model.config.head_dim  # QKᵀ and AV, fwd + 2× bwd
    credit = as_causal - measured.count(stats).regulatory_flops
    assert credit == (causal - stats.causal_pairs(-CHUNK)) * chunked * per_pair


@pytest.mark.parametrize(("channels", "groups"), [(64, 64), (64, 8), (16, 1)])
def test_grouped_convolution_backward(channels, groups) -> None:
    """Qwen3-Next's causal depthwise convolution: each gradient costs what the forward does (by hand below).
    torch's FlopCounterMode counts the weight gradient once per group more; the meter's counter and the truth don't."""
    from torch.utils.flop_counter import FlopCounterMode

    from meter.engine.measure import flop_counter
    from tests.reference import truth_counter

    batch, length, k = 2, 100, 4
    conv = torch.nn.Conv1d(channels, channels, k, groups=groups, padding=k - 1)
    x = torch.randn(batch, channels, length, requires_grad=True)
    forward = 2 * batch * channels * (length + k - 1) * k * (channels // groups)  # multiply-adds of each output
    counted = {}
    for name, counter in (("torch", FlopCounterMode(display=False)), ("meter", flop_counter()),
                          ("truth", truth_counter())):  # fmt: skip
        with counter:
            conv(x).sum().backward()
        counted[name] = counter.get_total_flops()
    assert counted["meter"] == counted["truth"] == 3 * forward  # forward, input gradient, weight gradient
    assert counted["torch"] == 2 * forward + groups * forward  # torch's formula: the weight gradient × groups
