"""After a run: its verdict (with the lineage's earlier runs) and its audit record — shared by the CLI and the
SageMaker step entrypoints, so that both apply exactly the same logic."""

from __future__ import annotations

import itertools
from typing import Any

from meter.errors import MeterError
from meter.policy.compliance import Verdict, classify
from meter.policy.original import OriginalCompute

# the fields of a run record (flops_meter.json) and of a compliance document that the verdict and the record read:
# a file where one of them has the wrong kind is refused naming the field (meter.jsonfile.check_shape)
RUN_FIELDS = {
    "record_type": "string",
    "run_id": "string",
    "status": "string",
    "model": "object",
    "model.name": "string",
    "flops": "object",
    "flops.regulatory": "integer+",
    "flops.executed": "integer+",
    "flops.per_token": "number+",
    "flops.parts": "object",
    "tokens": "object",
    "tokens.tokens": "integer+",
    "timeline": "array",
    "forecast": "object",
    "forecast.final_regulatory_flops": "number+",
}
COMPLIANCE_FIELDS = {
    "run_id": "string",
    "lineage": "string",
    "base_model": "string",
    "status": "string",
    "approaching_fraction": "number",
    "original": "object",
    "original.basis": "string",
    "original.flops": "number+",
    "original.source": "string",
    "original.systemic_risk": "boolean",
    "notes": "array",
}


def base_and_lineage(base_model: str | None, lineage: str | None, run: dict[str, Any] | None = None) -> tuple[str, str]:
    """The base model (as given, else the run record's model, else "unknown") and the lineage whose jobs add up
    (as given, else the base model: the conservative reading, which sums every job on one model). The one place
    for these defaults: the CLI, the steps and publication all call it."""
    base = base_model or ((run or {}).get("model") or {}).get("name") or "unknown"
    return base, lineage or base


def check_run_shape(run: dict[str, Any], where: str) -> None:
    """A run record's fields have the kinds the verdict reads (a MeterError naming ``where`` and the field)."""
    from meter.jsonfile import check_shape

    check_shape(run, RUN_FIELDS, where)
    parts = (run.get("flops") or {}).get("parts") or {}
    for name, part in parts.items():
        if not isinstance(part, dict):
            raise MeterError(f"{where}: flops.parts.{name} must be a JSON object")
        check_shape(part, {"regulatory_flops": "integer+", "executed_flops": "integer+", "tokens": "integer+"},
                    f"{where}: flops.parts.{name}")  # fmt: skip
    for index, point in enumerate(run.get("timeline") or []):
        if not isinstance(point, dict):
            raise MeterError(f"{where}: timeline[{index}] must be a JSON object")
        check_shape(point, {"regulatory_flops": "integer+"}, f"{where}: timeline[{index}]")


