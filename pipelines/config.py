"""Where the governed pipeline lives in an account: names, buckets, images, role. One file, no AWS call.

The definition is a pure function of this configuration and the package's code, so the same inputs give the
same bytes. Defaults describe the bundled demo; `flops-meter pipeline definition --config FILE` (JSON or YAML)
overrides any field, and the CDK app writes the file it deploys with.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from meter.errors import MeterError


@dataclass(frozen=True)
class PipelineConfig:
    pipeline_name: str = "flops-meter-governed"
    region: str = "us-east-1"
    bucket: str = "flops-meter-artifacts"
    prefix: str = "flops-meter"
    role_arn: str = "arn:aws:iam::111122223333:role/flops-meter-execution"
    # step roles; empty: role_arn. The CDK app gives each step only what it needs (role_arn: the analysis steps)
    training_role_arn: str = ""
    audit_role_arn: str = ""
    audit_store_uri: str = "s3://flops-meter-audit/records?table=flops-meter-ledger"
    # empty: the image the SDK publishes for the region (pipelines/images.py); else an ECR URI ({region} filled in)
    training_image: str = ""
    processing_image: str = ""
    inference_image: str = ""
    processing_instance_type: str = "ml.m5.xlarge"
    model_package_group: str = "flops-meter-models"
    kms_key_id: str = ""
    max_runtime_seconds: int = 24 * 3600
    training_volume_gb: int = 100  # the training job's EBS volume: model, checkpoints (NVMe instances use theirs)
    processing_volume_gb: int = 30  # EstimateFLOPs downloads the dataset; the other two steps read only the record
    hf_token_secret_arn: str = ""  # Secrets Manager secret with a Hugging Face token (gated models from the hub)
    spot_training: bool = False  # managed spot training; an interrupted job resumes from its checkpoints
    max_wait_seconds: int = 0  # spot: how long to wait for capacity and run, in all; 0: twice max_runtime_seconds

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
        doc: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise MeterError(f"pipeline config {p} not found: give a JSON or YAML file")
            import yaml

            try:
                loaded = yaml.safe_load(p.read_text())  # JSON is YAML
            except yaml.YAMLError as e:
                raise MeterError(f"pipeline config {p} is not valid JSON or YAML: {e}") from None
            if not isinstance(loaded, dict):
                raise MeterError(f"pipeline config {p} must be a mapping of settings")
            doc = loaded
        doc.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise MeterError(f"unknown pipeline setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
        for name, value in doc.items():
            want = {"int": int, "bool": bool}.get(str(known[name].type), str)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise MeterError(f"pipeline setting {name} must be a {want.__name__}, got {value!r}")
        for name in ("max_runtime_seconds", "training_volume_gb", "processing_volume_gb"):
            if doc.get(name, 1) <= 0:
                raise MeterError(f"pipeline setting {name} must be positive, got {doc[name]}")
        if doc.get("max_wait_seconds", 0) and doc["max_wait_seconds"] < doc.get("max_runtime_seconds", 24 * 3600):
            raise MeterError("pipeline setting max_wait_seconds must be at least max_runtime_seconds (or 0)")
        secret = doc.get("hf_token_secret_arn", "")
        if secret and not re.fullmatch(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+", secret):
            raise MeterError(f"pipeline setting hf_token_secret_arn {secret!r} is not a Secrets Manager secret ARN")
        config = cls(**doc)
        for name in ("pipeline_name", "region", "bucket", "role_arn"):
            if not getattr(config, name):
                raise MeterError(f"pipeline setting {name} is empty: set it in the config file")
        return config

    def role(self, step: str) -> str:
        """The role a step's job runs as: "training", "audit", or the analysis steps' role_arn."""
        return {"training": self.training_role_arn, "audit": self.audit_role_arn}.get(step) or self.role_arn

    def image(self, kind: str) -> str:
        """The URI of the "training", "processing" or "inference" image in this region."""
        given = getattr(self, f"{kind}_image")
        if given:
            return given.format(region=self.region)
        from pipelines.images import image_uri

        return image_uri(kind, self.region)

    def s3(self, *parts: str) -> str:
        """s3://bucket/prefix/parts…"""
        return "s3://" + "/".join(p.strip("/") for p in (self.bucket, self.prefix, *parts) if p)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
