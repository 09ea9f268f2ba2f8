"""Every tampering attempt of tests/tamper.py is detected by `audit verify`, or, for the local store, by
`audit verify --heads` against an export taken before (the README's mitigation); the table is quoted in the README."""

from __future__ import annotations

import pytest

from tests import tamper

# what a local store cannot show by itself (an insider rewrites files and ledger consistently); --heads shows it
LOCAL_NEEDS_HEADS = {
    "delete the last record, its row and its flagged item",
    "replace the last record by a re-hashed forgery",
    "flip a decision (re-hashed)",
    "delete a decision (the item is pending again)",
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return {o.attack: o for o in tamper.run_local(tmp_path_factory.mktemp("tamper"))}


@pytest.mark.parametrize("attack", list(tamper.LOCAL))
def test_local_attack_is_detected(local, attack) -> None:
    outcome = local[attack]
    assert outcome.with_heads != "NOT DETECTED", outcome
    if attack in LOCAL_NEEDS_HEADS:
        assert outcome.detected == "NOT DETECTED", f"now detected without heads: update the README ({outcome})"
    else:
        assert outcome.detected != "NOT DETECTED", outcome


@pytest.mark.parametrize("attack", list(tamper.S3))
def test_s3_attack_is_detected_without_heads(request, attack) -> None:
    """On S3 the locked objects themselves are the anchor: nothing the roles can do goes unseen."""
    pytest.importorskip("moto")
    outcomes = tamper.run_s3(lambda: request.getfixturevalue("s3_store_uri"), only=attack)
    print(f"| s3 | {attack} | {outcomes[0].detected} |")
    assert outcomes[0].detected != "NOT DETECTED", outcomes[0]


def test_the_table_names_every_attack(local) -> None:
    text = tamper.table(list(local.values()))
    assert text.count("\n") == len(tamper.LOCAL) + 1 and "NOT DETECTED" in text
