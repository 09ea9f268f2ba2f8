"""Packed rows with a KV cache (issue 15): the meter counts them as the model attends them.

Rows of several documents told apart by ``position_ids`` alone are attended per document by transformers only
without a KV cache; a plain loop with the model's default ``use_cache=True`` attends across the whole row. Truth
here comes from the model's own outputs (does a later document's logits equal those of running it alone?), and
the expected pairs from the documents' lengths: L(L+1)/2 per row when attended across the row, Σ lᵢ(lᵢ+1)/2 per
document otherwise (Σ min(q, w) over positions q within a sliding window w). Tiny random-initialised models,
built from configs in code.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

import torch

from meter import CostModel, FlopsMeter, TokenStats, TrainingSetup, spec_from_config
from meter.engine.tokens import window_pairs
from meter.runtime.counter import attends_whole_row

DOCS = [[5, 11], [9, 4, 3]]  # documents per row: two rows of 16 tokens
LENGTH = 16
WINDOW = 6  # the sliding window of the Mistral case: shorter than most documents
CROSS = "attended across the whole row"


def _config(family: str):
    from transformers import LlamaConfig, MistralConfig

    common = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128)  # fmt: skip
    return MistralConfig(**common, sliding_window=WINDOW) if family == "mistral" else LlamaConfig(**common)


def _model(family: str = "llama", impl: str = "eager", checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family), attn_implementation=impl)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 512, (len(DOCS), LENGTH))
    position_ids = torch.tensor([[p for n in row for p in range(n)] for row in DOCS])
    return {"input_ids": ids, "position_ids": position_ids, "labels": ids.clone()}


def attended_per_document(model, batch, **kwargs) -> bool:
    """From the model's outputs alone: True when every later document's logits equal those of running it on its
    own, False when none do (it saw the documents before it in its row); anything else fails the test."""
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits
        same = []
        for r, row in enumerate(DOCS):
            start = row[0]  # the first document of a row sees nothing before it either way
            for n in row[1:]:
                alone = model(input_ids=batch["input_ids"][r : r + 1, start : start + n], use_cache=False).logits
                same.append(torch.allclose(packed[r, start : start + n], alone[0], atol=1e-5))
                start += n
    assert all(same) or not any(same), f"some documents attended alone, some not: {same}"
    return all(same)


def _metered(model, batch, tmp_path, **kwargs):
    meter = FlopsMeter(model, output_path=tmp_path / "m.json", nvml=False).start()
    model(**batch, **kwargs).loss.backward()
    meter.step()
    return meter, meter.stop()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_transformers_attends_packed_rows_per_document_only_without_a_cache(impl) -> None:
    """The rule itself, from the model's outputs: the default (config.use_cache=True) and use_cache=True attend
    across the row, exactly as the same row with an all-ones mask (never unpacked); use_cache=False per document."""
    model, batch = _model(impl=impl), _batch()
    assert model.config.use_cache is True  # the default outside Trainer
    assert not attended_per_document(model, batch)
    assert not attended_per_document(model, batch, use_cache=True)
    assert attended_per_document(model, batch, use_cache=False)
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        one_sequence = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                             attention_mask=torch.ones_like(batch["input_ids"])).logits  # fmt: skip
    assert torch.allclose(cached, one_sequence, atol=1e-5)


CASES = [  # family, attention, forward kwargs, gradient checkpointing, what transformers does: per document?
    pytest.param("llama", "eager", {}, False, False, id="default use_cache (config True)"),
    pytest.param("llama", "sdpa", {"use_cache": True}, False, False, id="use_cache=True"),
    pytest.param("llama", "eager", {"use_cache": False}, False, True, id="use_cache=False"),
    pytest.param("llama", "sdpa", {"use_cache": False}, False, True, id="use_cache=False sdpa"),
    pytest.param("llama", "eager", {}, True, True, id="gradient checkpointing turns the cache off"),
    pytest.param("mistral", "eager", {}, False, False, id="sliding window, default use_cache"),
    pytest.param("mistral", "eager", {"use_cache": False}, False, True, id="sliding window, use_cache=False"),
]


@pytest.mark.parametrize(("family", "impl", "kwargs", "checkpointing", "documents"), CASES)
def test_regulatory_pairs_follow_how_the_model_attended(
    family, impl, kwargs, checkpointing, documents, tmp_path, capsys
) -> None:
    model, batch = _model(family, impl, checkpointing), _batch()
    per_document = attended_per_document(model, batch, **kwargs)  # the truth, from the model
    assert per_document == documents, "transformers changed how it attends packed rows"
    meter, record = _metered(model, batch, tmp_path, **kwargs)
    stats = meter.stats

    lengths = [n for row in DOCS for n in row] if per_document else [LENGTH] * len(DOCS)
    pairs = sum(n * (n + 1) // 2 for n in lengths)  # causal query–key pairs
    assert stats.tokens == len(DOCS) * LENGTH and stats.sequences == len(lengths)
    assert stats.causal_pairs() == pairs  # the per-pair term of the regulatory count: (Σ sᵢ² + Σ sᵢ) / 2
    windows = (WINDOW,) if family == "mistral" else ()
    if windows:  # Σ min(q, w): each query sees at most w keys (itself included)
        q = [i for n in lengths for i in range(1, n + 1)]
        assert stats.causal_pairs(WINDOW) == sum(min(i, WINDOW) for i in q)
        assert sum(min(i, WINDOW) for i in q) == sum(window_pairs(n, WINDOW) for n in lengths)
    expected = TokenStats.from_lengths(lengths, padded_to=LENGTH, rows=len(DOCS), windows=windows)
    cost = CostModel(spec_from_config(_config(family)), TrainingSetup(gradient_checkpointing=checkpointing))
    assert record["flops"]["regulatory"] == cost.count(expected).regulatory_flops
    assert record["flops"]["confidence"] != "lower_bound" and not meter.degraded

    said = [n for n in record["notes"] if CROSS in n]
    out = capsys.readouterr().out
    if per_document:
        assert not said and CROSS not in out
    else:  # said once, in the record and in one log line, with what to do
        assert len(said) == 1 and out.count(CROSS) == 1 and "use_cache=False" in said[0]


def test_the_whole_row_costs_more_by_the_per_pair_term(tmp_path) -> None:
    """Same batch, same model: the only difference between the two counts is the attention pairs' term."""
    batch = _batch()
    _, cached = _metered(_model(), batch, tmp_path)
    _, uncached = _metered(_model(), batch, tmp_path, use_cache=False)
    per_doc = [n for row in DOCS for n in row]
    extra_pairs = len(DOCS) * LENGTH * (LENGTH + 1) // 2 - sum(n * (n + 1) // 2 for n in per_doc)
    cost = CostModel(spec_from_config(_config("llama")), TrainingSetup())
    # the count is linear in TokenStats: price one causal pair alone, (sum_sq + tokens) / 2 = 1, nothing else
    one_pair = TokenStats(tokens=0, sum_sq=2)
    per_pair = cost.count(one_pair).regulatory_flops
    assert cached["flops"]["regulatory"] - uncached["flops"]["regulatory"] == extra_pairs * per_pair
    assert cached["flops"]["executed"] == uncached["flops"]["executed"]  # the kernels ran L² per row either way