def check_compliance_shape(compliance: dict[str, Any], where: str) -> None:
    """A compliance document's fields have the kinds publishing reads (a MeterError naming ``where``)."""
    from meter.jsonfile import check_shape

    check_shape(compliance, COMPLIANCE_FIELDS, where)
    fraction = compliance.get("approaching_fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise MeterError(f"{where}: approaching_fraction must be in (0, 1], got {fraction!r}")
    original = compliance.get("original") or {}
    if original.get("basis") == "user" and original.get("flops") is None:
        raise MeterError(f"{where}: original.flops is missing: a figure the user gave (basis 'user') needs it")


def run_verdict(
    run: dict[str, Any],
    original: OriginalCompute,
    *,
    lineage: str,
    store=None,
    approaching_fraction: float = 0.8,
    prior: int | None = None,
) -> Verdict:
    """The verdict of a run record, counted with the lineage's earlier runs: ``prior`` when given (a total read
    atomically with the append), else those in ``store`` (this run excluded)."""
    if prior is None:
        prior = 0
        if store is not None:
            prior = sum(e.regulatory_flops for e in store.entries(lineage) if e.record_id != run.get("run_id"))
    flops = run.get("flops") or {}
    if run.get("status") == "not_counted":
        raise MeterError(
            f"the run was not counted ({run.get('reason')}): no verdict can be given. Count it with "
            "`flops-meter estimate` and give the figure, or fix the cause and train again"
        )
    regulatory = flops.get("regulatory")
    if isinstance(regulatory, bool) or not isinstance(regulatory, int):
        raise MeterError("run record has no integer flops.regulatory: is it a flops_meter.json?")
    forecast = (run.get("forecast") or {}).get("final_regulatory_flops") if run.get("status") == "running" else None
    return classify(
        regulatory,
        original,
        prior_lineage_flops=prior,
        forecast_flops=forecast,
        flops_per_token=flops.get("per_token"),
        approaching_fraction=approaching_fraction,
    )


def compliance_document(verdict: Verdict, *, lineage: str, base_model: str, run_id: str | None) -> dict[str, Any]:
    """compliance.json: the verdict plus what a pipeline condition reads (crossed, status, flops, threshold)."""
    doc = verdict.to_dict()
    return {**doc, "lineage": lineage, "base_model": base_model, "run_id": run_id, "metadata": verdict_metadata(doc)}


def verdict_metadata(verdict: dict[str, Any]) -> dict[str, str]:
    """Strings for model-package metadata (exact integers: no float rounding on the way), from a verdict document
    (a compliance file's, or the one sealed in a record)."""
    threshold = verdict.get("threshold_integer")
    return {
        "regulatory_flops": str(verdict["regulatory_flops"]),
        "cumulative_flops": str(verdict["cumulative_flops"]),
        "threshold_flops": str(threshold if threshold is not None else verdict["threshold_flops"]),
        "status": verdict["status"],
    }


def publish(
    store,
    run: dict[str, Any],
    compliance: dict[str, Any],
    *,
    revision: str | None = None,
    parents: list[str] | None = None,
    dataset: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
):
    """Append a run and its verdict (a compliance document) to the audit store."""
    from meter.audit.chain import draft_record

    if compliance.get("run_id") not in (None, run.get("run_id")):
        raise MeterError(f"the verdict is of run {compliance['run_id']}, not of {run.get('run_id')}")
    check_run(run)
    base, lineage = base_and_lineage(compliance.get("base_model"), compliance.get("lineage"), run)
    original = _original(compliance, base)

    def verdict_for(prior: int) -> dict[str, Any]:
        checked = checked_compliance(run, compliance, original, base=base, lineage=lineage, prior=prior)
        return _verdict_part(checked)

    draft = draft_record(
        run, _verdict_part(compliance), lineage_id=lineage, base_model=base, base_revision=revision,
        parent_records=parents, dataset=dataset, code=code,
    )  # fmt: skip
    return store.publish(draft, verdict_for=verdict_for)


def _verdict_part(compliance: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in compliance.items() if k not in ("lineage", "base_model", "run_id", "metadata")}


# the fields a verdict is decided by: a compliance file that disagrees on any of them is not what the record and
# the store give
_DECIDING = ("status", "crossed", "regulatory_flops", "prior_lineage_flops", "cumulative_flops", "threshold_flops",
             "threshold_rule", "notification_required")  # fmt: skip


def _original(compliance: dict[str, Any], base: str) -> OriginalCompute:
    """The original's compute a compliance document rests on, looked up again unless the user gave it."""
    given = compliance.get("original") or {}
    if given.get("basis") == "user":  # a figure the user gave: recorded as given, it cannot be looked up
        return OriginalCompute(given["flops"], "user", given.get("source") or "given", given.get("systemic_risk"))
    from meter.policy.original import resolve_original

    return resolve_original(base, systemic_risk=True if given.get("systemic_risk") else None)


def checked_compliance(
    run: dict[str, Any], compliance: dict[str, Any], original: OriginalCompute, *, base: str, lineage: str, prior: int
) -> dict[str, Any]:
    """The verdict to seal: the given compliance document when it is what the record and the lineage's total
    ``prior`` give, else the verdict recomputed from them (an edited compliance.json, or earlier runs of the lineage
    published since it was classified), with a note saying what the given one said."""
    given = compliance.get("original") or {}
    fraction = compliance.get("approaching_fraction", 0.8)
    verdict = run_verdict(run, original, lineage=lineage, approaching_fraction=fraction, prior=prior)
    recomputed = compliance_document(verdict, lineage=lineage, base_model=base, run_id=run.get("run_id"))
    differs = [k for k in _DECIDING if compliance.get(k) != recomputed.get(k)]
    if (given.get("flops") or None) != (original.flops or None):
        differs.append("original")
    if not differs:
        return compliance
    said = f"status {compliance.get('status')}, cumulative {compliance.get('cumulative_flops')}"
    recomputed["notes"] = [
        *recomputed["notes"],
        f"Recomputed at publication from the run record and the audit store: the compliance document given said "
        f"{said} ({', '.join(differs)} differed).",
    ]
    return recomputed


def check_run(run: dict[str, Any]) -> None:
    """A run record whose figures disagree with each other is refused (one line): regulatory and executed counts,
    the parts they sum, the timeline they end, the training tokens."""
    flops = run.get("flops") or {}
    regulatory, executed = flops.get("regulatory"), flops.get("executed")
    for name, value in (("regulatory", regulatory), ("executed", executed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MeterError(f"run record flops.{name}={value!r} is not a non-negative integer: is it a "
                             "flops_meter.json?")  # fmt: skip
    problems = []
    if executed < regulatory:
        problems.append(f"executed {executed} is below regulatory {regulatory}")
    parts = flops.get("parts")
    if isinstance(parts, dict) and parts:
        included = sum(p.get("regulatory_flops", 0) for p in parts.values() if p.get("included"))
        ran = sum(p.get("executed_flops", 0) for name, p in parts.items() if name != "evaluation")
        if included != regulatory:
            problems.append(f"regulatory {regulatory} is not the sum of its included parts ({included})")
        if ran != executed:
            problems.append(f"executed {executed} is not the sum of its parts ({ran})")
        training = parts.get("training") or {}
        tokens = (run.get("tokens") or {}).get("tokens")
        if "tokens" in training and tokens is not None and training["tokens"] != tokens:
            problems.append(f"tokens {tokens} differ from the training part's {training['tokens']}")
    timeline = run.get("timeline") or []
    if timeline and run.get("status") in ("completed", "stopped_by_budget"):
        last = timeline[-1].get("regulatory_flops")
        if last != regulatory:
            problems.append(f"regulatory {regulatory} differs from the end of its timeline ({last})")
        series = [t.get("regulatory_flops", 0) for t in timeline]
        if any(b < a for a, b in itertools.pairwise(series)):
            problems.append("its timeline decreases")
    if problems:
        raise MeterError(f"run record {run.get('run_id')} is inconsistent: {'; '.join(problems)}: refused")
