"""`flops-meter estimate` and `flops-meter models`: plan a run before it runs, and list the bundled models."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from meter.errors import MeterError
from meter.policy.parts import DEFAULT_SCOPE


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
    lineage: str = ""
    prior: int = 0  # the lineage's compute recorded in the audit store before this plan
    store: str | None = None  # where it was read; None: no store

    @property
    def lineage_flops(self) -> int:
        return self.prior + self.count.regulatory_flops

    @property
    def count(self):
        return self.counts[self.selected][1]

    def headroom(self) -> tuple[float, float | None]:
        flops = self.threshold.flops - self.lineage_flops
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
            "lineage": self.lineage,
            "prior_lineage_flops": self.prior,
            "lineage_flops": self.lineage_flops,
            "crosses_threshold": self.threshold.crossed_by(self.lineage_flops),
            "fraction_of_threshold": self.lineage_flops / self.threshold.flops,
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
                f"model_type '{resolved.config.get('model_type')}' is outside the analytic engine: counted with "
                "rates FlopCounterMode measures on a meta-device copy (sliding windows and attention chunks credited)"
            )
    if measure:
        from meter.engine.measured_rates import cost_model

        measured = cost_model(resolved.config, setup, name=resolved.name)
        models = {"measured": (setup, measured)}
        measured_note = "; ".join(n for n in (measured_note, f"rates measured {measured.source}") if n)
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
    lineage, prior, store = _lineage_history(resolved.name, args)
    return Plan(resolved.name, note, spec, setup, counts, selected, stats, threshold, original,
                trainer.trainer, args.regulatory_scope, lineage, prior, store)  # fmt: skip


def _lineage_history(model: str, args) -> tuple[str, int, str | None]:
    """The plan adds up with the lineage's recorded jobs, as the verdict after training will (the same defaults as
    classify and EstimateFLOPs: the lineage is the base model; the store, $FLOPS_METER_STORE or the local one).
    Reading creates nothing: without a store, nothing is recorded yet."""
    from meter.audit.store import open_store
    from meter.policy.governance import base_and_lineage

    _, lineage = base_and_lineage(model, getattr(args, "lineage", None))
    store = open_store(getattr(args, "store", None), create=False)
    if store is None:
        return lineage, 0, None
    return lineage, store.lineage_flops(lineage), store.uri


def _upper_quarter(spec) -> str:
    """The illustrative freeze plan when none is given: the top quarter of the layers trainable."""
    from meter.engine.graph import layers_regex

    return layers_regex(spec, range(spec.num_layers - max(1, spec.num_layers // 4), spec.num_layers))


def make_console():
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

    console = make_console()
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
    if p.prior:
        console.print(
            f"lineage {p.lineage}: {two_significant(p.prior)} recorded in {p.store} before this plan; with it, "
            f"{two_significant(p.lineage_flops)}"
        )
    if t.crossed_by(p.lineage_flops):
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
    console = make_console()
    console.print(table)
    console.print(
        "[dim]Sources, dates, uncertainties and how each figure was resolved: flops-meter models --json. "
        "Resolution: given > reported > estimated (Annex A.2) > fallback (Guidelines §3.2, para 64).[/dim]"
    )
