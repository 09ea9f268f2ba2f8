"""Zero tracebacks: malformed and hostile input to every command gets exit status 2 and one line naming the input.

Each case is what a user study fed the CLI: non-UTF-8 files and arguments, numbers that overflow or make no sense,
names too long for the file system, invalid regexes, JSON of the wrong shape in every file a command reads, an
``--out`` that is a directory, a damaged ledger, AWS without a region, a missing bucket or table, an endpoint that
never answers. None of them may reach the last-resort handler (``internal error``, exit 3): each class gets its
own message. Exit status 1 stays reserved for a crossed threshold and a broken audit store.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meter.cli import main
from tests.reference import TINY_CONFIGS
from tests.test_audit import run_record

LONG = "n" * 300  # one path component over NAME_MAX (255): ENAMETOOLONG
NOT_UTF8_ARG = "caf\udce9"  # how Python hands over a Latin-1 "café" from argv (surrogateescape)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *names: str) -> str:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("flops-meter: error: "), err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


class World:
    """What the cases name, under one temporary directory. An argument ``@KEY`` (also inside a longer one, as in
    ``file://@long``) is a file of the case's ``files`` or one of: ``@tmp`` the directory, ``@long`` a path with a
    component over NAME_MAX, ``@run`` a valid run record, ``@store`` a file store holding one published record
    (with a flagged item), ``@sha`` that record's hash prefix, ``@damaged`` the same after its file was cut in half,
    ``@corrupt`` a store whose ledger file is garbage."""

    def __init__(self, tmp: Path, capsys):
        self.tmp, self.capsys = tmp, capsys
        self._store: str | None = None

    def write(self, name: str, content: bytes | str | object) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content))
        return path

    def resolve(self, text: str, files: dict[str, object]) -> str:
        return re.sub(r"@([\w.-]+)", lambda m: self._value(m.group(1), files), text)

    def _value(self, key: str, files: dict[str, object]) -> str:
        if key in files:
            return str(self.write(key, files[key]))
        if key == "tmp":
            return str(self.tmp)
        if key == "long":
            return str(self.tmp / LONG)
        if key == "run":
            return str(self.write("run.json", run_record(2 * 10**23, "run-1")))
        if key == "store":
            return self.store()
        if key == "sha":
            return self.record().stem[:12]
        if key == "damaged":
            record = self.record()
            os.chmod(record, 0o644)
            record.write_bytes(record.read_bytes()[:100])
            return record.stem[:12]
        if key == "corrupt":
            self.write("corrupt/ledger.sqlite", b"this is not an SQLite database\0" * 64)
            return f"file://{self.tmp / 'corrupt'}"
        raise KeyError(key)

    def store(self) -> str:
        if self._store is None:
            self._store = f"file://{self.tmp / 'audit'}"
            argv = ["audit", "publish", self._value("run", {}), "--store", self._store, "--lineage", "L"]
            code, _, err = cli(self.capsys, *argv)
            assert code == 0, err
        return self._store

    def record(self) -> Path:
        self.store()
        return next((self.tmp / "audit" / "records").glob("*.json"))


def case(case_id: str, argv: list[str], *names: str, files: dict[str, object] | None = None):
    """One bad input: the command line, what its one line must name, and the files it reads."""
    return pytest.param(argv, names, files or {}, id=case_id)


def cfg(family: str = "llama", **fields) -> dict:
    return {**TINY_CONFIGS[family], **fields}


def edited_run(**fields) -> dict:
    return {**run_record(10**22, "run-2"), **fields}


EST = ["estimate", "--model", "tiny-llama", "--sequences", "4", "--seq-len", "8"]
PLAN = ["--sequences", "4", "--seq-len", "8"]
LLAMA = json.dumps(TINY_CONFIGS["llama"])
HEADS = {"record_type": "flops_meter.heads"}
VERIFY = ["audit", "verify", "--store", "@store", "--heads", "@h.json"]
PUBLISH = ["audit", "publish", "@run", "--compliance", "@c.json"]
DEFINITION = ["pipeline", "definition", "--config", "@p.json"]
LOCAL = ["pipeline", "run", "--local", "--home", "@tmp/home", "--definition", "@d.json"]
STATUS = ["pipeline", "status", "@tmp/runs/x"]
EXECUTION = "runs/x/execution.json"

CASES = [
    # -- numbers: overflow, non-finite, negative, absurd ------------------------------------------------------------
    *[
        case(f"estimate {option} {value}", [*EST, option, value], option)
        for option in ("--sequences", "--seq-len", "--epochs", "--lora-r", "--generations")
        for value in ("1e400", "inf", "nan", "-3", "1e300")
    ],
    case(
        "estimate --tokens 1e400",
        ["estimate", "--model", "tiny-llama", "--tokens", "1e400", "--seq-len", "8"],
        "--tokens",
    ),
    case("estimate --tokens -1", ["estimate", "--model", "tiny-llama", "--tokens=-1", "--seq-len", "8"], "--tokens"),
    *[
        case(f"estimate --pretrain-flops {v}", [*EST, f"--pretrain-flops={v}"], "--pretrain-flops")
        for v in ("1e400", "inf", "nan", "-1e22", "lots")
    ],
    *[
        case(f"classify --approaching {v}", ["classify", "@run", f"--approaching={v}"], "--approaching")
        for v in ("nan", "inf", "-0.5", "1.5", "much")
    ],
    case("classify --pretrain-flops 1e400", ["classify", "@run", "--pretrain-flops", "1e400"], "--pretrain-flops"),
    case(
        "pipeline start --param InstanceCount=1e400",
        ["pipeline", "start", "--param", "InstanceCount=1e400"],
        "InstanceCount",
    ),
    case(
        "pipeline start --param ApproachingFraction=nan",
        ["pipeline", "start", "--param", "ApproachingFraction=nan"],
        "ApproachingFraction",
    ),
    case(
        "pipeline start --param TrainingMethod=sgd",
        ["pipeline", "start", "--param", "TrainingMethod=sgd"],
        "TrainingMethod",
    ),
    # -- invalid regexes --------------------------------------------------------------------------------------------
    case("estimate --trainable (", [*EST, "--method", "freeze", "--trainable", "("], "trainable", "'('"),
    case(
        "estimate --trainable huge repeat", [*EST, "--method", "freeze", "--trainable", "a{1,9999999999}"], "trainable"
    ),
    case("estimate --lora-targets (", [*EST, "--method", "lora", "--lora-targets", "("], "--lora-targets"),
    case("estimate --lora-targets [", [*EST, "--method", "lora", "--lora-targets", "q_proj|["], "--lora-targets"),
    # -- model configs: encoding, syntax, numbers, shape, values ----------------------------------------------------
    case(
        "config not UTF-8",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "UTF-8",
        files={"c.json": b'{"model_type": "llama\xe9"}'},
    ),
    case(
        "config truncated",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "not valid JSON",
        files={"c.json": '{"model_type": "lla'},
    ),
    case("config a list", ["estimate", "--model", "@c.json", *PLAN], "c.json", "object", files={"c.json": [1, 2]}),
    case(
        "config nested too deep",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "deep",
        files={"c.json": "[" * 200_000},
    ),
    case(
        "config 5000-digit number",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        files={"c.json": '{"hidden_size": 1' + "0" * 5000 + "}"},
    ),
    case(
        "config hidden_size 1e400",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "1e400",
        files={"c.json": LLAMA.replace('"hidden_size": 64', '"hidden_size": 1e400')},
    ),
    case(
        "config NaN",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "NaN",
        files={"c.json": LLAMA.replace('"hidden_size": 64', '"hidden_size": NaN')},
    ),
    case(
        "config lone surrogate",
        ["estimate", "--model", "@c.json", *PLAN],
        "c.json",
        "surrogate",
        files={"c.json": json.dumps(cfg(_name_or_path="\udce9"))},
    ),
    case(
        "config model_type a list",
        ["estimate", "--model", "@c.json", *PLAN],
        "model_type",
        files={"c.json": cfg(model_type=["llama"])},
    ),
    *[
        case(
            f"config {key}={value!r}",
            ["estimate", "--model", "@c.json", *PLAN],
            key,
            files={"c.json": cfg(family, **{key: value}, **extra)},
        )
        for family, key, value, extra in [
            ("mistral", "sliding_window", -4096, {}),
            ("mistral", "sliding_window", 0, {}),
            ("mistral", "sliding_window", 1.5, {}),
            ("mistral", "sliding_window", "big", {}),
            ("mistral", "sliding_window", True, {}),
            ("qwen2", "sliding_window", -8, {"use_sliding_window": True}),
            ("qwen2", "max_window_layers", "x", {"use_sliding_window": True, "sliding_window": 8}),
            ("llama", "num_attention_heads", 0, {}),
            ("llama", "num_key_value_heads", -2, {}),
            ("llama", "head_dim", 0, {}),
            ("llama", "hidden_size", -64, {}),
            ("llama", "intermediate_size", "128", {}),
            ("llama", "vocab_size", True, {}),
            ("llama", "layer_types", 5, {}),
            ("llama", "layer_types", ["full_attention", 3, None, "x"], {}),
            ("llama", "attention_dropout", "high", {}),
            ("llama", "attention_dropout", 2.0, {}),
            ("qwen2_moe", "mlp_only_layers", "abc", {}),
            ("qwen2_moe", "mlp_only_layers", [-1], {}),
            ("qwen2_moe", "shared_expert_intermediate_size", -5, {}),
            ("mixtral", "num_experts_per_tok", 9, {}),
            ("gpt2", "n_head", 0, {}),
        ]
    ],
    case("--model name too long", ["estimate", "--model", "@long/config.json", *PLAN], "--model", "too long"),
    case("--model a directory without config", ["estimate", "--model", "@tmp", *PLAN], "config.json"),
    # -- non-UTF-8 arguments (in-process: what Python makes of the bytes) -------------------------------------------
    case("argv --model", ["estimate", "--model", NOT_UTF8_ARG, *PLAN], "--model", "UTF-8"),
    case("argv --git-commit", ["audit", "publish", "@run", "--git-commit", NOT_UTF8_ARG], "--git-commit", "UTF-8"),
    case(
        "argv --dataset-uri=", ["audit", "publish", "@run", f"--dataset-uri={NOT_UTF8_ARG}"], "--dataset-uri", "UTF-8"
    ),
    case("argv run path", ["classify", NOT_UTF8_ARG], "argument 2", "UTF-8"),
    case(
        "argv --reason",
        ["approvals", "approve", "abcd", "--approver", "me", "--reason", NOT_UTF8_ARG],
        "--reason",
        "UTF-8",
    ),
    # -- run records (classify, publish) ----------------------------------------------------------------------------
    case("run not UTF-8", ["classify", "@r.json"], "r.json", "UTF-8", files={"r.json": b'{"run_id": "\xff"}'}),
    case("run truncated", ["classify", "@r.json"], "r.json", "JSON", files={"r.json": json.dumps(run_record(1))[:50]}),
    case("run a list", ["classify", "@r.json"], "r.json", "object", files={"r.json": [run_record(1)]}),
    case("run missing", ["classify", "@tmp/nope.json"], "nope.json", "not found"),
    case("run a directory", ["classify", "@tmp"], "run record", "directory"),
    case("run name too long", ["classify", "@long"], "run record", "too long"),
    case("run flops a list", ["classify", "@r.json"], "r.json", "flops", files={"r.json": edited_run(flops=[1])}),
    case("run model a string", ["classify", "@r.json"], "r.json", "model", files={"r.json": edited_run(model="x")}),
    case(
        "run regulatory a string",
        ["classify", "@r.json"],
        "r.json",
        "flops.regulatory",
        files={"r.json": edited_run(flops={"regulatory": "1e23", "executed": 1})},
    ),
    case(
        "run regulatory negative",
        ["classify", "@r.json"],
        "r.json",
        "flops.regulatory",
        files={"r.json": edited_run(flops={"regulatory": -5, "executed": 1})},
    ),
    case(
        "run regulatory 1e400",
        ["classify", "@r.json"],
        "r.json",
        "1e400",
        files={"r.json": json.dumps(run_record(1)).replace('"regulatory": 1', '"regulatory": 1e400')},
    ),
    case("run run_id a number", ["classify", "@r.json"], "r.json", "run_id", files={"r.json": edited_run(run_id=5)}),
    case(
        "run forecast a list",
        ["classify", "@r.json"],
        "r.json",
        "forecast",
        files={"r.json": edited_run(status="running", forecast=[1])},
    ),
    case(
        "run per_token a string",
        ["classify", "@r.json"],
        "r.json",
        "flops.per_token",
        files={"r.json": edited_run(flops={"regulatory": 1, "executed": 1, "per_token": "x"})},
    ),
    case(
        "run parts a list of numbers",
        ["classify", "@r.json"],
        "r.json",
        "flops.parts.training",
        files={"r.json": edited_run(flops={"regulatory": 1, "executed": 1, "parts": {"training": 1}})},
    ),
    case(
        "run timeline of strings",
        ["classify", "@r.json"],
        "r.json",
        "timeline[0]",
        files={"r.json": edited_run(timeline=["x"])},
    ),
    case("publish run a list", ["audit", "publish", "@r.json", "--store", "@store"], "r.json", files={"r.json": []}),
    # -- --out ------------------------------------------------------------------------------------------------------
    case("classify --out a directory", ["classify", "@run", "--out", "@tmp"], "--out", "@tmp", "directory"),
    case("classify --out name too long", ["classify", "@run", "--out", "@long"], "--out", "too long"),
    case(
        "classify --out in a missing directory",
        ["classify", "@run", "--out", "@tmp/no/c.json"],
        "--out",
        "@tmp/no/c.json",
    ),
    case("report --out a directory", ["report", "@sha", "--store", "@store", "--out", "@tmp"], "@tmp", "directory"),
    case("pipeline definition --out a directory", ["pipeline", "definition", "--out", "@tmp"], "--out", "@tmp"),
    # -- compliance files (publish --compliance) --------------------------------------------------------------------
    case("compliance a list", PUBLISH, "c.json", "object", files={"c.json": [1]}),
    case("compliance not UTF-8", PUBLISH, "c.json", "UTF-8", files={"c.json": b'{"lineage": "\xfe"}'}),
    case("compliance original a list", PUBLISH, "c.json", "original", files={"c.json": {"original": []}}),
    case(
        "compliance original without flops",
        PUBLISH,
        "c.json",
        "original.flops",
        files={"c.json": {"original": {"basis": "user"}}},
    ),
    case(
        "compliance fraction a string",
        PUBLISH,
        "c.json",
        "approaching_fraction",
        files={"c.json": {"approaching_fraction": "x"}},
    ),
    case("compliance fraction nan", PUBLISH, "c.json", "NaN", files={"c.json": '{"approaching_fraction": NaN}'}),
    case("compliance lineage a number", PUBLISH, "c.json", "lineage", files={"c.json": {"lineage": 5}}),
    case("publish --dataset-file a directory", ["audit", "publish", "@run", "--dataset-file", "@tmp"], "dataset file"),
    case(
        "publish --dataset-file name too long",
        ["audit", "publish", "@run", "--dataset-file", "@long"],
        "dataset file",
        "too long",
    ),
    case(
        "publish --parent not a hash",
        ["audit", "publish", "@r.json", "--store", "@store", "--parent", "zz"],
        "parent",
        files={"r.json": edited_run()},
    ),
    # -- exported heads (verify --heads) ----------------------------------------------------------------------------
    case("heads a list", VERIFY, "h.json", "object", files={"h.json": []}),
    case("heads not UTF-8", VERIFY, "h.json", "UTF-8", files={"h.json": b"\x80\x81"}),
    case("heads truncated", VERIFY, "h.json", "JSON", files={"h.json": '{"record_type": "flops_meter.heads", "he'}),
    case("heads of the wrong type", VERIFY, "h.json", "heads", files={"h.json": {**HEADS, "heads": []}}),
    case("heads entry a number", VERIFY, "h.json", "heads.L", files={"h.json": {**HEADS, "heads": {"L": 5}}}),
    case(
        "heads sequence a string",
        VERIFY,
        "h.json",
        "sequence",
        files={"h.json": {**HEADS, "heads": {"L": {"sequence": "1", "record_sha256": "ab"}}}},
    ),
    case(
        "heads decisions a list",
        VERIFY,
        "h.json",
        "decisions",
        files={"h.json": {**HEADS, "heads": {}, "decisions": [1]}},
    ),
    # -- damaged stores ---------------------------------------------------------------------------------------------
    *[
        case(f"corrupt ledger: {' '.join(argv[:2])}", [*argv, "--store", "@corrupt"], "ledger.sqlite")
        for argv in (
            ["audit", "verify"],
            ["audit", "heads"],
            ["audit", "show", "abcd"],
            ["audit", "publish", "@run"],
            ["classify", "@run"],
            ["report", "abcd"],
            ["approvals", "list"],
            ["approvals", "show", "abcd"],
        )
    ],
    case(
        "ledger a directory",
        ["audit", "publish", "@run", "--store", "file://@tmp/d"],
        "ledger.sqlite",
        files={"d/ledger.sqlite/x": ""},
    ),
    case("store name too long", ["audit", "verify", "--store", "file://@long"], "audit store", "too long"),
    case("show truncated record", ["audit", "show", "@damaged", "--store", "@store"], "records/", "truncated"),
    case("report truncated record", ["report", "@damaged", "--store", "@store"], "records/", "truncated"),
    case(
        "report record file truncated",
        ["report", "@rec.json"],
        "rec.json",
        "JSON",
        files={"rec.json": '{"record_type": "flops_meter.audit", "ru'},
    ),
    case("report record file not UTF-8", ["report", "@rec.json"], "rec.json", "UTF-8", files={"rec.json": b"\xff"}),
    case(
        "flagged item without id",
        ["approvals", "list", "--store", "@store"],
        "flagged item",
        "id",
        files={"audit/flagged/ffff.json": {"verdict": "x"}},
    ),
    case(
        "flagged item truncated",
        ["approvals", "list", "--store", "@store"],
        "ffff.json",
        "truncated",
        files={"audit/flagged/ffff.json": '{"id": '},
    ),
    case(
        "flagged item blocked a string",
        ["approvals", "list", "--store", "@store"],
        "blocked",
        files={
            "audit/flagged/ffff.json": {
                "id": "ffff",
                "record_sha256": "ff",
                "record_uri": "u",
                "verdict": "v",
                "blocked": "no",
                "lineage": "L",
                "base_model": "b",
            }
        },
    ),
    case("approvals show bad id", ["approvals", "show", "((", "--store", "@store"], "'(('"),
    # -- pipeline config, definition, execution ---------------------------------------------------------------------
    case("pipeline config not UTF-8", DEFINITION, "p.json", "UTF-8", files={"p.json": b"bucket: \xff"}),
    case("pipeline config a list", DEFINITION, "p.json", "mapping", files={"p.json": "- 1\n- 2\n"}),
    case("pipeline config not YAML", DEFINITION, "p.json", "YAML", files={"p.json": "a: [\n"}),
    case(
        "pipeline config name too long", ["pipeline", "definition", "--config", "@long"], "pipeline config", "too long"
    ),
    *[
        case(f"pipeline config {key}={value!r}", DEFINITION, key, files={"p.json": {key: value}})
        for key, value in [
            ("audit_store_uri", "https://example.com/audit"),
            ("audit_store_uri", "s3://bucket/records"),
            ("audit_store_uri", "s3://bucket/records?table=t&retention_days=-1"),
            ("audit_store_uri", "file://"),
            ("audit_store_uri", ""),
            ("training_image", "not an image"),
            ("training_image", "1.dkr.ecr.{zone}.amazonaws.com/x:1"),
            ("inference_image", "123.dkr.ecr.us-east-1.amazonaws.com/x:tag with space"),
            ("processing_image", "http://registry/x:1"),
            ("training_volume_gb", 0),
            ("processing_volume_gb", -30),
            ("training_volume_gb", 100_000),
            ("max_runtime_seconds", 10**9),
            ("max_runtime_seconds", 1.5),
            ("max_wait_seconds", -1),
            ("region", "Mars"),
            ("bucket", "Not_A_Bucket"),
            ("pipeline_name", "has space"),
            ("role_arn", "my-role"),
        ]
    ],
    case(
        "pipeline run --store not a store",
        ["pipeline", "run", "--local", "--home", "@tmp/home", "--store", "ftp://x/y"],
        "ftp://x/y",
    ),
    case("pipeline run definition a list", LOCAL, "d.json", "object", files={"d.json": []}),
    case("pipeline run definition not UTF-8", LOCAL, "d.json", "UTF-8", files={"d.json": b"\xff"}),
    case("pipeline run definition Steps a string", LOCAL, "d.json", "Steps", files={"d.json": {"Steps": "x"}}),
    case(
        "pipeline run definition step without a name",
        LOCAL,
        "d.json",
        "Name",
        files={"d.json": {"Steps": [{"Type": "Fail"}]}},
    ),
    case(
        "pipeline status execution truncated", STATUS, "execution.json", "JSON", files={EXECUTION: '{"execution_id": '}
    ),
    case("pipeline status execution a list", STATUS, "execution.json", "object", files={EXECUTION: []}),
    case(
        "pipeline status execution without steps",
        STATUS,
        "execution.json",
        "steps",
        files={EXECUTION: {"execution_id": "x", "status": "Failed"}},
    ),
    case(
        "pipeline status step seconds a string",
        STATUS,
        "execution.json",
        "seconds",
        files={
            EXECUTION: {
                "execution_id": "x",
                "status": "Failed",
                "steps": [{"name": "A", "type": "Fail", "status": "Failed", "seconds": "1"}],
            }
        },
    ),
    case("pipeline status name too long", ["pipeline", "status", LONG * 20], "run", "too long"),
    # -- argparse itself --------------------------------------------------------------------------------------------
    case("models unknown option", ["models", "--format", "x"], "--format"),
    case("estimate bad choice", [*EST, "--method", "dpo"], "--method"),
]


@pytest.fixture
def world(tmp_path, capsys) -> World:
    return World(tmp_path, capsys)


@pytest.mark.parametrize("argv, names, files", CASES)
def test_bad_input_is_one_line_and_exit_2(world, capsys, monkeypatch, argv, names, files) -> None:
    monkeypatch.chdir(world.tmp)  # default outputs (compliance.json, report.html) and the default store stay here
    monkeypatch.delenv("FLOPS_METER_STORE", raising=False)
    argv = [world.resolve(a, files) for a in argv]
    for name in files:  # files no argument names (the store's own)
        if not (world.tmp / name).exists():
            world.write(name, files[name])
    code, _, err = cli(capsys, *argv)
    assert_one_line_error(code, err, *(world.resolve(n, {}) for n in names))


def test_a_negative_window_never_gives_negative_flops(world, capsys) -> None:
    """The silently wrong result of the study: a negative sliding_window counted attention backwards."""
    path = world.write("c.json", cfg("mistral", sliding_window=-96))
    code, _, err = cli(capsys, "estimate", "--model", str(path), *PLAN, "--json")
    assert_one_line_error(code, err, "sliding_window")


def test_a_wrong_store_never_enters_a_pipeline_definition(world) -> None:
    """The other silently wrong result: a store URI the PublishAudit step cannot open, accepted at build time."""
    from meter.errors import MeterError
    from pipelines.config import PipelineConfig

    for uri in ("s3://bucket/records", "https://example.com", "audit"):
        with pytest.raises(MeterError, match="audit_store_uri"):
            PipelineConfig(audit_store_uri=uri)
    assert PipelineConfig(audit_store_uri="s3://b/p?table=t&region=eu-west-1").audit_store_uri.startswith("s3://b")


# -- AWS: no region, a missing bucket or table, nothing listening, an endpoint that never answers ---------------------


@pytest.fixture
def no_region(monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify"],
        ["audit", "heads"],
        ["audit", "show", "abcd"],
        ["approvals", "list"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_no_aws_region(capsys, no_region, argv) -> None:
    pytest.importorskip("boto3")
    code, _, err = cli(capsys, *argv, "--store", "s3://bucket/audit?table=ledger")
    assert_one_line_error(code, err, "s3://bucket/audit?table=ledger", "region")


def test_no_aws_region_for_the_sagemaker_registry(capsys, no_region, tmp_path) -> None:
    pytest.importorskip("boto3")
    argv = ["approvals", "approve", "abcd", "--approver", "me", "--reason", "ok", "--registry", "sagemaker"]
    code, _, err = cli(capsys, *argv, "--store", f"file://{tmp_path / 'audit'}")
    assert_one_line_error(code, err, "SageMaker", "--region")


@pytest.mark.parametrize(
    "command, missing",
    [
        (["audit", "verify"], "bucket"),
        (["audit", "verify"], "table"),
        (["audit", "heads"], "table"),
        (["audit", "show", "abcd"], "table"),
        (["approvals", "list"], "bucket"),  # flagged items are S3 objects: the list reads no table
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_missing_bucket_or_table(capsys, s3_store_uri, missing, command) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(s3_store_uri)
    if missing == "bucket":
        uri = s3_store_uri.replace(parsed.netloc, "no-such-bucket-here")
    else:
        uri = s3_store_uri.replace("table=", "table=no-such-table-")
    code, _, err = cli(capsys, *command, "--store", uri)
    line = assert_one_line_error(code, err, uri.split("&")[0])
    assert ("no-such-bucket-here" if missing == "bucket" else "no-such-table-") in line


def test_publish_to_a_missing_table(capsys, s3_store_uri, world) -> None:
    uri = s3_store_uri.replace("table=", "table=no-such-table-")
    code, _, err = cli(capsys, "audit", "publish", world.resolve("@run", {}), "--store", uri)
    assert_one_line_error(code, err, "no-such-table-")


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def aws_at(monkeypatch):
    """Point boto3 at a local endpoint, with credentials and a region (no real AWS is ever contacted)."""

    def point(endpoint: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)

    return point


def test_nothing_listening(capsys, aws_at) -> None:
    pytest.importorskip("boto3")
    aws_at(f"http://127.0.0.1:{_unused_port()}")
    code, _, err = cli(capsys, "audit", "verify", "--store", "s3://bucket/audit?table=ledger")
    assert_one_line_error(code, err, "s3://bucket/audit?table=ledger", "127.0.0.1")


def test_pipeline_start_with_nothing_listening(capsys, aws_at) -> None:
    pytest.importorskip("boto3")
    aws_at(f"http://127.0.0.1:{_unused_port()}")
    code, _, err = cli(capsys, "pipeline", "start")
    assert_one_line_error(code, err, "127.0.0.1")


@pytest.fixture
def silent_endpoint():
    """A server that accepts connections and never answers (until the test ends)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_an_endpoint_that_never_answers_fails_verify_in_bounded_time(capsys, aws_at, silent_endpoint) -> None:
    pytest.importorskip("boto3")
    aws_at(silent_endpoint)
    started = time.monotonic()
    code, _, err = cli(capsys, "audit", "verify", "--store", "s3://bucket/audit?table=ledger")
    took = time.monotonic() - started
    line = assert_one_line_error(code, err, "s3://bucket/audit?table=ledger", "no answer")
    assert took < 30, f"verify took {took:.0f} s: {line}"


def test_every_client_gets_the_timeouts() -> None:
    pytest.importorskip("botocore")
    from meter.audit.aws import boto_config

    config = boto_config()
    assert config.connect_timeout <= 10 and config.read_timeout <= 10
    attempts = config.retries["total_max_attempts"]  # the first attempt included
    assert config.retries["mode"] == "standard" and attempts * config.read_timeout < 30


def test_no_client_is_created_without_the_shared_config() -> None:
    """Every boto3 client the code creates takes its Config from meter.audit.aws.boto_config."""
    root = Path(__file__).resolve().parent.parent
    found = []
    for package in ("meter", "pipelines", "steps"):
        for path in (root / package).rglob("*.py"):
            if "vendor" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                creates = re.search(r"\.(client|resource)\(\s*\"", line)
                if creates and "boto_config()" not in line and "config=config" not in line:
                    found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "clients without boto_config():\n" + "\n".join(found)


# -- the last resort --------------------------------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_exit_3(capsys, monkeypatch) -> None:
    import meter.cli

    def broken(args):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(meter.cli.estimate, "plan", broken)
    monkeypatch.delenv("FLOPS_METER_DEBUG", raising=False)
    code, _, err = cli(capsys, *EST)
    assert code == 3 and err.count("\n") == 1
    assert err.startswith("flops-meter: internal error: RuntimeError: something nobody expected")
    assert "FLOPS_METER_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("FLOPS_METER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(EST)


def test_an_interrupt_is_one_line_and_exit_130(capsys, monkeypatch) -> None:
    import meter.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(meter.cli.estimate, "plan", interrupted)
    code, _, err = cli(capsys, *EST)
    assert code == 130 and err.count("\n") == 1 and err.startswith("flops-meter: ")


# -- in a real process: bytes on the command line, nothing reaches the terminal but one line -------------------------

_EXE = [sys.executable, "-m", "meter.cli"]


def _run(argv: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("FLOPS_METER_DEBUG", "FLOPS_METER_STORE")}
    return subprocess.run([*_EXE, *argv], capture_output=True, cwd=cwd, env={**environ, **env}, timeout=60)


@pytest.mark.parametrize(
    "argv, names",
    [
        ([b"estimate", b"--model", b"caf\xe9", b"--sequences", b"4", b"--seq-len", b"8"], [b"--model", b"UTF-8"]),
        ([b"audit", b"publish", b"RUN", b"--git-commit", b"\xff\xfe"], [b"--git-commit"]),
        ([b"classify", b"BAD"], [b"bad.json", b"UTF-8"]),
        ([b"estimate", b"--model", b"tiny-llama", b"--sequences", b"1e400", b"--seq-len", b"8"], [b"--sequences"]),
        ([b"classify", b"RUN", b"--out", b"."], [b"--out"]),
    ],
    ids=["argv-model", "argv-git-commit", "file-not-utf8", "overflow", "out-a-directory"],
)
def test_in_a_process_no_traceback_reaches_the_terminal(tmp_path, argv, names) -> None:
    run = tmp_path / "run.json"
    run.write_text(json.dumps(run_record(10**22, "run-p")))
    (tmp_path / "bad.json").write_bytes(b'{"run_id": "\xe9t\xe9"}')
    argv = [{b"RUN": bytes(run), b"BAD": bytes(tmp_path / "bad.json")}.get(a, a) for a in argv]
    done = _run(argv, tmp_path, FLOPS_METER_STORE=f"file://{tmp_path / 'audit'}")
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr and b"internal error" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"flops-meter: error: "), done.stderr
    for name in names:
        assert name in lines[0], done.stderr


