"""`flops-meter classify`, `audit` and `report`: a run record held against the rule, sealed, verified, shown."""

from __future__ import annotations

import json
from typing import Any

from meter.cli.estimate import make_console
from meter.cli.parser import default_store
from meter.errors import MeterError


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
    from meter.policy.governance import base_and_lineage, run_verdict
    from meter.policy.original import resolve_original

    base, lineage = base_and_lineage(args.base_model, args.lineage, run)
    original = resolve_original(base, args.pretrain_flops, systemic_risk=args.original_systemic_risk or None)
    verdict = run_verdict(
        run, original, lineage=lineage, store=store, approaching_fraction=getattr(args, "approaching", 0.8)
    )
    return base, lineage, verdict


def cmd_classify(args) -> int:
    run = _read_run(args.run)
    from meter.audit.store import open_store
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

    console = make_console()
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
    from meter.audit.store import open_store

    if args.audit_command in ("verify", "heads"):
        # reading must not create: a typo in --store is an error, never an empty store reported intact
        store = open_store(args.store, create=False)
        if store is None:
            raise MeterError(f"no audit store at {args.store or default_store()}: give --store (or FLOPS_METER_STORE)")
    else:
        store = open_store(args.store)
    if args.audit_command == "heads":
        from meter.audit.verify import chain_heads

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

    from meter.audit.store import open_store
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

    from meter.digests import dataset_identity
    from meter.policy.governance import compliance_document, publish

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
        dataset.update(dataset_identity(args.dataset_file, what="dataset file", directories=False))
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
