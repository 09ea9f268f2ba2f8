"""TokenStats: exact per-batch accounting of padding and packing."""

from __future__ import annotations

import pytest

from meter.engine.count import CostModel, TrainingSetup
from meter.engine.spec import spec_from_config
from meter.engine.tokens import TokenStats, window_pairs
from meter.errors import MeterError
from tests.reference import TINY_CONFIGS, build_model


def test_padding_left_right_and_mixed_count_the_same() -> None:
    right = TokenStats.from_batch([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = TokenStats.from_batch([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert right == left
    assert (right.tokens, right.sum_sq, right.padded_tokens, right.padded_sq) == (5, 9 + 4, 8, 2 * 16)
    assert right.causal_pairs() == 3 * 4 // 2 + 2 * 3 // 2


def test_packed_rows_split_by_position_ids() -> None:
    stats = TokenStats.from_batch(position_ids=[[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert (stats.sequences, stats.tokens, stats.sum_sq) == (3, 9, 9 + 4 + 16)
    assert (stats.padded_tokens, stats.padded_sq) == (9, 81)


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert TokenStats.from_batch(mask) == TokenStats.from_batch(mask.tolist())


def test_sums_over_batches_and_epochs() -> None:
    a = TokenStats.from_lengths([10, 7], padded_to=10, windows=[4])
    b = TokenStats.from_lengths([3], padded_to=5, windows=[4])
    total = a + b
    assert total.tokens == 20 and total.padded_tokens == 25 and total.passes == 2
    assert total.window_pairs[4] == window_pairs(10, 4) + window_pairs(7, 4) + window_pairs(3, 4)
    assert total.scaled(3).tokens == 60 and total.scaled(3).causal_pairs(4) == 3 * total.causal_pairs(4)


def test_window_pairs() -> None:
    assert window_pairs(5, 10) == 15
    assert window_pairs(5, 2) == 3 + 3 * 2  # 1, 2, 2, 2, 2
    assert sum(min(i, 3) for i in range(1, 101)) == window_pairs(100, 3)


def test_missing_window_counts_is_an_error_not_a_guess() -> None:
    with pytest.raises(MeterError, match="sliding window 4"):
        TokenStats.from_lengths([10]).causal_pairs(4)
    assert TokenStats.from_lengths([3]).causal_pairs(4) == 6  # shorter than the window: plain causal


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tokens=-1), "tokens"),
        (dict(tokens=5, padded_tokens=4), "below the real token count"),
        (dict(tokens=1.5), "tokens"),
    ],
)
def test_invalid_stats(kwargs, match) -> None:
    with pytest.raises(MeterError, match=match):
        TokenStats(**kwargs)


def test_invalid_plans() -> None:
    with pytest.raises(MeterError, match="sequence length"):
        TokenStats.uniform(10, 0)
    with pytest.raises(MeterError, match="number of sequences"):
        TokenStats.uniform(-1, 8)
    with pytest.raises(MeterError, match="epochs"):
        TokenStats.uniform(1, 8).scaled(0)


def test_packed_batch_matches_flop_counter() -> None:
    """Three sequences packed in one row (DataCollatorWithFlattening): eager runs the whole row's L²."""
    torch = pytest.importorskip("torch")
    config = TINY_CONFIGS["llama"]
    model = build_model(config, TrainingSetup())
    position_ids = torch.tensor([list(range(50)) + list(range(30)) + list(range(48))])
    ids = torch.randint(1, config["vocab_size"], (1, 128))
    from tests.reference import truth_counter

    counter = truth_counter()
    with counter:
        model(input_ids=ids, position_ids=position_ids, labels=ids).loss.backward()
    stats = TokenStats.from_batch(position_ids=position_ids)
    count = CostModel(spec_from_config(config)).count(stats)
    assert count.executed_flops == counter.get_total_flops()
    assert stats.sequences == 3 and count.regulatory_flops < count.executed_flops
