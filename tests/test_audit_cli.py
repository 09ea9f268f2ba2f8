"""`flops-meter classify` and `flops-meter audit publish|verify|show` on the embedded file store."""

from __future__ import annotations

import json
import os

import pytest

from meter.audit.file_store import FileStore
from meter.cli import main
from tests.test_audit import run_record


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def runs(tmp_path):
    paths = []
    for i, flops in enumerate((10**23, 10**23, 10**23)):  # three jobs on Llama-3-8B: 7.2e23 / 3 = 2.4e23
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({**run_record(flops, f"run-{i}"), "model": {"name": "meta-llama/Meta-Llama-3-8B"}}))
        paths.append(path)
    return paths


def test_lineage_adds_up_across_jobs(capsys, tmp_path, runs) -> None:
    store = f"file://{tmp_path / 'audit'}"
    statuses = []
    for path in runs:
        out = tmp_path / f"{path.stem}.compliance.json"
        code, _, _ = cli(
            capsys,
            "classify",
            str(path),
            "--store",
            store,
            "--lineage",
            "acme/bot",
            "--out",
            str(out),
            "--fail-on-cross",
        )
        verdict = json.loads(out.read_text())
        statuses.append((code, verdict["status"], verdict["cumulative_flops"]))
        assert verdict["threshold_rule"] == "one_third_of_known" and verdict["original"]["basis"] == "estimated"
        code, _, _ = cli(capsys, "audit", "publish", str(path), "--compliance", str(out), "--store", store)
        assert code == 0
    # SFT, then DPO, then one more job on the same released model: 42 %, 83 %, then more than one third
    assert statuses == [
        (0, "downstream_modifier", 10**23),
        (0, "approaching", 2 * 10**23),
        (1, "gpai_provider", 3 * 10**23),
    ]
    code, out, _ = cli(capsys, "audit", "verify", "--store", store)
    assert code == 0 and "3 record(s)" in out


def test_verify_names_the_altered_record(capsys, tmp_path, runs) -> None:
    store = f"file://{tmp_path / 'audit'}"
    for path in runs:
        assert cli(capsys, "audit", "publish", str(path), "--store", store, "--lineage", "L", "--json")[0] == 0
    published = sorted((tmp_path / "audit" / "records").iterdir())
    victim = published[1]
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-2] = ord(" ") if data[-2] != ord(" ") else ord("\t")
    victim.write_bytes(bytes(data))
    code, out, _ = cli(capsys, "audit", "verify", "--store", store)
    assert code == 1 and victim.stem[:12] in out and "BROKEN" in out
    code, out, _ = cli(capsys, "audit", "show", published[0].stem[:10], "--store", store)
    assert code == 0 and "lineage L" in out


