"""One helper per utility: booleans, timestamps, atomic writes, dataset identity, AWS errors."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pytest

from meter.booleans import parse_bool
from meter.digests import dataset_identity, tree_sha256
from meter.errors import MeterError
from meter.jsonfile import write_atomic
from meter.timestamps import utc_timestamp

# -- booleans ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["true", "TRUE", " 1 ", "yes", "On", True])
def test_true_words(text) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "OFF", False])
def test_false_words(text) -> None:
    assert parse_bool(text) is False


def test_empty_is_the_default_and_an_error_without_one() -> None:
    assert parse_bool("", default=True) is True and parse_bool(None, default=False) is False
    with pytest.raises(MeterError, match="FLOPS_METER_NVML: expected true or false"):
        parse_bool(" ", what="FLOPS_METER_NVML")


def test_other_words_are_refused_and_strict_takes_only_true_and_false() -> None:
    with pytest.raises(ValueError, match="got 'maybe'"):  # MeterError is a ValueError: parsers catch it alike
        parse_bool("maybe", default=False)
    assert parse_bool("True", strict=True) is True
    with pytest.raises(MeterError, match="expected true or false, got '1'"):
        parse_bool("1", strict=True)


def test_a_bad_flops_meter_nvml_is_an_error_where_options_are_checked_and_the_default_once_training(
    monkeypatch, capsys
) -> None:
    from meter.runtime.log import ensure_log_handler
    from meter.runtime.options import check_options, nvml_option

    monkeypatch.setenv("FLOPS_METER_NVML", "maybe")
    with pytest.raises(MeterError, match="FLOPS_METER_NVML: expected true or false"):
        check_options()  # FlopsMeterCallback(...) and FlopsMeter(...): before any training starts
    check_options(nvml=False)  # given: the variable is not read
    ensure_log_handler()  # the meter's lines go to stdout
    assert nvml_option(None, fallback=True) is True  # the callback's on_train_begin: never a failure
    assert "FLOPS_METER_NVML: expected true or false" in capsys.readouterr().out
    monkeypatch.setenv("FLOPS_METER_NVML", " Off ")
    assert nvml_option(None) is False and nvml_option(True) is True


# -- timestamps -------------------------------------------------------------------------------------------------


def test_one_spelling_of_time() -> None:
    when = dt.datetime(2026, 11, 23, 9, 30, 0, 123456, tzinfo=dt.timezone.utc)
    assert utc_timestamp(when) == "2026-11-23T09:30:00Z"
    assert utc_timestamp(when, fraction=True) == "2026-11-23T09:30:00.123456Z"
    assert utc_timestamp(when.timestamp()) == "2026-11-23T09:30:00Z"  # POSIX seconds (time.time())
    paris = when.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert utc_timestamp(paris) == "2026-11-23T09:30:00Z"  # converted, never a local time with a Z
    assert utc_timestamp().endswith("Z") and len(utc_timestamp()) == 20


# -- atomic writes ----------------------------------------------------------------------------------------------


def test_an_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomic(path, json.dumps({"a": 1}))
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_atomic_write_writes_into_a_device_and_cleans_up_after_a_failure(tmp_path) -> None:
    write_atomic(os.devnull, "ignored")  # not renamed over
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "dir.json", "{}")
    (tmp_path / "target").mkdir()
    with pytest.raises(IsADirectoryError):  # a directory is not a regular file: written to, which fails
        write_atomic(tmp_path / "target", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# -- dataset identity -------------------------------------------------------------------------------------------


def test_one_file_is_the_sha256_of_its_bytes(tmp_path) -> None:
    data = b'{"text": "hello"}\n' * 1000
    (tmp_path / "train.jsonl").write_bytes(data)
    expected = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # what sha256sum prints
    assert dataset_identity(tmp_path / "train.jsonl") == expected
    # the pipeline's processing input of one S3 object: a directory holding it, hashed alike
    assert dataset_identity(tmp_path) == expected


def test_a_directory_of_files_is_its_tree_digest(tmp_path) -> None:
    files = {"a.jsonl": b"1\n", "part/b.jsonl": b"22\n", "a-b.jsonl": b""}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    # the documented scheme, spelled out: paths in code-point order, path NUL digest
    tree = hashlib.sha256()
    for name in sorted(files):
        tree.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    identity = dataset_identity(tmp_path)
    assert identity == {"size_bytes": 5, "sha256": tree.hexdigest()}
    assert tree_sha256({n: hashlib.sha256(d).digest() for n, d in files.items()}) == identity["sha256"]
    (tmp_path / "part" / "b.jsonl").rename(tmp_path / "part" / "c.jsonl")  # a rename changes it
    assert dataset_identity(tmp_path)["sha256"] != identity["sha256"]


def test_no_data_and_bad_paths(tmp_path) -> None:
    assert dataset_identity(tmp_path) == {}  # an empty directory: nothing to identify
    with pytest.raises(MeterError, match="dataset file not found"):
        dataset_identity(tmp_path / "nope.jsonl", what="dataset file")
    with pytest.raises(MeterError, match="is a directory: give the file"):
        dataset_identity(tmp_path, what="dataset file", directories=False)


def test_the_cli_records_the_files_sha256(tmp_path, capsys) -> None:
    from meter.audit.store import open_store
    from meter.cli import main
    from tests.test_audit import run_record

    data = b'{"text": "hi"}\n'
    (tmp_path / "train.jsonl").write_bytes(data)
    run = {**run_record(10**20), "model": {"name": "meta-llama/Meta-Llama-3-8B"}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    store = f"file://{tmp_path / 'audit'}"
    argv = ["audit", "publish", str(tmp_path / "run.json")]
    assert main([*argv, "--dataset-file", str(tmp_path / "train.jsonl"), "--store", store]) == 0
    (entry,) = open_store(store).entries()
    record = open_store(store).get(entry.record_sha256)
    assert record["dataset"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["dataset"]["size_bytes"] == len(data)


def test_the_cli_and_the_pipeline_hash_one_file_alike(tmp_path, monkeypatch) -> None:
    pytest.importorskip("steps.contract")
    from steps.publish_audit import dataset_identity as pipeline_identity

    data = b'{"text": "hi"}\n'
    inputs = tmp_path / "processing" / "input" / "dataset"
    inputs.mkdir(parents=True)
    (inputs / "train.jsonl").write_bytes(data)
    monkeypatch.setenv("OPT_ML", str(tmp_path))
    cli = dataset_identity(inputs / "train.jsonl", what="dataset file", directories=False)
    assert pipeline_identity("s3://data/train.jsonl") == {"uri": "s3://data/train.jsonl", **cli}


# -- AWS errors -------------------------------------------------------------------------------------------------


def test_aws_errors_are_one_line_with_the_fix() -> None:
    pytest.importorskip("botocore")
    from botocore.exceptions import ClientError, EndpointConnectionError, NoRegionError

    from meter.audit.aws import aws_error

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "it  went\nwrong"}}, "PutObject")

    assert str(aws_error(client_error("NoSuchBucket"), "audit bucket b")) == (
        "audit bucket b: PutObject: NoSuchBucket: it went wrong (the bucket does not exist: check its name and the "
        "region)"
    )
    assert aws_error(client_error("NoSuchKey"), "audit bucket b") is None  # the caller's own code
    assert str(aws_error(client_error("NoSuchKey"), "AWS", any_code=True)) == "AWS: PutObject: NoSuchKey: it went wrong"
    assert "no AWS region: give --region" in str(aws_error(NoRegionError(), "registry", "give --region"))
    unreachable = aws_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "registry")
    assert str(unreachable).startswith("registry: unreachable: cannot connect to http://127.0.0.1:9")
    assert aws_error(ValueError("not AWS"), "AWS", any_code=True) is None
