"""The model registries an approval acts on: the local runner's (SQLite) and SageMaker's Model Registry.

Both answer the same three questions the approval workflow asks:

    package_of(item)              the package that carries the item's record (flops_meter:record_sha256), if any
    register(request)             CreateModelPackage (a blocked model, approved: registered as Approved)
    set_status(arn, status, ...)  UpdateModelPackage (an approaching model's package: Approved or Rejected)

A package is found by its record hash, so an approval that was interrupted between the decision and the
registry can be completed by running the same command again.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Protocol

from meter.errors import MeterError

RECORD_KEY = "flops_meter:record_sha256"


_METADATA_PUNCTUATION = frozenset("_.:/+-@")  # with letters, numbers and spaces: inside the API's pattern


def metadata_value(text: str, limit: int = 256) -> str:
    """A string as a CustomerMetadataProperties value: the API allows letters, numbers, spaces and ``_.:/=+-@``
    only. Anything else is written ``=XX`` (its UTF-8 bytes in hex, "=" itself included), so
    ``O'Brien, Mary (DPO)`` becomes ``O=27Brien=2C Mary =28DPO=29``: readable, reversible, accepted. Whitespace
    other than a space is encoded too. Cut at ``limit`` characters, never inside an escape."""
    out, size = [], 0
    for ch in str(text):
        safe = ch == " " or ch.isalnum() or ch in _METADATA_PUNCTUATION
        piece = ch if safe else "".join(f"={b:02X}" for b in ch.encode())
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def description_text(text: str, limit: int = 1024) -> str:
    """A string as an API description (one line: the API's patterns do not match line breaks or control
    characters): each run of whitespace or control characters becomes one space; cut at ``limit``."""
    cleaned = "".join(" " if (ch.isspace() or unicodedata.category(ch).startswith("C")) else ch for ch in str(text))
    return re.sub(r" {2,}", " ", cleaned).strip()[:limit]


def verdict_metadata(
    *, regulatory: Any, cumulative: Any, threshold: Any, rule: Any, status: Any, record_uri: Any, record_sha256: Any
) -> dict[str, Any]:
    """The customer metadata a package carries about its verdict and record (values: strings, or pipeline
    expressions that resolve to strings)."""
    return {
        "flops_meter:regulatory_flops": regulatory,
        "flops_meter:cumulative_flops": cumulative,
        "flops_meter:threshold_flops": threshold,
        "flops_meter:threshold_rule": rule,
        "flops_meter:status": status,
        "flops_meter:record_uri": record_uri,
        RECORD_KEY: record_sha256,
    }


SERVING_ENVIRONMENT = {"HF_MODEL_ID": "/opt/ml/model"}


def model_package_request(
    *,
    group: Any,
    image: Any,
    model_data_url: Any,
    status: str,
    metadata: dict[str, Any],
    model_card: Any = None,
    description: str | None = None,
) -> dict[str, Any]:
    """CreateModelPackage: what the pipeline's RegisterModel step sends, and what an approval registers with."""
    request: dict[str, Any] = {"ModelPackageGroupName": group}
    if description:
        request["ModelPackageDescription"] = description
    request |= {
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            # the serving container (TGI) loads the model directory SageMaker unpacks model.tar.gz into
            "Containers": [{"Image": image, "ModelDataUrl": model_data_url, "Environment": SERVING_ENVIRONMENT}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "CustomerMetadataProperties": metadata,
    }
    if model_card:
        request["ModelCard"] = {"ModelCardContent": model_card, "ModelCardStatus": "Draft"}
    return request


class Registry(Protocol):
    where: str

    def package_of(self, item: dict[str, Any]) -> dict[str, Any] | None: ...
    def register(self, request: dict[str, Any]) -> str: ...
    def set_status(self, arn: str, status: str, description: str, metadata: dict[str, str]) -> None: ...


class LocalModelRegistry:
    """HOME/registry.db, what `pipeline run --local` registers into."""

    def __init__(self, home: Path):
        from pipelines.local.registry import LocalRegistry

        self.registry = LocalRegistry(Path(home) / "registry.db")
        self.where = f"the local registry {self.registry.path}"

    def package_of(self, item: dict[str, Any]) -> dict[str, Any] | None:
        found = [p for p in self.registry.packages() if p["metadata"].get(RECORD_KEY) == item["record_sha256"]]
        if not found:
            return None
        p = found[-1]
        return {"arn": p["arn"], "status": p["approval_status"], "metadata": p["metadata"]}

    def register(self, request: dict[str, Any]) -> str:
        return self.registry.register(request, execution_id="approval")

    def set_status(self, arn: str, status: str, description: str, metadata: dict[str, str]) -> None:
        self.registry.update(arn, status, description, metadata)


_REGION_FIX = "give --region, or set AWS_REGION"


class SageMakerRegistry:
    """SageMaker's Model Registry (boto3; the caller's credentials and region)."""

    def __init__(self, region: str | None = None):
        try:
            import boto3
        except ImportError:
            raise MeterError("the SageMaker registry needs boto3: pip install 'flops-meter[pipeline]'") from None
        from botocore.exceptions import BotoCoreError

        from meter.audit.aws import aws_error, boto_config

        try:
            self.client = boto3.session.Session(region_name=region).client("sagemaker", config=boto_config())
        except BotoCoreError as e:
            raise (aws_error(e, "SageMaker's Model Registry", _REGION_FIX) or e) from None
        self.where = f"SageMaker's Model Registry ({self.client.meta.region_name})"

    def _call(self, name: str, **kwargs) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        from meter.audit.aws import aws_error
        from pipelines.requests import problems

        # every constraint of the API, checked before the call: botocore checks types only, and a refused
        # registration after the decision was recorded could never be completed
        found = problems(self.client.meta.method_to_api_mapping[name], kwargs)
        if found:
            raise MeterError(f"{self.where}: {name} would be refused: {found[0]}")
        try:
            return getattr(self.client, name)(**kwargs)
        except (BotoCoreError, ClientError) as e:
            raise (aws_error(e, self.where, _REGION_FIX, any_code=True) or e) from None

    def package_of(self, item: dict[str, Any]) -> dict[str, Any] | None:
        group = item.get("model_package_group")
        if not group:
            raise MeterError(f"item {item['id']} names no model package group: it was flagged by an older PublishAudit")
        token = None
        while True:  # newest first: the package of a record is one of the latest of its group
            page = self._call(
                "list_model_packages",
                ModelPackageGroupName=group,
                SortBy="CreationTime",
                SortOrder="Descending",
                **({"NextToken": token} if token else {}),
            )
            for summary in page.get("ModelPackageSummaryList", []):
                described = self._call("describe_model_package", ModelPackageName=summary["ModelPackageArn"])
                metadata = described.get("CustomerMetadataProperties") or {}
                if metadata.get(RECORD_KEY) == item["record_sha256"]:
                    return {"arn": described["ModelPackageArn"], "status": described.get("ModelApprovalStatus"),
                            "metadata": metadata}  # fmt: skip
            token = page.get("NextToken")
            if not token:
                return None

    def register(self, request: dict[str, Any]) -> str:
        return self._call("create_model_package", **request)["ModelPackageArn"]

    def set_status(self, arn: str, status: str, description: str, metadata: dict[str, str]) -> None:
        current = self._call("describe_model_package", ModelPackageName=arn).get("CustomerMetadataProperties") or {}
        self._call(
            "update_model_package",
            ModelPackageArn=arn,
            ModelApprovalStatus=status,
            ApprovalDescription=description,
            CustomerMetadataProperties={**current, **metadata},  # sent whole: some implementations replace them
        )


def open_registry(kind: str, *, home: Path, region: str | None = None) -> Registry:
    if kind == "local":
        return LocalModelRegistry(home)
    if kind == "sagemaker":
        return SageMakerRegistry(region)
    raise MeterError(f"registry {kind!r}: use local or sagemaker")