def test_publish_refuses_a_different_record_for_the_same_run(capsys, tmp_path, runs) -> None:
    store = f"file://{tmp_path / 'audit'}"
    assert cli(capsys, "audit", "publish", str(runs[0]), "--store", store)[0] == 0
    changed = json.loads(runs[0].read_text())
    changed["flops"]["regulatory"] += 1
    runs[0].write_text(json.dumps(changed))
    code, _, err = cli(capsys, "audit", "publish", str(runs[0]), "--store", store)
    assert code == 2 and "append-only" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify", "missing.json"], "run record not found"),
        (["classify", "{run}", "--pretrain-flops", "nan"], "--pretrain-flops must be a finite"),
        (["audit", "verify", "--store", "ftp://nowhere"], "use file://DIR"),
        (["audit", "show", "abc", "--store", "file://{tmp}/empty"], "not found"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, runs, argv, message) -> None:
    argv = [a.replace("{run}", str(runs[0])).replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_forged_compliance_file_is_not_sealed(capsys, tmp_path) -> None:
    """compliance.json edited to say downstream_modifier for a run 16x over: the sealed verdict is recomputed from
    the record and the store, and says what the file claimed."""
    store = f"file://{tmp_path / 'audit'}"
    run = tmp_path / "run.json"
    run.write_text(json.dumps({**run_record(4 * 10**24, "run-x"), "model": {"name": "meta-llama/Meta-Llama-3-8B"}}))
    out = tmp_path / "c.json"
    cli(capsys, "classify", str(run), "--store", store, "--out", str(out))
    forged = json.loads(out.read_text())
    forged.update(status="downstream_modifier", crossed=False, cumulative_flops=10**21)
    out.write_text(json.dumps(forged))
    code, _, _ = cli(capsys, "audit", "publish", str(run), "--compliance", str(out), "--store", store, "--json")
    assert code == 0
    audit = FileStore(tmp_path / "audit")
    (entry,) = audit.entries()
    record = audit.get(entry.record_sha256)
    assert record["verdict"]["status"] == "gpai_provider" and record["verdict"]["crossed"]
    assert any("downstream_modifier" in n and "Recomputed" in n for n in record["verdict"]["notes"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["flops"].update(regulatory=1000), "end of its timeline"),
        (lambda r: r["flops"].update(executed=10), "below regulatory"),
    ],
)
def test_an_edited_record_is_refused(capsys, tmp_path, edit, message) -> None:
    run = {**run_record(10**23, "run-e"), "model": {"name": "meta-llama/Meta-Llama-3-8B"}}
    run["timeline"] = [{"step": 1, "regulatory_flops": 10**23 // 2}, {"step": 2, "regulatory_flops": 10**23}]
    edit(run)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    code, _, err = cli(capsys, "audit", "publish", str(path), "--store", f"file://{tmp_path / 'audit'}")
    assert code == 2 and message in err and "inconsistent" in err and len(err.strip().splitlines()) == 1


def test_classify_counts_the_default_store_and_lineage(capsys, tmp_path, monkeypatch, runs) -> None:
    """No --store, no --lineage: the lineage's earlier runs in the default store ($FLOPS_METER_STORE) count."""
    monkeypatch.setenv("FLOPS_METER_STORE", f"file://{tmp_path / 'audit'}")
    out = tmp_path / "c.json"
    code, _, _ = cli(capsys, "classify", str(runs[0]), "--out", str(out))
    assert code == 0 and json.loads(out.read_text())["prior_lineage_flops"] == 0
    assert not (tmp_path / "audit").exists()  # reading a store that is not there does not create it
    assert cli(capsys, "audit", "publish", str(runs[0]), "--compliance", str(out))[0] == 0
    code, _, _ = cli(capsys, "classify", str(runs[1]), "--out", str(out))
    assert json.loads(out.read_text())["prior_lineage_flops"] == 10**23  # the first job, same base-model lineage


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_concurrent_publishers_seal_what_their_total_gives(capsys, tmp_path, request, backend) -> None:
    """Four jobs of one lineage, each classified before any was published (all "downstream"), then published by
    four processes at once: each sealed verdict is the one the lineage total at its append gives."""
    import subprocess
    import sys

    store = f"file://{tmp_path / 'audit'}" if backend == "file" else request.getfixturevalue("s3_store_uri")
    jobs = []
    for i in range(4):  # 1e23 each on Llama-3-8B: threshold 2.4e23
        run = tmp_path / f"run{i}.json"
        run.write_text(json.dumps({**run_record(10**23, f"job-{i}"), "model": {"name": "meta-llama/Meta-Llama-3-8B"}}))
        out = tmp_path / f"c{i}.json"
        assert cli(capsys, "classify", str(run), "--store", store, "--out", str(out))[0] == 0
        assert json.loads(out.read_text())["status"] == "downstream_modifier"
        jobs.append((run, out))
    code = "import sys; from meter.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "audit", "publish", str(r), "--compliance", str(c), "--store", store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r, c in jobs
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0], [p.stderr.read() for p in procs]
    from meter.audit.store import open_store

    audit = open_store(store)
    chain = sorted(audit.entries("meta-llama/Meta-Llama-3-8B"), key=lambda e: e.sequence)
    verdicts = [audit.get(e.record_sha256)["verdict"] for e in chain]
    assert [v["cumulative_flops"] for v in verdicts] == [10**23, 2 * 10**23, 3 * 10**23, 4 * 10**23]
    assert [v["status"] for v in verdicts] == ["downstream_modifier", "approaching", "gpai_provider", "gpai_provider"]
    assert all(any("Recomputed at publication" in n for n in v["notes"]) for v in verdicts[1:])


def test_verify_refuses_a_missing_store_and_an_empty_one(capsys, tmp_path) -> None:
    """A typo in --store used to create an empty store and report it intact."""
    typo = tmp_path / "audti"
    code, out, err = cli(capsys, "audit", "verify", "--store", f"file://{typo}")
    assert code == 2 and "no audit store at" in err and err.count("\n") == 1 and not typo.exists()
    FileStore(tmp_path / "empty")
    code, out, _ = cli(capsys, "audit", "verify", "--store", f"file://{tmp_path / 'empty'}")
    assert code == 1 and "holds no record" in out


def test_the_cli_flags_what_needs_a_decision_and_heads_anchor_the_chain(capsys, tmp_path, runs) -> None:
    store = f"file://{tmp_path / 'audit'}"
    for path in runs:
        assert cli(capsys, "audit", "publish", str(path), "--store", store, "--lineage", "acme/bot")[0] == 0
    flagged = sorted(p.stem for p in (tmp_path / "audit" / "flagged").glob("*.json"))
    assert len(flagged) == 2  # approaching, then gpai_provider: both in the approvals queue
    code, heads, _ = cli(capsys, "audit", "heads", "--store", store)
    assert code == 0 and json.loads(heads)["heads"]["acme/bot"]["sequence"] == 3
    (tmp_path / "heads.json").write_text(heads)
    assert cli(capsys, "audit", "verify", "--store", store, "--heads", str(tmp_path / "heads.json"))[0] == 0
    # an insider cuts the last record consistently (file, ledger row, flagged item): only the heads show it
    import sqlite3

    with sqlite3.connect(tmp_path / "audit" / "ledger.sqlite") as db:
        (sha,) = db.execute("SELECT record_sha256 FROM ledger WHERE sequence = 3").fetchone()
        db.execute("DELETE FROM ledger WHERE sequence = 3")
    (tmp_path / "audit" / "records" / f"{sha}.json").unlink()
    (tmp_path / "audit" / "flagged" / f"{sha[:12]}.json").unlink()
    assert cli(capsys, "audit", "verify", "--store", store)[0] == 0
    code, out, _ = cli(capsys, "audit", "verify", "--store", store, "--heads", str(tmp_path / "heads.json"))
    assert code == 1 and "acme/bot#3" in out and "cut or rewritten" in out


def test_show_and_report_refuse_an_altered_record(capsys, tmp_path, runs) -> None:
    store = f"file://{tmp_path / 'audit'}"
    assert cli(capsys, "audit", "publish", str(runs[0]), "--store", store)[0] == 0
    (path,) = (tmp_path / "audit" / "records").glob("*.json")
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"100000000000000000000000", b"100000000000000000000001"))
    for argv in (("audit", "show", path.stem[:8]), ("report", path.stem[:8], "--format", "md")):
        code, _, err = cli(capsys, *argv, "--store", store)
        assert code == 2 and "does not match its SHA-256: it was altered" in err, argv
    code, _, err = cli(capsys, "report", str(path), "--format", "md", "--out", str(tmp_path / "r.md"))
    assert code == 2 and "altered" in err and not (tmp_path / "r.md").exists()


