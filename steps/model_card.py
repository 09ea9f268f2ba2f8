"""The model card that RegisterModel attaches to a model package: the compliance figures of an audit record, in
SageMaker's model package card shape. PublishAudit writes it beside the record; the approval workflow sends it when
it registers a model that was blocked and then approved.
"""

from __future__ import annotations

import json
from typing import Any


def model_card(record: dict[str, Any], model_uri: str | None) -> str:
    """A SageMaker model package model card (JSON text) with the compliance figures of a record.

    Model package cards take model_overview (model_creator, model_artifact), training_details and
    additional_information; custom_details values are strings.
    """
    verdict, run = record["verdict"], record["run"]
    figures = verdict.get("figures", {})
    rule = verdict.get("threshold_rule")
    observations = (
        f"Fine-tuning compute {figures.get('this_run', '?')} (regulatory count), lineage total "
        f"{figures.get('cumulative', '?')}, threshold {figures.get('threshold', '?')} ({rule}). "
        f"Verdict: {verdict['status']}. Counted by flops-meter; record {record['record_sha256']}."
    )
    details = {
        "flops_meter_status": verdict["status"],
        "flops_meter_crossed": "true" if verdict["crossed"] else "false",
        "flops_meter_regulatory_flops": str(run["flops"]["regulatory"]),
        "flops_meter_cumulative_flops": str(verdict["cumulative_flops"]),
        "flops_meter_threshold_flops": f"{verdict['threshold_flops']:.6e}",
        "flops_meter_threshold_rule": str(rule),
        "flops_meter_lineage": record["lineage"]["id"],
        "flops_meter_base_model": record["lineage"]["base_model"]["id"],
        "flops_meter_record_sha256": record["record_sha256"],
    }
    card = {
        "model_overview": {"model_creator": "flops-meter governed pipeline"},
        "training_details": {"training_observations": observations[:1024]},
        "additional_information": {
            "caveats_and_recommendations": str(verdict.get("threshold_citation", ""))[:2048],
            "custom_details": details,
        },
    }
    if model_uri:
        card["model_overview"]["model_artifact"] = [model_uri]
    return json.dumps(card, sort_keys=True)