def test_in_a_process_the_last_resort_is_one_line(tmp_path) -> None:
    code = (
        "import sys, meter.cli as c, meter.cli.estimate as e\n"
        "def plan(args): raise ZeroDivisionError('boom')\n"
        "e.plan = plan\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    argv = ["-c", code, *EST]
    environ = {k: v for k, v in os.environ.items() if k != "FLOPS_METER_DEBUG"}
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 3 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "internal error: ZeroDivisionError: boom" in done.stderr
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, env={**environ, "FLOPS_METER_DEBUG": "1"}
    )
    assert done.returncode == 1 and "Traceback" in done.stderr and "ZeroDivisionError: boom" in done.stderr


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00", b"[" * 100_000, b'{"a": 1'], ids=["bytes", "deep", "truncated"])
def test_verify_reports_a_garbled_record_as_broken(world, capsys, garbage) -> None:
    """A record file replaced by garbage is a broken store (exit 1, its BROKEN line), not a crash."""
    record = world.record()
    os.chmod(record, 0o644)
    record.write_bytes(garbage)
    code, out, err = cli(capsys, "audit", "verify", "--store", world.store())
    assert code == 1 and "BROKEN" in out and record.stem[:12] in out and err == ""


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("sagemaker", ["pipeline", "definition"], "pipeline"),
        ("sagemaker", ["pipeline", "demo", "--home", "{tmp}"], "demo"),
        ("boto3", ["audit", "verify", "--store", "s3://bucket/records?table=ledger&region=eu-west-1"], "pipeline"),
    ],
)
def test_a_missing_extra_is_named(module, argv, extra, monkeypatch, capsys, tmp_path) -> None:
    """`pip install flops-meter` without an extra: the command says which one, never a ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError, as if absent
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("flops-meter: error:") and module in line, line
    assert line.endswith(f"pip install 'flops-meter[{extra}]'"), line
