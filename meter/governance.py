"""After a run: its verdict (with the lineage's earlier runs) and its audit record — shared by the CLI and the
SageMaker step entrypoints, so that both apply exactly the same logic."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from meter.compliance import OriginalCompute, Verdict, classify
from meter.errors import MeterError


def original_compute(
    base_model: str, pretrain_flops: float | str | None, systemic_risk: bool = False, *, label: str = "PretrainFlops"
) -> OriginalCompute:
    """The original's compute with its basis: user-given, the bundled table, or unknown.

    ``label`` names the input in error messages as the user gave it (--pretrain-flops, PretrainFlops).
    """
    from meter.catalog import pretrain_compute
    from meter.thresholds import check_flops

    sr = True if systemic_risk else None
    if pretrain_flops is not None and str(pretrain_flops).strip() != "":
        flops = check_flops(pretrain_flops, label)
        return OriginalCompute(flops, "user", f"given as {label}", sr)
    published = pretrain_compute(base_model)
    if published is None or published.flops is None:
        why = published.source if published is not None else "not in the bundled table"
        return OriginalCompute(None, "unknown", f"{base_model}: {why}", sr)
    detail = f"{published.model_id}: {published.basis}; {published.source}; {published.date}"
    return OriginalCompute(published.flops, "table", detail + (f" ({published.note})" if published.note else ""), sr)


def run_verdict(
    run: dict[str, Any],
    original: OriginalCompute,
    *,
    lineage: str,
    store=None,
    approaching_fraction: float = 0.8,
) -> Verdict:
    """The verdict of a run record, counted with the lineage's earlier runs in ``store`` (this run excluded)."""
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
    metadata = {  # strings, for model-package metadata (exact integers: no float rounding on the way)
        "regulatory_flops": str(verdict.regulatory_flops),
        "cumulative_flops": str(verdict.cumulative_flops),
        "threshold_flops": str(verdict.threshold_flops),
        "status": verdict.status,
    }
    return {**verdict.to_dict(), "lineage": lineage, "base_model": base_model, "run_id": run_id, "metadata": metadata}


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
    from meter.audit import draft_record

    if compliance.get("run_id") not in (None, run.get("run_id")):
        raise MeterError(f"the verdict is of run {compliance['run_id']}, not of {run.get('run_id')}")
    base = compliance.get("base_model") or (run.get("model") or {}).get("name") or "unknown"
    lineage = compliance.get("lineage") or base
    verdict = {k: v for k, v in compliance.items() if k not in ("lineage", "base_model", "run_id", "metadata")}
    draft = draft_record(
        run, verdict, lineage_id=lineage, base_model=base, base_revision=revision,
        parent_records=parents, dataset=dataset, code=code,
    )  # fmt: skip
    return store.publish(draft)


def file_identity(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a local data file."""
    p = Path(path)
    if not p.is_file():
        raise MeterError(f"dataset file not found: {p}")
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size_bytes": p.stat().st_size, "sha256": digest.hexdigest()}
