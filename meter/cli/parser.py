"""The command line's parser: the meter's commands, their options and the checks on their values."""

from __future__ import annotations

import argparse
import math

from meter.engine.trainer_plan import TRAINERS
from meter.policy.parts import DEFAULT_SCOPE, SCOPES

# counts beyond any training run (the largest pretraining runs saw ~4e13 tokens): a typo, and the products of such
# counts would overflow the float figures of the report
_MAX_COUNT = 10**15


def _positive_int(name: str):
    def parse(text: str) -> int:
        problem = f"{name} must be a positive integer up to 1e15, got {text!r}"
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            try:
                number = float(text)  # 1e6 is a fine way to write a token count
            except ValueError:
                raise argparse.ArgumentTypeError(problem) from None
            if not math.isfinite(number):
                raise argparse.ArgumentTypeError(problem) from None
            if number != int(number):
                raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
            value = int(number)
        if not 0 < value <= _MAX_COUNT:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _fraction(name: str):
    """A fraction in (0, 1]: finite, positive, at most one."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in (0, 1], got {text!r}") from None
        if not math.isfinite(value) or not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be a number in (0, 1], got {text!r}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line with a pointer to --help, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"flops-meter: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flops-meter",
        description="Exact FLOPs of LLM fine-tuning and the EU AI Act one-third rule. Not legal advice.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    est = sub.add_parser(
        "estimate",
        help="estimate the compute of a planned fine-tuning run",
        description="Estimate the FLOPs of a planned fine-tuning run from the model config and the data size.",
    )
    est.add_argument("--model", required=True, help="config.json path, model directory, or Hugging Face model id")
    est.add_argument(
        "--lineage", help="the model lineage whose recorded jobs add up with this plan (default: the base model)"
    )
    est.add_argument(
        "--store",
        help=f"audit store with the lineage's jobs (default $FLOPS_METER_STORE or {default_store()})",
    )
    size = est.add_argument_group("data size (give --sequences, or --tokens; with --seq-len)")
    size.add_argument(
        "--sequences",
        type=_positive_int("--sequences"),
        help="number of training sequences (dpo/kto: examples; grpo/rloo: prompts)",
    )
    size.add_argument("--tokens", type=_positive_int("--tokens"), help="number of training tokens (non-padding)")
    size.add_argument("--seq-len", type=_positive_int("--seq-len"), help="tokens per sequence")
    size.add_argument("--epochs", type=_positive_int("--epochs"), default=1, help="passes over the data (default 1)")
    method = est.add_argument_group("training method")
    method.add_argument("--method", choices=("full", "lora", "qlora", "freeze"), default="full")
    method.add_argument("--lora-r", type=_positive_int("--lora-r"), default=16, help="LoRA rank (default 16)")
    method.add_argument(
        "--lora-targets",
        help="comma-separated module names, 'all-linear', or a regex (default: peft's for the architecture)",
    )
    method.add_argument("--dora", action="store_true", help="weight-decomposed LoRA (DoRA)")
    method.add_argument(
        "--trainable", action="append", default=[], metavar="REGEX", help="trainable parameters (freeze; repeatable)"
    )
    method.add_argument("--gradient-checkpointing", action="store_true")
    method.add_argument(
        "--attn-implementation", choices=("eager", "sdpa", "flash_attention_2", "flash_attention_3"), default="sdpa"
    )
    rl = est.add_argument_group("preference and RL fine-tuning (TRL): the parts of the run, see the README")
    rl.add_argument("--trainer", choices=TRAINERS, default="sft", help="the trainer (default sft)")
    rl.add_argument("--prompt-len", type=_positive_int("--prompt-len"), help="prompt tokens (dpo, kto, grpo, rloo)")
    rl.add_argument("--completion-len", type=_positive_int("--completion-len"), help="completion tokens")
    rl.add_argument(
        "--generations", type=_positive_int("--generations"), default=8, help="completions per prompt (default 8)"
    )
    rl.add_argument("--iterations", type=_positive_int("--iterations"), default=1, help="grpo/rloo num_iterations")
    rl.add_argument(
        "--no-reference", action="store_true", help="no reference forwards (precomputed, or grpo/rloo with beta 0)"
    )
    rl.add_argument(
        "--regulatory-scope",
        choices=tuple(SCOPES),
        default=DEFAULT_SCOPE,
        help="parts the regulatory count includes (default conservative: all but evaluation)",
    )
    reg = est.add_argument_group("threshold")
    reg.add_argument("--pretrain-flops", help="the original model's training compute in FLOP (default: bundled table)")
    reg.add_argument(
        "--original-systemic-risk", action="store_true", help="the original has systemic risk (for the fallback rule)"
    )
    est.add_argument("--measure", action="store_true", help="count with FlopCounterMode on the meta device instead")
    est.add_argument("--json", action="store_true", help="print one JSON object")

    models = sub.add_parser("models", help="list the bundled model configs and each original's training compute")
    models.add_argument("--json", action="store_true", help="print one JSON array (sources, dates, trail)")

    cls = sub.add_parser(
        "classify",
        help="hold a run's count against the one-third rule (with the lineage's earlier runs)",
        description="Classify a run record (flops_meter.json): downstream modifier, approaching, or GPAI provider.",
    )
    cls.add_argument("run", help="the run record written by the meter (flops_meter.json)")
    _original_args(cls)
    cls.add_argument("--approaching", type=_fraction("--approaching"), default=0.8,
                     help="fraction of the threshold that is 'approaching' (default 0.8)")  # fmt: skip
    cls.add_argument("--out", default="compliance.json", help="where to write the verdict (default compliance.json)")
    cls.add_argument("--fail-on-cross", action="store_true", help="exit 1 when the threshold is crossed")
    cls.add_argument("--json", action="store_true", help="print the verdict as JSON")

    audit = sub.add_parser("audit", help="publish, verify and show tamper-evident audit records")
    asub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    pub = asub.add_parser("publish", help="append a run and its verdict to the audit store")
    pub.add_argument("run", help="flops_meter.json")
    pub.add_argument("--compliance", help="compliance.json from classify (default: classify now)")
    _original_args(pub)
    pub.add_argument("--revision", help="revision of the base model (commit or tag)")
    pub.add_argument("--parent", action="append", default=[], metavar="SHA256", help="records this one builds on")
    pub.add_argument("--dataset-uri", help="where the fine-tuning data lives")
    pub.add_argument("--dataset-file", help="a local copy of the data: its size and SHA-256 are recorded")
    pub.add_argument("--dataset-etag", help="the S3 ETag of the data")
    pub.add_argument("--git-commit", help="commit of the training code")
    pub.add_argument("--container-image", help="the training container image")
    pub.add_argument("--json", action="store_true")
    ver = asub.add_parser("verify", help="recompute every hash and chain link; name the first broken record")
    ver.add_argument("--store", help=f"audit store URI (default $FLOPS_METER_STORE or {default_store()})")
    ver.add_argument("--lineage", help="verify one lineage only")
    ver.add_argument("--heads", help="chain heads exported earlier (audit heads): each must still be in its chain")
    heads = asub.add_parser("heads", help="export every chain's head, to keep outside the store (JSON on stdout)")
    heads.add_argument("--store", help="audit store URI")
    rep = sub.add_parser("report", help="a human-readable report of one audit record, with a plot")
    rep.add_argument(
        "record", help="in --store: a record's SHA-256 (or a unique prefix) or a lineage (its latest); or a file"
    )
    rep.add_argument("--store", help="audit store URI (also where the decision on the record is looked up)")
    rep.add_argument(
        "--format", choices=("md", "html", "pdf"), default="html", help="pdf: the HTML printed by headless Chromium"
    )
    rep.add_argument("--out", help="output file (default report.<format>)")
    show = asub.add_parser("show", help="show one record")
    show.add_argument("record", help="the record's SHA-256 (or a unique prefix), or a lineage id (its latest record)")
    show.add_argument("--store", help="audit store URI")
    show.add_argument("--json", action="store_true")
    for plugin in _command_plugins():
        plugin(sub)
    return parser


def default_store() -> str:
    from meter.audit.store import DEFAULT_STORE

    return DEFAULT_STORE


def _original_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pretrain-flops", help="the original model's training compute in FLOP (user-given)")
    group.add_argument("--base-model", help="the original model's Hugging Face id (looked up in the bundled table)")
    p.add_argument("--original-systemic-risk", action="store_true", help="the original has systemic risk")
    p.add_argument(
        "--store",
        help=f"audit store URI for the lineage's earlier runs (default $FLOPS_METER_STORE or {default_store()})",
    )
    p.add_argument("--lineage", help="the released model whose jobs add up (default: the base model id)")


def _version() -> str:
    from meter import __version__

    return __version__


# Other packages add their command groups here (pyproject.toml: [project.entry-points."flops_meter.commands"]):
# the governed pipeline's `pipeline` and `approvals`. Each entry is a callable that adds its sub-parser and sets
# its `handler`. The meter never imports them, and where they are absent (a training container gets meter/ and
# steps/ only) the commands are simply not there.
COMMAND_GROUP = "flops_meter.commands"


def _command_plugins() -> list:
    from importlib.metadata import entry_points

    plugins = []
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            plugins.append(entry.load())
        except ImportError:  # its package is not on the path here
            continue
    return plugins
