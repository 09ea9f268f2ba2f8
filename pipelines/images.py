"""The container images the governed pipeline runs in, resolved for the region by the SageMaker SDK.

Each step runs in an image whose own libraries serve our code; nothing replaces the image's torch, transformers or
peft at run time (the code bundle carries only the project's own packages). The registry account differs by region
and partition (eu-south-1, me-central-1, China, GovCloud …), so URIs come from the SDK's ``image_uris`` tables,
never from one formatted account id. ``PipelineConfig.training_image`` / ``processing_image`` / ``inference_image``
override them (an ECR URI; ``{region}`` is filled in).

- training: Hugging Face PyTorch training DLC (GPU; runs on CPU instances too, for the demo);
- processing: Hugging Face PyTorch inference DLC for CPU (EstimateFLOPs reads configs and tokenizers; the other
  two steps read the run record): small, CPU, with transformers;
- inference: Hugging Face TGI, what a registered package is served with.
"""

from __future__ import annotations

from dataclasses import dataclass

from meter.errors import MeterError


@dataclass(frozen=True)
class Image:
    """One DLC as the SDK names it, and the libraries inside it that our code relies on."""

    framework: str
    version: str
    scope: str
    instance_type: str  # picks the processor (gpu/cpu) in the SDK's table
    base_framework_version: str | None = None
    py_version: str | None = None
    libraries: tuple[tuple[str, str], ...] = ()  # (distribution, version) as installed in the image

    def library(self, name: str) -> str | None:
        return dict(self.libraries).get(name)


# Versions inside the images, read from aws/deep-learning-containers (branch master, f06ada0e, 2026-08-19):
# huggingface/pytorch/training/docker/2.9/py3/cu130/Dockerfile.gpu and huggingface/pytorch/inference/docker/2.6/py3/
# Dockerfile.cpu. accelerate is not pinned in the training image (its Dockerfile declares 1.12.0 without using it).
# `make contract` pins a virtual environment to the training image's libraries (``pins("training")``).
IMAGES: dict[str, Image] = {
    "training": Image(
        "huggingface",
        "5.3.0",
        "training",
        "ml.g5.2xlarge",
        base_framework_version="pytorch2.9.0",
        py_version="py312",
        libraries=(
            ("python", "3.12"),
            ("torch", "2.9.0"),
            ("transformers", "5.3.0"),
            ("peft", "0.18.1"),
            ("accelerate", "1.12.0"),
            ("trl", "0.28.0"),
            ("datasets", "4.5.0"),
            ("huggingface_hub", "1.10.0"),
        ),
    ),
    "processing": Image(
        "huggingface",
        "5.5.3",
        "inference",
        "ml.m5.xlarge",
        base_framework_version="pytorch2.6.0",
        py_version="py312",
        libraries=(
            ("python", "3.12"),
            ("torch", "2.6.0"),
            ("transformers", "5.5.3"),
            ("peft", "0.18.1"),
            ("accelerate", "1.12.0"),
            ("huggingface_hub", "1.10.0"),
        ),
    ),
    "inference": Image("huggingface-llm", "3.3.6", "inference", "ml.g5.2xlarge"),
}


def pins(kind: str) -> str:
    """The image's Python libraries as pip requirements (what the contract environment installs)."""
    return " ".join(f"{name}=={version}" for name, version in IMAGES[kind].libraries if name not in ("python", "torch"))


def image_uri(kind: str, region: str) -> str:
    """The ECR URI of the ``kind`` image ("training", "processing", "inference") in ``region``."""
    from sagemaker.core import image_uris

    image = IMAGES[kind]
    try:
        return image_uris.retrieve(
            image.framework,
            region=region,
            version=image.version,
            base_framework_version=image.base_framework_version,
            py_version=image.py_version,
            image_scope=image.scope,
            instance_type=image.instance_type,
        )
    except ValueError as e:
        raise MeterError(
            f"no {kind} image ({image.framework} {image.version}) is published in region {region!r} ({e}): set "
            f"{kind}_image in the pipeline config to an image your account can pull"
        ) from None
