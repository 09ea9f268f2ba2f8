"""Content-addressed artifacts: the code bundle and the demo inputs a pipeline definition points at.

An artifact is a set of files (relative path → bytes). Its address is the tree digest of its paths and contents
(meter.digests.tree_sha256), so a definition names ``s3://bucket/prefix/code/<sha>/`` without uploading anything, and
``flops-meter pipeline upload-code`` puts exactly those bytes there later (a no-op when already present).
Nothing here imports boto3 at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meter.digests import tree_sha256
from steps.common import HUB_MARKER, MODEL_INPUTS

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Artifact:
    name: str
    files: dict[str, bytes]  # posix relative path -> content

    @property
    def sha256(self) -> str:
        return tree_sha256({path: hashlib.sha256(data).digest() for path, data in self.files.items()})

    def key_prefix(self, prefix: str) -> str:
        return "/".join(p.strip("/") for p in (prefix, self.name, self.sha256[:20]) if p)

    def write(self, directory: Path) -> Path:
        for rel, data in self.files.items():
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return directory


def read_tree(path: str | Path) -> dict[str, bytes]:
    """The files under a directory (or one file), skipping caches; bytes only, no times or modes."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    files = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES):
                continue
            full = Path(dirpath) / name
            files[full.relative_to(path).as_posix()] = full.read_bytes()
    return files


def code_bundle() -> Artifact:
    """meter/ and steps/ as the containers import them (steps/vendor: wheels of what an image may lack). No
    requirements.txt: SageMaker's driver would pip-install it over the image's own libraries, and a VPC without
    internet cannot reach PyPI."""
    files = {
        f"{package}/{rel}": data for package in ("meter", "steps") for rel, data in read_tree(ROOT / package).items()
    }
    return Artifact("code", files)


def demo_dataset() -> Artifact:
    return Artifact("demo-dataset", read_tree(ROOT / "steps" / "demo" / "train.jsonl"))


# What ModelS3Uri points at by default: a model directory's three small files, marked "not a model", so the steps
# load BaseModelId from the Hugging Face Hub. A pipeline parameter has one default and cannot add or drop a channel.
def hub_model() -> Artifact:
    return Artifact("model-from-hub", dict.fromkeys(MODEL_INPUTS.values(), (json.dumps(HUB_MARKER) + "\n").encode()))


def demo_recipe() -> Artifact:
    return Artifact("demo-recipe", read_tree(ROOT / "steps" / "recipes" / "demo.yaml"))


class StagedDir:
    """A bundle written to a temporary directory (the SDK wants a local path), removed on exit."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self._tmp = tempfile.mkdtemp(prefix="flops-meter-")
        self.path = artifact.write(Path(self._tmp) / artifact.name)

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def marker_key(artifact: Artifact, prefix: str) -> str:
    # outside the prefix (an S3Prefix input downloads every key that starts with it); written last, so a partial
    # upload is never taken for a complete one
    return "/".join(p.strip("/") for p in (prefix, f"{artifact.name}-complete", artifact.sha256) if p)


def uploaded(artifact: Artifact, s3, bucket: str, prefix: str) -> bool:
    """Whether the artifact is completely at its content address."""
    try:
        s3.head_object(Bucket=bucket, Key=marker_key(artifact, prefix))
        return True
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def upload(artifact: Artifact, s3, bucket: str, prefix: str, *, kms_key_id: str = "") -> tuple[str, int]:
    """Put the artifact's files under its content address; returns (s3 uri, files written). Idempotent."""
    key_prefix = artifact.key_prefix(prefix)
    marker = marker_key(artifact, prefix)
    if uploaded(artifact, s3, bucket, prefix):
        return f"s3://{bucket}/{key_prefix}", 0
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
    for rel in sorted(artifact.files):
        s3.put_object(Bucket=bucket, Key=f"{key_prefix}/{rel}", Body=artifact.files[rel], **extra)
    s3.put_object(Bucket=bucket, Key=marker, Body=artifact.sha256.encode(), **extra)
    return f"s3://{bucket}/{key_prefix}", len(artifact.files)