def test_estimate_adds_up_with_the_lineage_recorded_jobs(capsys, tmp_path, monkeypatch, runs) -> None:
    """One planner rule: `estimate` counts the plan with the lineage's recorded jobs, as classify and EstimateFLOPs
    do (default lineage: the base model; default store: $FLOPS_METER_STORE): two 1e23 jobs recorded on Llama-3-8B
    take exactly their compute off the plan's headroom; another lineage is not affected."""
    monkeypatch.setenv("FLOPS_METER_STORE", f"file://{tmp_path / 'audit'}")
    plan = ["estimate", "--model", "meta-llama/Meta-Llama-3-8B", "--tokens", "2e9", "--seq-len", "4096", "--json"]
    code, out, _ = cli(capsys, *plan)
    alone = json.loads(out)
    assert code == 0 and alone["prior_lineage_flops"] == 0 and alone["lineage"] == "meta-llama/Meta-Llama-3-8B"
    assert not (tmp_path / "audit").exists()  # planning reads; it creates no store
    for path in runs[:2]:
        out_path = tmp_path / f"{path.stem}.c.json"
        assert cli(capsys, "classify", str(path), "--out", str(out_path))[0] == 0
        assert cli(capsys, "audit", "publish", str(path), "--compliance", str(out_path))[0] == 0
    code, out, _ = cli(capsys, *plan)
    after = json.loads(out)
    assert after["prior_lineage_flops"] == 2 * 10**23  # the two records' regulatory FLOPs, from their files
    assert after["lineage_flops"] == 2 * 10**23 + alone["regulatory_flops"]
    assert after["headroom_flops"] == alone["headroom_flops"] - 2 * 10**23
    code, out, _ = cli(capsys, *plan, "--lineage", "another/bot")
    assert json.loads(out)["prior_lineage_flops"] == 0
