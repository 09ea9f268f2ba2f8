"""S3 on disk: ``s3://bucket/key`` is ``<root>/bucket/key``, with the SDK's S3Prefix download semantics."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from meter.errors import MeterError


@dataclass
class LocalObjects:
    root: Path

    def path(self, uri: str) -> Path:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise MeterError(f"not an S3 URI: {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        return self.root / bucket / key

    def download(self, uri: str, dest: Path) -> int:
        """S3Prefix semantics: every object whose key starts with the URI's key, under dest; returns files."""
        base = self.path(uri)
        dest.mkdir(parents=True, exist_ok=True)
        if base.is_file():
            shutil.copy2(base, dest / base.name)
            return 1
        if base.is_dir():
            shutil.copytree(base, dest, dirs_exist_ok=True)
            return sum(1 for p in dest.rglob("*") if p.is_file())
        return 0

    def upload(self, src: Path, uri: str) -> None:
        target = self.path(uri)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
