"""The ``flops-meter`` command line.

``flops-meter estimate``  plan a fine-tuning run: exact FLOPs from the model config and the data size, compared
                          across methods and against the one-third threshold.
``flops-meter models``    the bundled model configs and the published pretraining compute.
``flops-meter classify``  hold a run record against the one-third rule, with the lineage's earlier runs.
``flops-meter audit``     publish / verify / show tamper-evident records (file://DIR or s3://BUCKET/PREFIX?table=T).
``flops-meter report``    a Markdown or HTML report of one record, with a plot of compute against the threshold.

Exit status: 0 success, 1 a crossed threshold (classify --fail-on-cross) or a broken chain (audit verify),
2 bad input (one line on stderr naming the input, no traceback), 3 an internal error (one line; FLOPS_METER_DEBUG=1
shows the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from meter.engine.trainer_plan import TRAINERS
from meter.errors import MeterError
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
    ver.add_argument("--store", help=f"audit store URI (default $FLOPS_METER_STORE or {_default_store()})")
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


def _default_store() -> str:
    from meter.audit.stores import DEFAULT_STORE

    return DEFAULT_STORE


def _original_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pretrain-flops", help="the original model's training compute in FLOP (user-given)")
    group.add_argument("--base-model", help="the original model's Hugging Face id (looked up in the bundled table)")
    p.add_argument("--original-systemic-risk", action="store_true", help="the original has systemic risk")
    p.add_argument(
        "--store",
        help=f"audit store URI for the lineage's earlier runs (default $FLOPS_METER_STORE or {_default_store()})",
    )
    p.add_argument("--lineage", help="the released model whose jobs add up (default: the base model id)")


def _version() -> str:
    from meter import __version__

    return __version__


@dataclass
class Plan:
    """Everything `estimate` computed, ready to print as a table or JSON."""

    model: str
    model_note: str
    spec: Any
    setup: Any
    counts: dict[str, Any]  # label -> (setup, RunCount or FlopsCount, trainable parameters)
    selected: str
    stats: Any  # of the training steps
    threshold: Any
    pretrain: Any  # the original's compute (meter.policy.original.OriginalCompute)
    trainer: str = "sft"
    scope: str = DEFAULT_SCOPE

    @property
    def count(self):
        return self.counts[self.selected][1]

    def headroom(self) -> tuple[float, float | None]:
        flops = self.threshold.flops - self.count.regulatory_flops
        per_token = self.count.flops_per_token
        return flops, (flops / per_token if per_token else None)

    def to_dict(self) -> dict[str, Any]:
        from meter.policy.thresholds import NOT_LEGAL_ADVICE

        count = self.count
        headroom_flops, headroom_tokens = self.headroom()
        return {
            "model": self.model,
            "trainer": self.trainer,
            "method": self.setup.method,
            "setup": self.setup.describe(),
            "regulatory_flops": count.regulatory_flops,
            "executed_flops": count.executed_flops,
            "flops_per_token": count.flops_per_token,
            "tokens": self.stats.tokens,
            "parameters": self.counts[self.selected][2][0],
            "trainable_parameters": self.counts[self.selected][2][1],
            "regulatory": count.regulatory.__dict__,
            "executed": count.executed.__dict__,
            "regulatory_scope": self.scope,
            "parts": _parts(count, self.scope),
            "threshold": {
                "flops": self.threshold.flops,
                "rule": self.threshold.rule,
                "citation": self.threshold.citation,
                "original_flops": self.threshold.original_flops,
                "original": self.pretrain.to_dict(),
                "notes": list(self.threshold.notes),
            },
            "crosses_threshold": self.threshold.crossed_by(count.regulatory_flops),
            "fraction_of_threshold": count.regulatory_flops / self.threshold.flops,
            "headroom_flops": headroom_flops,
            "headroom_tokens": headroom_tokens,
            "comparison": {
                label: {
                    "setup": s.describe(),
                    "regulatory_flops": c.regulatory_flops,
                    "executed_flops": c.executed_flops,
                }
                for label, (s, c, _) in self.counts.items()
            },
            "disclaimer": f"Estimate before training; the run's meter gives the count of record. {NOT_LEGAL_ADVICE}",
        }


def _parts(count, scope: str) -> dict[str, Any]:
    from meter.policy.parts import included

    parts = getattr(count, "parts", None) or {"training": count}
    return {
        p: {"regulatory_flops": c.regulatory_flops, "executed_flops": c.executed_flops, "tokens": c.tokens,
            "included": included(p, scope)}
        for p, c in parts.items()
    }  # fmt: skip


def _trainer_plan(args):
    from meter.engine.trainer_plan import TrainerPlan

    if args.trainer == "sft":
        return TrainerPlan()
    if args.sequences is None or args.tokens is not None:
        raise MeterError(f"a {args.trainer} plan counts examples: give --sequences N (with --prompt-len, "
                         "--completion-len), not --tokens")  # fmt: skip
    if args.measure:
        raise MeterError(f"--measure counts supervised steps only: drop it for a {args.trainer} plan")
    return TrainerPlan(
        trainer=args.trainer,
        prompt_len=args.prompt_len or 0,
        completion_len=args.completion_len or 0,
        generations=args.generations,
        reference=not args.no_reference,
        iterations=args.iterations,
    )


def _stats(args, windows) -> Any:
    from meter.engine.tokens import TokenStats

    if args.trainer != "sft":
        return None  # built by the trainer plan
    if args.seq_len is None:
        raise MeterError("--seq-len is required: attention cost depends on the sequence length")
    if (args.sequences is None) == (args.tokens is None):
        raise MeterError("give exactly one of --sequences N or --tokens N (with --seq-len)")
    if args.sequences is not None:
        stats = TokenStats.uniform(args.sequences, args.seq_len, windows=windows)
    else:
        full, rest = divmod(args.tokens, args.seq_len)
        stats = TokenStats.uniform(full, args.seq_len, windows=windows) if full else TokenStats()
        if rest:
            stats = stats + TokenStats.from_lengths([rest], windows=windows)
    return stats.scaled(args.epochs)


def _targets(text: str | None):
    if text is None:
        return None
    if text == "all-linear" or any(c in text for c in "*+?[]()|\\^$"):
        return text
    return tuple(t.strip() for t in text.split(",") if t.strip())


def plan(args) -> Plan:
    from meter.engine.catalog import resolve_model
    from meter.engine.count import CostModel, TrainingSetup, default_lora_targets
    from meter.engine.spec import spec_from_config
    from meter.errors import UnknownArchitecture
    from meter.policy.original import resolve_original
    from meter.policy.thresholds import threshold_for

    resolved = resolve_model(args.model)
    trainer = _trainer_plan(args)
    common = dict(gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn_implementation)
    setup = TrainingSetup(
        method=args.method,
        lora_r=args.lora_r,
        lora_targets=_targets(args.lora_targets),
        dora=args.dora,
        trainable=tuple(args.trainable),
        **common,
    )
    spec, measured_note, measure = None, "", args.measure
    if not measure:
        try:
            spec = spec_from_config(resolved.config, name=resolved.name)
        except UnknownArchitecture:
            if args.trainer != "sft":
                raise
            measure = True
            measured_note = (
                f"model_type '{resolved.config.get('model_type')}' is outside the analytic engine: measured with "
                "FlopCounterMode on a meta-device copy (sliding windows credited, chunked attention as causal)"
            )
    if measure:
        from meter.engine.measure import MeasuredCostModel

        models = {"measured": (setup, MeasuredCostModel(resolved.config, setup, name=resolved.name))}
        selected = "measured"
    else:
        targets = setup.lora_targets or default_lora_targets(spec.model_type)  # reports name the modules
        if setup.uses_lora:
            setup = replace(setup, lora_targets=targets)
        alternatives = {
            "full": TrainingSetup(**common),
            "lora": TrainingSetup(method="lora", lora_r=args.lora_r, lora_targets=targets, **common),
            "freeze": TrainingSetup(method="freeze", trainable=setup.trainable or (_upper_quarter(spec),), **common),
        }
        selected = "qlora" if setup.method == "qlora" else setup.method
        alternatives[selected] = setup
        models = {label: (s, CostModel(spec, s)) for label, s in alternatives.items()}
    windows = set().union(*(getattr(m, "windows", set()) for _, m in models.values()))
    stats = _stats(args, windows)
    total = spec.parameter_count() if spec is not None else next(iter(models.values()))[1].parameters
    if measure:
        counts = {label: (s, m.count(stats), (total, m.trainable_parameters())) for label, (s, m) in models.items()}
    else:
        from meter.engine.trainer_plan import plan_parts

        bare = CostModel(spec, TrainingSetup(**common))  # the reference: adapters off, or a copy of the original
        counts = {}
        for label, (s, m) in models.items():
            count, stats = plan_parts(m, bare, trainer, args.sequences or 0, epochs=args.epochs, sft_stats=stats,
                                      scope=args.regulatory_scope)  # fmt: skip
            counts[label] = (s, count, (total, m.trainable_parameters()))

    original = resolve_original(resolved.name, args.pretrain_flops, systemic_risk=args.original_systemic_risk or None)
    threshold = threshold_for(original.flops, original_systemic_risk=original.is_systemic_risk)
    note = "; ".join(n for n in (resolved.note, measured_note) if n)
    return Plan(resolved.name, note, spec, setup, counts, selected, stats, threshold, original,
                trainer.trainer, args.regulatory_scope)  # fmt: skip


def _upper_quarter(spec) -> str:
    """The illustrative freeze plan when none is given: the top quarter of the layers trainable."""
    from meter.engine.graph import layers_regex

    return layers_regex(spec, range(spec.num_layers - max(1, spec.num_layers // 4), spec.num_layers))


def _console():
    """A real terminal is used at its width; a pipe or CI log gets 110 columns instead of rich's 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=110)


