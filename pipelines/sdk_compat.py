"""Every workaround of SageMaker SDK internals in ``pipelines``, fenced here: what each touches, why, and the SDK
version it was checked against. Checked against sagemaker==3.27.0 (the version pyproject pins for development);
when the SDK is upgraded, read each one again against the new source.

1. ``validate_config_once``: replaces the static method ``SageMakerConfig.validate_sagemaker_config``
   (``sagemaker.core.config.config_manager``) while a definition is built. The SDK validates its whole config
   against a large JSON Schema at every config lookup (about 60 per build, 0.2 s each); ours is a constant
   (``pipelines.session.SDK_CONFIG``), so each distinct config is validated once. Scoped: ``sdk_environment``
   runs the undo it returns.
2. ``set_definition_metadata``: writes the private ``Pipeline._metadata`` (``sagemaker.mlops.workflow.pipeline``,
   set to ``{}`` in ``__init__`` and rendered as the definition's ``Metadata``). The SDK has no parameter or setter
   for it; we put the parameters' descriptions and the code bundle's hash there.
3. ``pin_driver_source_dir``: ``ModelTrainer._write_source_code_json`` (``sagemaker.train.model_trainer``) writes
   ``sourcecode.json`` into the ``sm_drivers`` channel with the local ``source_dir``, a temporary path: every build
   would differ. The offline session rewrites it to where the code is in the container (the SDK's driver never
   reads it there), so the same code gives the same definition.
4. ``channel_name``: the offline session's ``upload_data`` names each artifact by the last segment of the key
   prefix the SDK passes (``ModelTrainer`` ends it with the channel name: code, sm_drivers, …); an internal
   convention, not an API.

Through the SDK's public surface, kept where they are used: ``pipelines.session`` (``OfflinePipelineSession``
overrides the public ``default_bucket``, ``upload_data`` and ``account_id``; ``TelemetryOptOut`` in the SDK config;
``SAGEMAKER_VALIDATE_ROLE=false``; the root logger restored after the SDK's import calls ``logging.basicConfig``)
and ``pipelines.governed`` (``RegisterModelStep``, a subclass of the public ``Step`` holding its ``Properties``
as the SDK's own steps do).

Outside ``pipelines`` (not fenced here): ``steps/factories.py`` overrides the private
``ModelTrainer._resolve_staging_bucket`` (the SDK would ask IAM whether the role may write the default bucket).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def validate_config_once() -> Callable[[], None]:
    """Validate each distinct SDK config once instead of at every lookup (1. above); returns the undo."""
    from sagemaker.core.config.config_manager import SageMakerConfig

    original = SageMakerConfig.__dict__["validate_sagemaker_config"]
    seen: set[str] = set()

    def validate_once(sagemaker_config=None):
        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in seen:
            original.__func__(sagemaker_config)
            seen.add(key)

    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_once)
    return lambda: setattr(SageMakerConfig, "validate_sagemaker_config", original)


def set_definition_metadata(pipeline: Any, metadata: dict[str, Any]) -> None:
    """The definition's free-form ``Metadata`` (2. above)."""
    pipeline._metadata = metadata


def pin_driver_source_dir(files: dict[str, bytes]) -> None:
    """In the files of the sm_drivers channel, name where the code is in the container (3. above)."""
    if "sourcecode.json" in files:
        doc = json.loads(files["sourcecode.json"])
        doc["source_dir"] = "/opt/ml/input/data/code"
        files["sourcecode.json"] = json.dumps(doc, sort_keys=True).encode()


def channel_name(key_prefix: Any) -> str:
    """The channel an SDK upload is for: the last segment of its key prefix (4. above)."""
    return str(key_prefix).rstrip("/").rsplit("/", 1)[-1] or "data"
