"""The local model registry: SageMaker's model package groups and packages in one SQLite file (``registry.db``).

A registry created by an older version gains the columns added since when it is opened.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

from meter.errors import MeterError
from meter.timestamps import utc_timestamp


class LocalRegistry:
    """Model package groups and packages, as SageMaker's registry holds them (approval status, metadata, card)."""

    # name: SQL type; columns added after a registry was created are added to it when it is opened
    COLUMNS: ClassVar[dict[str, str]] = {
        "arn": "TEXT PRIMARY KEY",
        "group_name": "TEXT",
        "version": "INTEGER",
        "approval_status": "TEXT",
        "model_data_url": "TEXT",
        "image": "TEXT",
        "metadata": "TEXT",
        "execution_id": "TEXT",
        "created": "TEXT",
        "description": "TEXT",
        "approval_description": "TEXT",
        "model_card": "TEXT",
    }

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            columns = ", ".join(f"{k} {v}" for k, v in self.COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS model_packages ({columns})")
            have = {row[1] for row in db.execute("PRAGMA table_info(model_packages)")}
            for name in self.COLUMNS.keys() - have:
                db.execute(f"ALTER TABLE model_packages ADD COLUMN {name} {self.COLUMNS[name]}")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def register(self, request: dict[str, Any], execution_id: str) -> str:
        """CreateModelPackage: a new version in its group; returns its ARN."""
        group = request["ModelPackageGroupName"]
        container = request["InferenceSpecification"]["Containers"][0]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # the version number and the insert under one write lock
            version = db.execute("SELECT COUNT(*) FROM model_packages WHERE group_name = ?", (group,)).fetchone()[0] + 1
            row = {
                "arn": f"arn:aws:sagemaker:local:000000000000:model-package/{group}/{version}",
                "group_name": group,
                "version": version,
                "approval_status": request.get("ModelApprovalStatus", "PendingManualApproval"),
                "model_data_url": container.get("ModelDataUrl"),
                "image": container.get("Image"),
                "metadata": json.dumps(request.get("CustomerMetadataProperties") or {}, sort_keys=True),
                "execution_id": execution_id,
                "created": utc_timestamp(),
                "description": request.get("ModelPackageDescription"),
                "approval_description": None,  # UpdateModelPackage sets it (CreateModelPackage has no such field)
                "model_card": (request.get("ModelCard") or {}).get("ModelCardContent"),
            }
            db.execute(f"INSERT INTO model_packages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))  # fmt: skip
        return row["arn"]

    def update(self, arn: str, status: str, description: str, metadata: dict[str, str]) -> None:
        """UpdateModelPackage: the approval status, its description, and metadata added to what is there."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            found = db.execute("SELECT metadata FROM model_packages WHERE arn = ?", (arn,)).fetchone()
            if found is None:
                raise MeterError(f"no model package {arn} in {self.path}")
            merged = json.dumps({**json.loads(found[0]), **metadata}, sort_keys=True)
            db.execute(
                "UPDATE model_packages SET approval_status = ?, approval_description = ?, metadata = ? WHERE arn = ?",
                (status, description, merged, arn),
            )

    def packages(self, group: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM model_packages" + (" WHERE group_name = ?" if group else "") + " ORDER BY created"
            rows = db.execute(query, (group,) if group else ()).fetchall()
        return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]
