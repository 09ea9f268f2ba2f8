"""ModelSpec: read from configs (dict, file, PretrainedConfig), never from parameters; clear errors."""

from __future__ import annotations

import json

import pytest

from meter.engine.catalog import bundled_configs
from meter.engine.spec import SUPPORTED_MODEL_TYPES, spec_from_config
from meter.errors import MeterError, UnknownArchitecture
from tests.reference import TINY_CONFIGS

REQUIRED_FAMILIES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe",
    "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "falcon",
}  # fmt: skip


def test_all_required_families_are_supported() -> None:
    assert set(SUPPORTED_MODEL_TYPES) >= REQUIRED_FAMILIES
    assert set(TINY_CONFIGS) == REQUIRED_FAMILIES


def test_head_dim_comes_from_the_config_not_hidden_over_heads() -> None:
    spec = spec_from_config(bundled_configs()["google/gemma-7b"])
    assert spec.head_dim == 256 and spec.hidden_size // spec.num_heads == 192
    qwen3 = spec_from_config(bundled_configs()["qwen/qwen3-8b"])
    assert (qwen3.head_dim, qwen3.num_kv_heads) == (128, 8)


def test_gqa_mqa_and_fused_qkv() -> None:
    llama70 = spec_from_config(bundled_configs()["meta-llama/llama-2-70b-hf"])
    assert (llama70.num_heads, llama70.num_kv_heads, llama70.qkv_features) == (64, 8, (64 + 16) * 128)
    falcon = spec_from_config(bundled_configs()["tiiuae/falcon-7b"])
    assert falcon.num_kv_heads == 1 and falcon.qkv_features == 4544 + 2 * 64
    assert spec_from_config(bundled_configs()["microsoft/phi-3-mini-4k-instruct"]).fused_qkv


def test_moe_layers_and_active_experts() -> None:
    mixtral = spec_from_config(bundled_configs()["mistralai/mixtral-8x7b-v0.1"])
    assert mixtral.moe.num_experts == 8 and mixtral.moe.top_k == 2 and len(mixtral.moe.layers) == 32
    qwen = spec_from_config(dict(TINY_CONFIGS["qwen2_moe"]))  # decoder_sparse_step=2: layers 1 and 3
    assert qwen.moe.layers == (1, 3) and qwen.moe.shared_intermediate_size == 96 and qwen.moe.shared_expert_gate
    qwen3 = spec_from_config(dict(TINY_CONFIGS["qwen3_moe"]))  # mlp_only_layers=[0]
    assert qwen3.moe.layers == (1, 2, 3) and not qwen3.moe.shared_intermediate_size


def test_sliding_windows() -> None:
    assert set(spec_from_config(bundled_configs()["mistralai/mistral-7b-v0.1"]).windows) == {4096}
    assert set(spec_from_config(bundled_configs()["mistralai/mistral-7b-v0.3"]).windows) == {None}
    gemma2 = spec_from_config(bundled_configs()["google/gemma-2-9b"])
    assert gemma2.windows[:4] == (4096, None, 4096, None)  # even layers slide (transformers' Gemma2Config)
    assert set(spec_from_config(bundled_configs()["qwen/qwen2.5-7b"]).windows) == {None}  # use_sliding_window false
    explicit = dict(TINY_CONFIGS["llama"], sliding_window=32, layer_types=["full_attention", "sliding_attention"] * 2)
    assert spec_from_config(explicit).windows == (None, 32, None, 32)


def test_tied_embeddings_and_biases() -> None:
    assert spec_from_config(bundled_configs()["qwen/qwen2.5-0.5b"]).tie_word_embeddings
    assert not spec_from_config(bundled_configs()["qwen/qwen2.5-7b"]).tie_word_embeddings
    assert spec_from_config(bundled_configs()["qwen/qwen2.5-7b"]).qkv_bias
    assert not spec_from_config(bundled_configs()["meta-llama/llama-3.1-8b"]).qkv_bias


def test_reads_a_pretrained_config_and_a_file(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
    from_obj = spec_from_config(cfg)
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json_string())
    assert spec_from_config(path) == spec_from_config(tmp_path) == from_obj  # file, and its directory
    assert from_obj.num_layers == 3


@pytest.mark.parametrize("path", sorted({p for p in bundled_configs().values()}), ids=lambda p: p.stem)
def test_bundled_configs_have_the_parameters_transformers_builds(path) -> None:
    """Every shipped config, built on the meta device by transformers, has exactly our parameter count."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from meter.engine.measure import model_from_config

    config = json.loads(path.read_text())
    if "vision_config" in config:  # multimodal: refused by the engine with a reason, never unwrapped
        with pytest.raises(MeterError, match="multimodal"):
            spec_from_config(path)
        return
    with torch.device("meta"):
        model = model_from_config(config)
    try:
        spec = spec_from_config(path)
    except UnknownArchitecture:  # outside the engine: counted by the generic path (tests/test_model_families.py)
        return
    assert spec.parameter_count() == model.num_parameters()


def test_missing_fields_are_named() -> None:
    cfg = dict(TINY_CONFIGS["llama"])
    del cfg["num_hidden_layers"], cfg["vocab_size"]
    with pytest.raises(MeterError, match="missing required field\\(s\\): num_hidden_layers, vocab_size"):
        spec_from_config(cfg)


def test_unknown_model_type_points_to_the_fallback() -> None:
    with pytest.raises(MeterError, match=r"unknown model_type 'mamba2'.*--measure"):
        spec_from_config({"model_type": "mamba2", "hidden_size": 8})
    with pytest.raises(MeterError, match="no model_type"):
        spec_from_config({"hidden_size": 8})


@pytest.mark.parametrize("bad", [0, -4, 2.5, "64", True])
def test_bad_field_values(bad) -> None:
    with pytest.raises(MeterError, match="hidden_size"):
        spec_from_config(dict(TINY_CONFIGS["llama"], hidden_size=bad))


def test_bad_files(tmp_path) -> None:
    with pytest.raises(MeterError, match="not found"):
        spec_from_config(tmp_path / "nope.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MeterError, match="not valid JSON"):
        spec_from_config(tmp_path / "config.json")


@pytest.mark.parametrize(
    "model_type, extra",
    [
        ("qwen2", {"sliding_window": 16}),  # no use_sliding_window: transformers runs full attention
        ("qwen2", {"sliding_window": 16, "use_sliding_window": True, "max_window_layers": 2}),
        ("qwen3", {"sliding_window": 16}),
        ("qwen3", {"sliding_window": 16, "use_sliding_window": True, "max_window_layers": 1}),
        ("mistral", {"sliding_window": 16}),
        ("gemma2", {"sliding_window": 16}),
    ],
)
def test_sliding_windows_are_the_ones_transformers_runs(model_type, extra) -> None:
    """Truth: the config transformers itself builds from the same keys (its layer_types after post-init)."""
    from transformers import AutoConfig

    from tests.reference import TINY_CONFIGS

    raw = {k: v for k, v in TINY_CONFIGS[model_type].items() if k != "sliding_window"}
    raw.update(extra)
    hf = AutoConfig.for_model(**raw).to_dict()
    window = hf.get("sliding_window")
    types = hf.get("layer_types") or ["sliding_attention"] * hf["num_hidden_layers"]  # Mistral: every layer
    runs = [window if t == "sliding_attention" else None for t in types]
    assert list(spec_from_config(raw).windows) == runs
