"""A PipelineSession that builds definitions offline and deterministically.

The SDK's own session checks or creates the default bucket and uploads local code under timestamped keys while
a definition is built. This one answers ``default_bucket()`` from the configuration and turns every
``upload_data`` into a content address (recorded, not uploaded): the same code gives the same definition, and
``upload-code`` later puts the recorded artifacts where the definition says they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from pipelines.code import Artifact, read_tree
from pipelines.config import PipelineConfig
from pipelines.sdk_compat import channel_name, pin_driver_source_dir, validate_config_once

# The SDK's user config: no telemetry thread (it calls STS and an HTTPS endpoint from decorated calls).
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
_OFFLINE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",  # no probe of 169.254.169.254 when there are no credentials
    "SAGEMAKER_VALIDATE_ROLE": "false",  # no iam:SimulatePrincipalPolicy
}


@contextlib.contextmanager
def sdk_environment(region: str) -> Iterator[None]:
    """Import and use the SDK without touching the network or the caller's logging; restored on exit."""
    saved_env = {k: os.environ.get(k) for k in (*_OFFLINE_ENV, "AWS_DEFAULT_REGION")}
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    os.environ.update(_OFFLINE_ENV)
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    saved_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the SDK's INFO and WARNING lines describe its own defaults, not our build
    restore = None
    try:  # everything changed above is undone, also when the SDK cannot be imported
        restore = validate_config_once()  # an SDK internal: see pipelines.sdk_compat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if restore is not None:
            restore()
        logging.disable(saved_disable)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        root.setLevel(saved_root[0])  # the SDK's import calls logging.basicConfig(level=INFO)
        root.handlers[:] = saved_root[1]


def offline_session(config: PipelineConfig):
    """A PipelineSession whose bucket and uploads are resolved from the configuration, with no AWS call."""
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    from meter.audit.aws import boto_config

    class OfflinePipelineSession(PipelineSession):
        def __init__(self) -> None:
            # Credentials are never used: building a definition makes no request (tests enforce it).
            boto_session = boto3.Session(
                region_name=config.region, aws_access_key_id="offline", aws_secret_access_key="offline"
            )
            super().__init__(
                boto_session=boto_session,
                sagemaker_client=boto_session.client("sagemaker", config=boto_config()),
                default_bucket=config.bucket,
                sagemaker_config=SDK_CONFIG,
            )
            self.artifacts: dict[str, Artifact] = {}

        def default_bucket(self) -> str:
            return config.bucket

        def upload_data(self, path, bucket=None, key_prefix="data", callback=None, extra_args=None) -> str:
            files = read_tree(path)
            pin_driver_source_dir(files)  # the same code, the same definition
            artifact = Artifact(channel_name(key_prefix), files)
            return self.record(artifact, filename=os.path.basename(path) if os.path.isfile(path) else None)

        def record(self, artifact: Artifact, filename: str | None = None) -> str:
            """The S3 URI of an artifact (its prefix, or one file in it); remembered for upload-code."""
            self.artifacts[artifact.key_prefix(config.prefix)] = artifact
            uri = f"s3://{config.bucket}/{artifact.key_prefix(config.prefix)}"
            return f"{uri}/{filename}" if filename else uri

        def account_id(self) -> str:
            return config.role_arn.split(":")[4] if config.role_arn.count(":") >= 5 else "000000000000"

    return OfflinePipelineSession()


def definition_json(pipeline: Any) -> str:
    """The definition, canonical: sorted keys and fixed separators, so equal inputs give equal bytes."""
    import json

    return json.dumps(json.loads(pipeline.definition()), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
