"""The AWS audit store, ``s3://BUCKET/PREFIX?table=T``: records in S3 under Object Lock COMPLIANCE retention with
SHA-256 checksums, written with ``IfNoneMatch="*"``; a DynamoDB ledger (key: lineage, sequence) written with
conditional transactions. Concurrent publishers of one lineage race for the next sequence number; the loser
rebuilds its record on the new head and retries, so the chain stays consistent. boto3 is imported only here, when
a store is made.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import time
from typing import Any

from meter.audit.aws import aws_error, boto_config
from meter.audit.chain import LedgerEntry, VerifyReport, canonical_json, hashes_to, seal
from meter.audit.verify import verify_all
from meter.audit.write_once import (
    DocumentExists,
    Published,
    VerdictFor,
    document_path,
    duplicate,
    parse_document,
)
from meter.errors import MeterError
from meter.timestamps import utc_now

_RETRIES = 30  # appends to one lineage race for its next sequence number: the loser waits (backoff, jitter)
_REGION_FIX = "add &region=REGION to the store URI, or set AWS_REGION"


class S3Store:
    """S3 Object Lock (COMPLIANCE) for the records, DynamoDB for the ledger. Needs boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        table: str,
        region: str | None,
        retention_days: int | None,
        *,
        required_days: int = 3650,
    ):
        try:
            import boto3
        except ImportError:
            raise MeterError("the S3 audit store needs boto3: pip install 'flops-meter[pipeline]'") from None
        self.bucket, self.prefix, self.table, self.retention_days = bucket, prefix, table, retention_days
        self.required_days = required_days  # retention_days=None: the least default retention the bucket may have
        self.uri = f"s3://{bucket}/{prefix}?table={table}"
        self._bucket_lock_checked = False
        self._session = boto3.session.Session(region_name=region)  # the clients are made on first use

    @functools.cached_property
    def s3(self):
        return self._client("s3")

    @functools.cached_property
    def ddb(self):
        return self._client("dynamodb")

    def _client(self, service: str):
        from botocore.exceptions import BotoCoreError

        try:
            return self._session.client(service, config=boto_config())
        except BotoCoreError as e:
            raise (aws_error(e, f"audit store {self.uri}", _REGION_FIX) or e) from None

    def key(self, sha: str) -> str:
        return f"{self.prefix}/records/{sha}.json" if self.prefix else f"records/{sha}.json"

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as e:
            problem = aws_error(e, f"audit store {self.uri}", _REGION_FIX)
            if problem is None:  # a code the caller handles (NoSuchKey, a lost race, …)
                raise
            raise problem from None

    def publish(self, draft: dict[str, Any], verdict_for: VerdictFor | None = None) -> Published:
        from botocore.exceptions import ClientError

        existing = self._by_record_id(draft["record_id"])
        if existing is not None:
            return duplicate(self._completed(existing), draft, f"s3://{self.bucket}/{self.key(existing)}")
        if self.retention_days is None:
            self._check_bucket_lock()  # before the ledger claim: a record the bucket would not lock is never claimed
        lineage = draft["lineage"]["id"]
        for attempt in range(_RETRIES):
            if verdict_for is None:
                head = self._head(lineage)
            else:  # head and total from one consistent read; an append after it fails the sequence claim below
                chain = sorted(self.entries(lineage), key=lambda e: e.sequence)
                head = (chain[-1].sequence, chain[-1].record_sha256) if chain else (0, None)
                draft = {**draft, "verdict": verdict_for(sum(e.regulatory_flops for e in chain))}
            record = seal(draft, sequence=head[0] + 1, previous=head[1])
            sha, body = record["record_sha256"], canonical_json(record)
            try:
                # the claim first, the locked object after: a lost race leaves no orphan object behind; the
                # ledger entry carries the record, so a publisher stopped in between is completed by a retry
                self._call(self.ddb.transact_write_items, TransactItems=self._ledger_items(record, body))
            except ClientError as e:
                if e.response["Error"]["Code"] not in (
                    "TransactionCanceledException",
                    "ConditionalCheckFailedException",
                ):
                    raise (aws_error(e, f"audit ledger {self.table}", _REGION_FIX, any_code=True) or e) from None
                existing = self._by_record_id(draft["record_id"])
                if existing is not None:  # a concurrent retry of the same run won
                    return duplicate(self._completed(existing), draft, f"s3://{self.bucket}/{self.key(existing)}")
                # another run took this sequence number: rebuild on the new head after a random wait (full jitter:
                # concurrent losers spread out instead of colliding again)
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                continue
            self._put_object(sha, body)
            return Published(record, f"s3://{self.bucket}/{self.key(sha)}", created=True)
        raise MeterError(f"audit ledger {self.table}: could not append to lineage {lineage} after {_RETRIES} tries")

    def _completed(self, sha: str) -> dict[str, Any]:
        """A published record; when its object is missing (its publisher stopped between the ledger claim and the
        write), written now from the copy its ledger entry holds, once that copy matches its hash."""
        data = self._get_bytes(self.key(sha))
        if data is None:
            data = self._ledger_copy(sha)
            if data is None or not hashes_to(json.loads(data), sha):
                raise MeterError(f"no record {sha} in {self.uri}, and no intact copy in its ledger entry")
            self._put_object(sha, data)
        return json.loads(data)

    def _ledger_copy(self, sha: str) -> bytes | None:
        claim = self._call(
            self.ddb.get_item, TableName=self.table, ConsistentRead=True,
            Key={"lineage": {"S": f"sha#{sha}"}, "sequence": {"N": "0"}},
        ).get("Item")  # fmt: skip
        return claim["record"]["B"] if claim and "record" in claim else None

    def _ledger_items(self, record: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
        lineage, seq, sha = record["lineage"]["id"], record["sequence"], record["record_sha256"]
        entry = {
            "lineage": {"S": lineage},
            "sequence": {"N": str(seq)},
            "record_sha256": {"S": sha},
            "record_id": {"S": record["record_id"]},
            "regulatory_flops": {"N": str(int(record["run"]["flops"]["regulatory"]))},  # integer strings only
            "published_at": {"S": record["published_at"]},
            "key": {"S": self.key(sha)},
        }
        if record["previous_record_sha256"]:
            entry["previous_record_sha256"] = {"S": record["previous_record_sha256"]}
        claim = {"lineage": {"S": f"record#{record['record_id']}"}, "sequence": {"N": "0"}, "record_sha256": {"S": sha}}
        # the record itself, so that a retry can write the object a stopped publisher did not
        copy = {"lineage": {"S": f"sha#{sha}"}, "sequence": {"N": "0"}, "record": {"B": body}}
        condition = "attribute_not_exists(lineage)"
        return [
            {"Put": {"TableName": self.table, "Item": item, "ConditionExpression": condition}}
            for item in (entry, claim, copy)
        ]

    def _create(self, key: str, body: bytes) -> bytes | None:
        """Create the object (IfNoneMatch) with the store's retention: None when written, else what is there."""
        from botocore.exceptions import ClientError

        if self.retention_days is None:
            self._check_bucket_lock()
            lock = {}
        else:
            until = utc_now() + dt.timedelta(days=self.retention_days)
            lock = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}
        try:
            self._call(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                IfNoneMatch="*",
                **lock,
            )
            return None
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code in ("PreconditionFailed", "412"):
                return self._get_bytes(key) or b""
            raise (aws_error(e, f"audit bucket {self.bucket}", _REGION_FIX, any_code=True) or e) from None

    def _put_object(self, sha: str, body: bytes) -> None:
        existing = self._create(self.key(sha), body)
        if existing is not None and existing != body:  # content-addressed: what is there must be equal
            raise MeterError(f"s3://{self.bucket}/{self.key(sha)} exists with different content")

    def _doc_key(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{document_path(kind, name)}" if self.prefix else document_path(kind, name)

    def put_document(self, kind: str, name: str, doc: dict[str, Any]) -> tuple[str, bool]:
        """Write once (IfNoneMatch, under the store's Object Lock retention like the records)."""
        key, body = self._doc_key(kind, name), canonical_json(doc)
        uri = f"s3://{self.bucket}/{key}"
        existing = self._create(key, body)
        if existing is not None and existing != body:
            raise DocumentExists(uri, json.loads(existing or b"{}"))
        return uri, existing is None

    def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        data = self._get_bytes(self._doc_key(kind, name))
        return json.loads(data) if data is not None else None

    def documents(self, kind: str) -> list[dict[str, Any]]:
        prefix = self._doc_key(kind, "x")[: -len("x.json")]
        keys = [o["Key"] for o in self._keys(prefix) if o["Key"].endswith(".json")]
        return [parse_document(self._get_bytes(k) or b"", f"s3://{self.bucket}/{k}") for k in sorted(keys)]

    def _check_bucket_lock(self) -> None:
        """retention=bucket: refuse to write a record that the bucket would not lock, or not for long enough."""
        from botocore.exceptions import ClientError

        if self._bucket_lock_checked:
            return
        try:
            config = self._call(self.s3.get_object_lock_configuration, Bucket=self.bucket)["ObjectLockConfiguration"]
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code != "ObjectLockConfigurationNotFoundError":
                raise (aws_error(e, f"audit bucket {self.bucket}", _REGION_FIX, any_code=True) or e) from None
            config = {}
        default = config.get("Rule", {}).get("DefaultRetention", {})
        mode = default.get("Mode")
        if config.get("ObjectLockEnabled") != "Enabled" or mode != "COMPLIANCE":
            raise MeterError(
                f"audit bucket {self.bucket} has no default Object Lock retention in COMPLIANCE mode (found "
                f"{mode or 'none'}): records would not be locked; set one on the bucket, or use retention_days=N"
            )
        # S3 gives Days or Years; a year counts as 365 days (it is never shorter)
        days = default.get("Days") or 365 * default.get("Years", 0)
        if days < self.required_days:
            years = default.get("Years")
            found = f"{years} year{'s' * (years != 1)} ({days} days)" if years else f"{days} days"
            raise MeterError(
                f"audit bucket {self.bucket} locks records for {found} by default, less than the {self.required_days} "
                f"days this store requires: raise the bucket's default COMPLIANCE retention to at least "
                f"{self.required_days} days (records written before keep their shorter retention)"
            )
        self._bucket_lock_checked = True

    def _head(self, lineage: str) -> tuple[int, str | None]:
        out = self._call(
            self.ddb.query,
            TableName=self.table,
            KeyConditionExpression="lineage = :l",
            ExpressionAttributeValues={":l": {"S": lineage}},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = out.get("Items", [])
        return (int(items[0]["sequence"]["N"]), items[0]["record_sha256"]["S"]) if items else (0, None)

    def _by_record_id(self, record_id: str) -> str | None:
        out = self._call(
            self.ddb.get_item,
            TableName=self.table,
            Key={"lineage": {"S": f"record#{record_id}"}, "sequence": {"N": "0"}},
            ConsistentRead=True,
        )
        item = out.get("Item")
        return item["record_sha256"]["S"] if item else None

    def _get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self._call(self.s3.get_object, Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def _query_all(self, **kwargs) -> list[dict[str, Any]]:
        items, start = [], None
        while True:
            page = self._call(self.ddb.query if "KeyConditionExpression" in kwargs else self.ddb.scan,
                              **kwargs, **({"ExclusiveStartKey": start} if start else {}))  # fmt: skip
            items += page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                return items

    def entries(self, lineage: str | None = None) -> list[LedgerEntry]:
        if lineage is not None:
            items = self._query_all(
                TableName=self.table,
                KeyConditionExpression="lineage = :l",
                ExpressionAttributeValues={":l": {"S": lineage}},
                ConsistentRead=True,
            )
        else:
            items = [i for i in self._query_all(TableName=self.table, ConsistentRead=True) if i["sequence"]["N"] != "0"]
        return [
            LedgerEntry(
                i["lineage"]["S"],
                int(i["sequence"]["N"]),
                i["record_sha256"]["S"],
                i.get("previous_record_sha256", {}).get("S"),
                i["record_id"]["S"],
                int(i["regulatory_flops"]["N"]),
            )
            for i in items
        ]

    def lineage_flops(self, lineage: str) -> int:
        return sum(e.regulatory_flops for e in self.entries(lineage))

    def get(self, sha: str) -> dict[str, Any]:
        data = self._get_bytes(self.key(sha))
        if data is None:
            raise MeterError(f"no record {sha} in {self.uri}")
        return parse_document(data, f"s3://{self.bucket}/{self.key(sha)}")

    def verify(self, lineage: str | None = None, heads: dict[str, Any] | None = None) -> VerifyReport:
        return verify_all(self, lineage, lambda e: self._get_bytes(self.key(e.record_sha256)), heads)

    def _keys(self, prefix: str, versions: bool = False) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        kind = "list_object_versions" if versions else "list_objects_v2"
        try:
            pages = self._call(lambda: list(self.s3.get_paginator(kind).paginate(Bucket=self.bucket, Prefix=prefix)))
        except ClientError as e:
            raise (aws_error(e, f"audit store {self.uri}", _REGION_FIX, any_code=True) or e) from None
        if not versions:
            return [o for page in pages for o in page.get("Contents", [])]
        return [
            {**o, "DeleteMarker": kind == "DeleteMarkers"}
            for page in pages
            for kind in ("Versions", "DeleteMarkers")
            for o in page.get(kind, [])
        ]

    def stored_records(self) -> set[str]:
        prefix = self.key("x")[: -len("x.json")]
        return {o["Key"][len(prefix) : -len(".json")] for o in self._keys(prefix) if o["Key"].endswith(".json")}

    def storage_problem(self) -> tuple[str, str] | None:
        """Write-once documents have exactly one version (a second one, or a delete marker, is tampering that
        Object Lock kept but that would hide the original), and the bucket still locks in COMPLIANCE mode."""
        seen: dict[str, int] = {}
        for version in self._keys(f"{self.prefix}/" if self.prefix else "", versions=True):
            key = version["Key"]
            if version["DeleteMarker"]:
                return f"s3://{self.bucket}/{key}", "a delete marker hides a write-once document (tampering)"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                return f"s3://{self.bucket}/{key}", "a write-once document has more than one version (overwritten)"
        if self.retention_days is None:  # records take the bucket's default retention: it must still be there
            self._bucket_lock_checked = False
            try:
                self._check_bucket_lock()
            except MeterError as e:
                return f"s3://{self.bucket}", str(e)
        return None
