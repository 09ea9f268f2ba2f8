"""Where the governed pipeline lives in an account: names, buckets, images, role. One file, no AWS call.

The definition is a pure function of this configuration and the package's code, so the same inputs give the
same bytes. Defaults describe the bundled demo; `flops-meter pipeline definition --config FILE` (JSON or YAML)
overrides any field, and the CDK app writes the file it deploys with.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from meter.audit.store import DEFAULT_STORE
from meter.errors import MeterError

# The local runner's home (`pipeline run --local`, `pipeline demo`, the local registry of `approvals`): the directory
# of the meter's default audit store, so that local runs, `audit` and `approvals` share one store with no flags.
DEFAULT_HOME = str(PurePosixPath(DEFAULT_STORE.removeprefix("file://")).parent)  # flops-meter-local

# the forms SageMaker, S3 and IAM accept (botocore's service model; S3's bucket naming rules)
_FORMS = {
    "pipeline_name": (r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}", "a SageMaker pipeline name (letters, digits, hyphens)"),
    "model_package_group": (r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", "a model package group name (letters, digits, -)"),
    "region": (r"[a-z]{2}(-[a-z]+)+-\d+", "an AWS region (e.g. eu-west-1)"),
    "bucket": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name (lower case, digits, '.', '-')"),
    "prefix": (r"[A-Za-z0-9!_.*'()/-]{0,512}", "an S3 key prefix (letters, digits, !_.*'()/-)"),
    "role_arn": (r"arn:aws[a-z-]*:iam::\d{12}:role/.+", "an IAM role ARN"),
    "training_role_arn": (r"arn:aws[a-z-]*:iam::\d{12}:role/.+", "an IAM role ARN"),
    "audit_role_arn": (r"arn:aws[a-z-]*:iam::\d{12}:role/.+", "an IAM role ARN"),
    "processing_instance_type": (r"ml\.[a-z0-9-]+\.[a-z0-9]+", "a SageMaker instance type (e.g. ml.m5.xlarge)"),
    "hf_token_secret_arn": (
        r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+",
        "a Secrets Manager secret ARN",
    ),
}
_RANGES = {
    # the steps share one runtime limit: a processing job's is 9 days at most (CreateProcessingJob)
    "max_runtime_seconds": (1, 777_600, "SageMaker's processing jobs stop at 9 days"),
    "training_volume_gb": (1, 16_384, "SageMaker's EBS volume sizes"),
    "processing_volume_gb": (1, 16_384, "SageMaker's EBS volume sizes"),
    "max_wait_seconds": (0, 2_419_200, "0, or up to SageMaker's 28 days"),
}
# REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]; the registry a host name (ECR: ACCOUNT.dkr.ecr.REGION.amazonaws.com)
_IMAGE = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+(:\d+)?"
    r"/[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})?"
)


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
            import yaml

            from meter.jsonfile import read_text

            p = Path(path)
            text = read_text(p, "pipeline config", "give a JSON or YAML file")
            try:
                loaded = yaml.safe_load(text)  # JSON is YAML
            except yaml.YAMLError as e:
                raise MeterError(f"pipeline config {p} is not valid JSON or YAML: {' '.join(str(e).split())}") from None
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
        return cls(**doc)

    def __post_init__(self) -> None:
        """Every value the definition is built from, checked here: SageMaker would refuse it only when the job
        starts, after the pipeline was deployed and often after training was paid for."""
        for name in ("pipeline_name", "region", "bucket", "role_arn", "audit_store_uri"):
            if not getattr(self, name):
                raise MeterError(f"pipeline setting {name} is empty: set it in the config file")
        for name, (pattern, what) in _FORMS.items():
            value = getattr(self, name)
            if value and not re.fullmatch(pattern, value):
                raise MeterError(f"pipeline setting {name} {value!r} is not {what}")
        for name, (low, high, why) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise MeterError(f"pipeline setting {name} must be in {low}..{high} ({why}), got {value}")
        if self.max_wait_seconds and self.max_wait_seconds < self.max_runtime_seconds:
            raise MeterError("pipeline setting max_wait_seconds must be at least max_runtime_seconds (or 0)")
        for kind in ("training", "processing", "inference"):
            self._check_image(kind)
        self._check_store()

    def _check_image(self, kind: str) -> None:
        given = getattr(self, f"{kind}_image")
        if not given:
            return
        try:
            uri = given.format(region=self.region)
        except (KeyError, IndexError, ValueError):
            raise MeterError(
                f"pipeline setting {kind}_image {given!r}: the only placeholder allowed is {{region}}"
            ) from None
        if not _IMAGE.fullmatch(uri):
            raise MeterError(
                f"pipeline setting {kind}_image {given!r} is not an image URI: use "
                "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or @sha256:DIGEST)"
            )

    def _check_store(self) -> None:
        uri = self.audit_store_uri
        scheme = uri.partition("://")[0] if "://" in uri else ""
        if scheme == "file" and uri.removeprefix("file://"):
            return
        if scheme == "s3":
            from meter.audit.store import open_store

            try:
                open_store(uri, create=False)  # parses the URI; no AWS call
            except MeterError as e:
                raise MeterError(f"pipeline setting audit_store_uri: {e}") from None
            return
        raise MeterError(
            f"pipeline setting audit_store_uri {uri!r} is not an audit store: use "
            "s3://BUCKET/PREFIX?table=LEDGER_TABLE (or file://DIR for local runs)"
        )

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