def _short(setup, spec) -> str:
    """A method label that fits a narrow terminal: 'full', 'lora r16 all-linear', 'freeze 8/32 layers'."""
    from meter.engine.count import default_lora_targets

    if setup.uses_lora:
        targets = setup.lora_targets or default_lora_targets(spec.model_type if spec else "")
        targets = targets if isinstance(targets, str) else ",".join(targets)
        return f"{setup.method} r{setup.lora_r} {targets}" + (" DoRA" if setup.dora else "")
    if setup.method == "freeze" and spec is not None:
        from meter.engine.graph import layer_prefix

        rx = re.compile("|".join(setup.trainable))
        layers = sum(1 for i in range(spec.num_layers) if rx.search(f"{layer_prefix(spec)}.{i}.mlp."))
        return f"freeze: {layers}/{spec.num_layers} layers train"
    return setup.method


def print_plan(p: Plan) -> None:
    from rich import box
    from rich.table import Table

    from meter.policy.thresholds import NOT_LEGAL_ADVICE, two_significant

    console = _console()
    s = p.spec
    console.print(f"[bold]{p.model}[/bold]" + (f"  ({p.model_note})" if p.model_note else ""))
    if s is not None:
        moe = f", MoE {s.moe.num_experts} experts top-{s.moe.top_k}" if s.moe else ""
        console.print(
            f"  {s.model_type}: {s.num_layers} layers, hidden {s.hidden_size}, {s.num_heads} heads "
            f"({s.num_kv_heads} KV, head_dim {s.head_dim}){moe}, vocab {s.vocab_size}, "
            f"{s.parameter_count() / 1e9:.3g} B parameters"
        )
    st = p.stats
    console.print(
        f"  plan: {st.tokens:,} tokens in {st.sequences:,} sequences (max {st.max_len:,}), "
        f"attention {p.setup.attn_implementation}"
        + (", gradient checkpointing" if p.setup.gradient_checkpointing else "")
    )

    if p.trainer != "sft":
        parts = Table(title=f"Parts of the {p.trainer} plan ({p.setup.method}), FLOP", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
        for col in ("part", "tokens", "regulatory", "executed", "counted"):
            parts.add_column(col, justify="left" if col == "part" else "right", no_wrap=True)
        for part, v in _parts(p.count, p.scope).items():
            parts.add_row(part, f"{v['tokens']:,}", f"{v['regulatory_flops']:.2g}", f"{v['executed_flops']:.2g}",
                          "yes" if v["included"] else "no")  # fmt: skip
        console.print(parts)
    table = Table(title="Compute of the plan, FLOP", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("method", no_wrap=True, max_width=26, overflow="ellipsis")
    for col in ("trainable", "regulatory", "executed", "per token", "of limit"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for label, (setup, count, (_, trainable)) in p.counts.items():
        table.add_row(
            ("▶ " if label == p.selected else "  ") + _short(setup, p.spec),
            f"{trainable:.2g}",
            f"{count.regulatory_flops:.2g}",
            f"{count.executed_flops:.2g}",
            f"{count.flops_per_token:.3g}",
            f"{count.regulatory_flops / p.threshold.flops * 100:.2g}%",
        )
    console.print(table)

    t, o = p.threshold, p.pretrain
    if o.flops is not None:
        origin = f"{two_significant(o.flops)} — {o.method}" + (f"; {o.source}" if o.basis != "user" else "")
        origin += f" ({o.date})" if o.date else ""
    else:
        origin = f"unknown ({o.source})"
    console.print(f"original training compute: {origin}")
    if o.inputs:
        shown = {k: v for k, v in o.inputs.items() if k not in ("alternative", "peak_source", "parameters_are")}
        console.print("  from: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in shown.items()))  # fmt: skip
    if o.uncertainty and o.basis == "estimated":
        console.print(f"  uncertainty: {o.uncertainty}")
    for step in o.trail:
        if "differ" in step:
            console.print(f"  [yellow]note[/yellow]: {step}")
    console.print(f"threshold: [bold]{two_significant(t.flops)}[/bold]  — {t.citation}")
    for note in t.notes:
        console.print(f"  note: {note}")
    headroom_flops, headroom_tokens = p.headroom()
    if t.crossed_by(p.count.regulatory_flops):
        console.print(
            f"[bold red]The plan crosses the threshold[/bold red] by {two_significant(-headroom_flops)}: "
            "the modifier would become the provider of a GPAI model (Guidelines §3.2)."
        )
    else:
        console.print(
            f"[green]Below the threshold[/green]: headroom {two_significant(headroom_flops)}"
            + (
                f" ≈ {headroom_tokens:.2g} more tokens at {p.count.flops_per_token:.3g} FLOP/token"
                if headroom_tokens
                else ""
            )
            + ". Compute of earlier jobs on the same model adds up."
        )
    console.print(
        f"[dim]Regulatory: non-padding tokens, causal pairs, no recomputation; parts: {p.scope}. "
        f"{NOT_LEGAL_ADVICE}[/dim]"
    )


def list_models(as_json: bool = False) -> None:
    """Each bundled model with its original's training compute: basis, method, facts, uncertainty (and, in JSON,
    source, date and the resolution trail)."""
    from rich.table import Table

    from meter.engine.catalog import bundled_configs
    from meter.policy.original import resolve_original
    from meter.policy.thresholds import two_significant

    rows = []
    for key, path in sorted(bundled_configs().items()):
        if "/" not in key and key != "tiny-llama":
            continue  # bare-name aliases
        cfg = json.loads(path.read_text())
        rows.append((cfg, resolve_original(cfg["_name_or_path"])))
    if as_json:
        print(json.dumps([{"model": c["_name_or_path"], "model_type": c["model_type"], "original": o.to_dict()}
                          for c, o in rows], indent=2))  # fmt: skip
        return
    short = {"reported": "as reported", "user": "as given", "unknown": "—"}
    table = Table(title="Bundled model configs (architecture only) and the original's training compute",
                  title_justify="left")  # fmt: skip
    table.add_column("model id", no_wrap=True)
    for col in ("compute", "basis", "from published facts", "uncertainty"):
        table.add_column(col, overflow="fold")
    for cfg, o in rows:
        method = "6·P·D" if "6·P·D" in o.method else "N·L·H·U"
        facts = ", ".join(f"{k} {v:.3g}" if isinstance(v, float | int) else f"{k} {v}" for k, v in o.inputs.items()
                          if k in ("parameters", "tokens", "gpu_hours", "chip"))  # fmt: skip
        basis = f"estimated {method}" if o.basis == "estimated" else o.basis
        uncertainty = short.get(o.basis) or ("±30 % (para 123)" if method == "6·P·D" else "U = 50 % assumed")
        compute = "unknown" if o.flops is None else two_significant(o.flops)
        table.add_row(cfg["_name_or_path"], compute, basis, facts, uncertainty)
    console = _console()
    console.print(table)
    console.print(
        "[dim]Sources, dates, uncertainties and how each figure was resolved: flops-meter models --json. "
        "Resolution: given > reported > estimated (Annex A.2) > fallback (Guidelines §3.2, para 64).[/dim]"
    )


def _read_json(path: str, what: str) -> dict[str, Any]:
    from meter.jsonfile import read_json_object

    return read_json_object(path, what)


def _read_run(path: str) -> dict[str, Any]:
    from meter.policy.governance import check_run_shape

    run = _read_json(path, "run record")
    check_run_shape(run, f"run record {path}")
    return run


def _read_heads(path: str) -> dict[str, Any]:
    """An export of chain heads (audit heads): each head an object with its sequence and record hash."""
    from meter.jsonfile import check_shape

    heads = _read_json(path, "exported chain heads")
    if heads.get("record_type") != "flops_meter.heads":
        raise MeterError(f"{path} is not an export of chain heads: write one with flops-meter audit heads")
    where = f"exported chain heads {path}"
    check_shape(heads, {"heads": "object", "decisions": "object", "flagged": "object"}, where)
    for lineage, head in (heads.get("heads") or {}).items():
        if not isinstance(head, dict):
            raise MeterError(f"{where}: heads.{lineage} must be a JSON object with sequence and record_sha256")
        check_shape(head, {"sequence": "integer+", "record_sha256": "string"}, f"{where}: heads.{lineage}")
    return heads


def _verdict(args, run: dict[str, Any], store=None):
    from meter.policy.governance import run_verdict
    from meter.policy.original import resolve_original

    base = args.base_model or (run.get("model") or {}).get("name") or "unknown"
    original = resolve_original(base, args.pretrain_flops, systemic_risk=args.original_systemic_risk or None)
    lineage = args.lineage or base
    verdict = run_verdict(
        run, original, lineage=lineage, store=store, approaching_fraction=getattr(args, "approaching", 0.8)
    )
    return base, lineage, verdict


def cmd_classify(args) -> int:
    run = _read_run(args.run)
    from meter.audit.stores import open_store
    from meter.policy.governance import compliance_document

    store = open_store(args.store, create=False)  # a local store not there yet holds no earlier runs
    base, lineage, verdict = _verdict(args, run, store)
    doc = compliance_document(verdict, lineage=lineage, base_model=base, run_id=run.get("run_id"))
    from meter.jsonfile import write_text

    write_text(args.out, json.dumps(doc, indent=2) + "\n", "--out")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_verdict(verdict, lineage, args.out)
    return 1 if (args.fail_on_cross and verdict.crossed) else 0


def _print_verdict(v, lineage: str, out: str) -> None:
    from meter.policy.thresholds import NOT_LEGAL_ADVICE, rule_text

    console = _console()
    color = {"downstream_modifier": "green", "approaching": "yellow"}.get(v.status, "bold red")
    console.print(f"[{color}]{v.status}[/{color}]  lineage {lineage}")
    console.print(
        f"  this run {v.figures['this_run']}, lineage total {v.figures['cumulative']}, threshold "
        f"{v.figures['threshold']} ({rule_text(v.threshold_rule)}; {v.ratio:.2%} of it)"
    )
    console.print(f"  original compute: {v.original.source or v.original.basis}")
    console.print(f"  rule: {v.threshold_citation}")
    for note in v.notes:
        console.print(f"  note: {note}")
    if v.notification_required:
        console.print(f"  [bold]Notify the Commission by {v.notification_deadline} (Art. 52(1)).[/bold]")
    for duty in v.duties:
        console.print(f"  duty: {duty}")
    console.print(f"  wrote {out}. [dim]{NOT_LEGAL_ADVICE}[/dim]")


def cmd_audit(args) -> int:
    from meter.audit.stores import open_store

    if args.audit_command in ("verify", "heads"):
        # reading must not create: a typo in --store is an error, never an empty store reported intact
        store = open_store(args.store, create=False)
        if store is None:
            raise MeterError(f"no audit store at {args.store or _default_store()}: give --store (or FLOPS_METER_STORE)")
    else:
        store = open_store(args.store)
    if args.audit_command == "heads":
        from meter.audit.stores import chain_heads

        print(json.dumps(chain_heads(store), indent=2))
        return 0
    if args.audit_command == "verify":
        heads = _read_heads(args.heads) if args.heads else None
        report = store.verify(args.lineage, heads=heads)
        print(report.line())
        return 0 if report.ok else 1
    if args.audit_command == "show":
        sha = _resolve_sha(store, args.record)
        record = _intact(store.get(sha), sha)
        if args.json:
            print(json.dumps(record, indent=2))
        else:
            v = record["verdict"]
            lineage = record["lineage"]["id"]
            print(f"record {sha}  lineage {lineage} #{record['sequence']}  published {record['published_at']}")
            print(f"  run {record['record_id']}: {record['run']['flops']['regulatory']:.2e} FLOP regulatory")
            total, limit = v["cumulative_flops"], v["threshold_flops"]
            print(f"  verdict {v['status']}: cumulative {total:.2e} vs threshold {limit:.2e}")
            print(f"  previous {record['previous_record_sha256']}")
        return 0
    return _publish(args, store)


def cmd_report(args) -> int:
    from pathlib import Path

    from meter.audit.stores import open_store
    from meter.report import decision_for, write_report

    if Path(args.record).is_file():
        record = _read_json(args.record, "audit record")
        if record.get("record_type") != "flops_meter.audit":
            raise MeterError(f"{args.record} is not an audit record: publish the run first (flops-meter audit publish)")
        record = _intact(record, record.get("record_sha256"))
        store = open_store(args.store, create=False)  # the decision, where a store is there to hold one
    else:
        store = open_store(args.store)
        sha = _resolve_sha(store, args.record)
        record = _intact(store.get(sha), sha)
    written = write_report(
        record,
        Path(args.out or f"report.{args.format}"),
        args.format,
        decision=decision_for(store, record),
        decision_source=store.uri if store is not None else None,
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _intact(record: dict, sha: str | None) -> dict:
    """Never show or report an altered record as if it were the one published."""
    from meter.audit.chain import hashes_to

    if not hashes_to(record, sha):
        raise MeterError(f"record {str(sha)[:12]} does not match its SHA-256: it was altered (see audit verify)")
    return record


def _resolve_sha(store, ref: str) -> str:
    """A record by its SHA-256 or a unique prefix of it, or a lineage's id for that lineage's latest record."""
    entries = store.entries()
    matches = sorted({e.record_sha256 for e in entries if e.record_sha256.startswith(ref.lower())})
    if not matches:
        lineage = [e for e in entries if e.lineage == ref]
        matches = [max(lineage, key=lambda e: e.sequence).record_sha256] if lineage else []
    if len(matches) != 1:
        raise MeterError(
            f"record {ref!r} {'is ambiguous' if matches else 'not found'} in {store.uri}: give a record's SHA-256 "
            "(or a unique prefix) or a lineage id (see flops-meter audit verify)"
        )
    return matches[0]


def _publish(args, store) -> int:

    from meter.policy.governance import compliance_document, file_identity, publish

    run = _read_run(args.run)
    if args.compliance:
        from meter.policy.governance import check_compliance_shape

        compliance = _read_json(args.compliance, "compliance file")
        check_compliance_shape(compliance, f"compliance file {args.compliance}")
        for key, value in (("base_model", args.base_model), ("lineage", args.lineage)):
            if value:
                compliance[key] = value
    else:
        base, lineage, v = _verdict(args, run, store)
        compliance = compliance_document(v, lineage=lineage, base_model=base, run_id=run.get("run_id"))
    dataset = {"uri": args.dataset_uri, "etag": args.dataset_etag}
    if args.dataset_file:
        dataset.update(file_identity(args.dataset_file))
    code = {"git_commit": args.git_commit, "container_image": args.container_image}
    published = publish(store, run, compliance, revision=args.revision, parents=args.parent, dataset=dataset, code=code)
    record = published.record
    # a verdict that needs a person's decision goes to the approvals queue, as from the pipeline's PublishAudit
    from meter.audit.flagged import flag

    item = flag(store, record, published.uri)
    if args.json:
        print(json.dumps({"uri": published.uri, "record_sha256": record["record_sha256"],
                          "created": published.created, "flagged_item": item["id"] if item else None}))  # fmt: skip
    else:
        state = "published" if published.created else "already published (identical): nothing written"
        print(f"{state}: {published.uri}")
        print(f"  lineage {record['lineage']['id']} #{record['sequence']}, verdict {record['verdict']['status']}")
        if item is not None:
            print(f"  flagged item {item['id']}: a decision is needed (flops-meter approvals show {item['id']})")
    return 0


# the extra that installs a missing library (pyproject.toml), for the one-line hint instead of an ImportError
EXTRAS = {
    "transformers": "hf",
    "peft": "hf",
    "accelerate": "hf",
    "pynvml": "gpu",
    "matplotlib": "report",
    "sagemaker": "pipeline",
    "boto3": "pipeline",
    "botocore": "pipeline",
    "aws_cdk": "infra",
    "constructs": "infra",
    "cdk_nag": "infra",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 success; 1 a crossed threshold or a broken audit store; 2 bad input; 3 an internal error;
    130 interrupted. Every failure is one line on stderr; FLOPS_METER_DEBUG=1 shows the traceback of the last two."""
    debug = os.environ.get("FLOPS_METER_DEBUG") == "1"
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        if debug:
            raise
        print("flops-meter: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: a bug, never a traceback at the user
        if debug:
            raise
        print(f"flops-meter: internal error: {type(e).__name__}: {_one_line(e) or '(no message)'} (please report it; "
              "FLOPS_METER_DEBUG=1 shows the traceback)", file=sys.stderr)  # fmt: skip
        return 3


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        _check_utf8(argv, parser)
        args = parser.parse_args(argv)
        return _run(args)
    except MeterError as e:
        print(f"flops-meter: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            raise
        if argv[:2] == ["pipeline", "demo"]:
            extra = "demo"  # the demo needs two extras: name the one that has both
        print(f"flops-meter: error: this command needs {top}, which is not installed: "
              f"pip install 'flops-meter[{extra}]'", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # `flops-meter … | head`: the reader left; nothing more to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.filename is None:
            raise
        from meter.jsonfile import os_problem

        print(f"flops-meter: error: {_one_line(os_problem(e, e.filename, 'file', 'use'))}", file=sys.stderr)
        return 2


def _check_utf8(argv: list[str], parser: argparse.ArgumentParser) -> None:
    """Arguments are UTF-8 text: bytes that are not (a Latin-1 terminal, a script in another encoding) reach
    Python as lone surrogates that would fail later, deep in a JSON writer or a hash. Named here instead."""
    takes_value = _value_options(parser)
    for index, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            value = arg
            if arg.startswith("--") and "=" in arg:
                name, _, value = arg.partition("=")
            elif index and argv[index - 1] in takes_value:
                name = argv[index - 1]
            else:
                name = f"argument {index + 1}"
            shown = value.encode("utf-8", "surrogateescape" if _escaped(value) else "backslashreplace")
            raise MeterError(
                f"{name} {shown!r} is not valid UTF-8: give UTF-8 text (check the terminal's encoding)"
            ) from None


def _escaped(arg: str) -> bool:
    try:
        arg.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of every (sub)command that take a value."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _value_options(sub)
        elif action.nargs != 0:
            found.update(action.option_strings)
    return found


def _run(args: argparse.Namespace) -> int:
    if args.command == "estimate":
        p = plan(args)
        if args.json:
            print(json.dumps(p.to_dict(), indent=2))
        else:
            print_plan(p)
    elif args.command == "models":
        list_models(args.json)
    elif args.command == "classify":
        return cmd_classify(args)
    elif args.command == "audit":
        return cmd_audit(args)
    elif args.command == "report":
        return cmd_report(args)
    elif getattr(args, "handler", None) is not None:  # a registered command group
        return args.handler(args)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
