"""`flops-meter approvals …`: list, show, approve and reject flagged items (registered with the meter's command
line through the flops_meter.commands entry point). The workflow itself is pipelines/approvals.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meter.policy.thresholds import rule_text
from pipelines.approvals import STATUSES, Item, Outcome, decide, find_item, load_items


def add_parser(sub) -> None:
    from meter.audit.store import DEFAULT_STORE
    from pipelines.config import DEFAULT_HOME

    ap = sub.add_parser("approvals", help="decide on flagged models: list, show, approve, reject")
    ap.set_defaults(handler=run)
    asub = ap.add_subparsers(dest="approvals_command", required=True, parser_class=type(ap))

    def common(p, registry: bool = False) -> None:
        p.add_argument("--store", metavar="URI", help=f"audit store (default $FLOPS_METER_STORE or {DEFAULT_STORE})")
        if registry:
            p.add_argument(
                "--registry",
                choices=("local", "sagemaker"),
                help="model registry to update (default: local for a file:// store, sagemaker for s3://)",
            )
            p.add_argument("--home", default=DEFAULT_HOME, metavar="DIR", help="the local registry's home")
            p.add_argument("--region", help="AWS region of the SageMaker registry (default: your AWS config)")

    ls = asub.add_parser("list", help="flagged items and their status")
    common(ls)
    ls.add_argument("--status", choices=STATUSES, help="only items with this status")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.add_argument("--ids", action="store_true", help="print only the ids, one per line, oldest first (for scripts)")
    sh = asub.add_parser("show", help="one item: verdict, figures, record, report, decision")
    sh.add_argument("id", help="the item id (or a unique prefix; or its record's SHA-256)")
    common(sh)
    sh.add_argument("--home", default=DEFAULT_HOME, metavar="DIR", help="a local run's home: shows its files' paths")
    sh.add_argument("--json", action="store_true")
    decisions = {
        "approve": "approve an item: registers or approves its model",
        "reject": "reject an item: the model stays unregistered (or its package is rejected)",
    }
    for name, text in decisions.items():
        d = asub.add_parser(name, help=text)
        d.add_argument("id", help="the item id (or a unique prefix)")
        d.add_argument("--approver", required=True, metavar="NAME", help="who decides (recorded)")
        d.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded)")
        if name == "approve":
            d.add_argument(
                "--accept-provider-obligations",
                action="store_true",
                help="needed to approve a model that crossed the threshold: the organisation accepts the "
                "obligations of a GPAI model provider",
            )
        common(d, registry=True)
        d.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from meter.audit.store import open_store

    store = open_store(args.store)
    command = args.approvals_command
    if command == "list":
        items = [i for i in load_items(store) if args.status in (None, i.status)]
        if args.json:
            print(json.dumps([i.to_dict() for i in items], indent=2))
        elif args.ids:
            print("\n".join(i.id for i in items))
        else:
            print_items(items, store.uri)
        return 0
    if command == "show":
        item = find_item(store, args.id)
        if args.json:
            print(json.dumps(item.to_dict(), indent=2))
        else:
            print_item(item, args.store, Path(args.home))
        return 0
    from pipelines.registries import open_registry

    kind = args.registry or ("sagemaker" if store.uri.startswith("s3://") else "local")
    registry = open_registry(kind, home=Path(args.home), region=args.region)
    outcome = decide(
        store,
        registry,
        args.id,
        decision="approved" if command == "approve" else "rejected",
        approver=args.approver,
        reason=args.reason,
        accept_provider_obligations=getattr(args, "accept_provider_obligations", False),
    )
    if args.json:
        print(json.dumps({"id": outcome.item.id, "decision": outcome.decision, "decision_uri": outcome.decision_uri,
                          "model_package": outcome.package, "registry_action": outcome.action}))  # fmt: skip
    else:
        print_outcome(outcome, registry.where)
    return 0


def _console():
    from rich.console import Console

    return Console(highlight=False) if sys.stdout.isatty() else Console(width=140, highlight=False)


def print_items(items: list[Item], where: str) -> None:
    from rich.table import Table

    console = _console()
    if not items:
        console.print(f"no flagged items in {where}")
        return
    table = Table(title=f"flagged items in {where}")
    for col in ("id", "status", "verdict", "blocked", "lineage", "cumulative", "threshold", "flagged", "decided by"):
        table.add_column(col, overflow="fold")
    for i in items:
        figures = i.doc.get("figures") or {}
        who = f"{i.decision['approver']} ({i.decision['decided_at'][:16].replace('T', ' ')})" if i.decision else ""
        blocked = "yes" if i.doc["blocked"] else "no"
        row = (i.id, i.status, i.doc["verdict"], blocked, i.doc["lineage"], figures.get("cumulative", ""))
        flagged = (i.doc.get("flagged_at") or "")[:16].replace("T", " ")
        table.add_row(*row, figures.get("threshold", ""), flagged, who)
    console.print(table)
    if any(i.status == "pending" for i in items):
        console.print("decide with: flops-meter approvals show ID, then approvals approve|reject ID --approver NAME "
                      "--reason TEXT")  # fmt: skip


def _here(uri: str | None, home: Path) -> str:
    """An S3 URI, and where a local run keeps that object (HOME/objects/<bucket>/<key>) when it is there."""
    if not uri:
        return "-"
    local = home / "objects" / uri.removeprefix("s3://")
    return f"{uri}\n               here: {local}" if uri.startswith("s3://") and local.exists() else uri


def print_item(item: Item, store_flag: str | None, home: Path) -> None:
    console, doc = _console(), item.doc
    figures = doc.get("figures") or {}
    console.print(f"[bold]item {item.id}[/bold]: {item.status}")
    console.print(f"  verdict      {doc['verdict']}" + ("  (registration blocked)" if doc["blocked"] else ""))
    console.print(f"  lineage      {doc['lineage']} (base model {doc['base_model']}), run {doc['run_id']}")
    console.print(
        f"  compute      this run {figures.get('this_run', '?')}, lineage {figures.get('cumulative', '?')}, "
        f"threshold {figures.get('threshold', '?')} ({rule_text(doc.get('threshold_rule'))})"
    )
    console.print(f"  record       {doc['record_uri']}  (sha256 {doc['record_sha256']})")
    console.print(f"  report       {_here(doc.get('report_uri'), home)}")
    console.print(f"  model        {_here(doc.get('model_uri'), home)}")
    flag = f" --store {store_flag}" if store_flag else ""
    console.print(f"  full report  flops-meter report {doc['record_sha256'][:12]}{flag} --out report.html")
    d = item.decision
    if d:
        console.print(f"  decision     {d['decision']} by {d['approver']} at {d['decided_at']}: {d['reason']}")
        if d.get("accepted_provider_obligations"):
            console.print("               provider obligations accepted")
    else:
        accept = " --accept-provider-obligations" if doc["blocked"] else ""
        console.print(
            f"decide with: flops-meter approvals approve {item.id} --approver NAME --reason TEXT{accept}{flag}"
        )
        console.print(f"         or: flops-meter approvals reject {item.id} --approver NAME --reason TEXT{flag}")


def print_outcome(outcome: Outcome, where: str) -> None:
    d = outcome.decision
    if outcome.completed_earlier:
        print(f"item {outcome.item.id}: completing the decision recorded at {d['decided_at']}")
    print(f"item {outcome.item.id} {d['decision']} by {d['approver']}: decision recorded at {outcome.decision_uri}")
    effect = {
        "registered": f"model registered in {where} as {outcome.package} (Approved)",
        "approved": f"model package {outcome.package} set to Approved in {where}",
        "rejected": f"model package {outcome.package} set to Rejected in {where}",
        "nothing": "the model stays unregistered",
    }[outcome.action]
    print(f"  {effect}")