def test_the_note_is_said_once_over_many_steps(tmp_path, capsys) -> None:
    model, batch = _model(), _batch()
    meter = FlopsMeter(model, output_path=tmp_path / "m.json", nvml=False, log_every=1).start()
    for _ in range(3):
        model(**batch).loss.backward()
        meter.step()
    record = meter.stop()
    assert capsys.readouterr().out.count(CROSS) == 1 and record["tokens"]["sequences"] == 3 * len(DOCS)


def test_observe_without_hooks_follows_the_same_rule(tmp_path) -> None:
    model, batch = _model(), _batch()
    meter = FlopsMeter(model, output_path=tmp_path / "m.json", nvml=False, hook=False).start()
    meter.observe(batch)  # the loop passes nothing about the cache: the config's use_cache=True holds
    meter.observe({**batch, "use_cache": False})
    meter.step()
    record = meter.stop()
    assert record["tokens"]["sequences"] == len(DOCS) + sum(len(row) for row in DOCS)


def test_a_lora_model_is_read_through_its_wrapper(tmp_path) -> None:
    """Under PEFT the hooked module is the wrapper: the base model's config and checkpointing still decide."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    batch = _batch()
    model = get_peft_model(_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not attended_per_document(model, batch)
    meter, _ = _metered(model, batch, tmp_path)
    assert meter.stats.causal_pairs() == len(DOCS) * LENGTH * (LENGTH + 1) // 2
    model.base_model.model.gradient_checkpointing_enable()
    assert attended_per_document(model, batch)
    meter, _ = _metered(model, batch, tmp_path)
    assert meter.stats.causal_pairs() == sum(n * (n + 1) // 2 for row in DOCS for n in row)


def test_a_failing_decision_never_breaks_training(tmp_path, monkeypatch) -> None:
    """Whatever goes wrong deciding, the pass is counted (per document) and the record says it is a lower bound."""
    import meter.runtime.meter as runtime

    def broken(model, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime, "attends_whole_row", broken)
    model, batch = _model(), _batch()
    meter, record = _metered(model, batch, tmp_path)
    assert record["tokens"]["tokens"] == len(DOCS) * LENGTH and record["tokens"]["sequences"] == 5
    assert record["flops"]["confidence"] == "lower_bound"
    assert any("could not tell how packed rows are attended" in d for d in meter.degraded)


def _stub(impl: str, use_cache: bool = True, training: bool = False):
    return SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl, use_cache=use_cache), training=training,
                           modules=lambda: [])  # fmt: skip


def test_the_decision_per_attention_implementation() -> None:
    """What cannot run on CPU, read from transformers' source: flash attention unpacks position_ids itself,
    whatever the cache, for a batch of one row only (``_is_packed_sequence``) or given ``cu_seq_lens_*``;
    the mask builders (eager, sdpa, flex) only without a cache; anything else is left per document."""
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    one_row = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "position_ids": packed}
    two_rows = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "position_ids": one_row["position_ids"].repeat(2, 1)}
    for impl in ("flash_attention_2", "flash_attention_3"):
        assert attends_whole_row(_stub(impl), one_row) is None
        assert attends_whole_row(_stub(impl, use_cache=False), one_row) is None
        assert "flash attention" in attends_whole_row(_stub(impl, use_cache=False), two_rows)
        assert attends_whole_row(_stub(impl), {**two_rows, "cu_seq_lens_q": torch.tensor([0, 3, 8])}) is None
    for impl in ("eager", "sdpa", "flex_attention"):
        assert "use_cache=True" in attends_whole_row(_stub(impl), one_row)
        assert attends_whole_row(_stub(impl, use_cache=False), one_row) is None
        assert attends_whole_row(_stub(impl), {**one_row, "use_cache": False}) is None
        passed = {**one_row, "use_cache": False, "past_key_values": object()}
        assert "past_key_values" in attends_whole_row(_stub(impl, use_cache=False), passed)
        assert attends_whole_row(_stub(impl), {**one_row, "attention_mask": torch.ones(1, 8)}) is None
        assert attends_whole_row(_stub(impl), {"input_ids": one_row["input_ids"]}) is None
    for impl in ("paged|eager", "no-such-kernel", None):  # no mask builder: left to the implementation
        assert attends_whole_row(_stub(impl), two_rows) is None
