"""The S3 inbox: deletion requests arriving as JSON objects under `s3://bucket/prefix/`.

Each new object directly under the prefix is validated (as a `DeletionRequest`, then against
the current data version), recorded in the ledger, and only then moved to `processed/` or to
`rejected/` beside `<name>.reason.json`. A crash between the ledger and the move leaves the
object in the inbox; the next collection finds the request in the ledger and files it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlparse

import pydantic
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings
from uib.samples import DataError
from uib.scenarios import select_forget

PROCESSED, REJECTED = "processed/", "rejected/"
MAX_OBJECT_BYTES = 1 << 20


class InboxReport(BaseModel):
    accepted: list[str] = Field(default_factory=list, description="request ids now pending")
    acknowledged: list[str] = Field(
        default_factory=list, description="request ids the ledger already held"
    )
    rejected: dict[str, str] = Field(default_factory=dict, description="object key → reason")


def parse_inbox_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix/` → (bucket, "prefix/"); anything else is a ValueError naming it."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"inbox_url: expected s3://bucket/prefix/, got {url!r}")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def s3_client(settings: Settings):
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url)


def describe(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors()
    )


def read_request(body: bytes) -> DeletionRequest:
    """The object's request; a ValueError says what is wrong with it."""
    if len(body) > MAX_OBJECT_BYTES:
        raise ValueError(f"object of {len(body)} bytes; at most {MAX_OBJECT_BYTES}")
    try:
        return DeletionRequest.model_validate_json(body)
    except pydantic.ValidationError as error:
        raise ValueError(describe(error)) from None


class Inbox:
    def __init__(self, settings: Settings):
        if not settings.inbox_url:
            raise ValueError("inbox_url: not configured (UIB_INBOX_URL=s3://bucket/prefix/)")
        self.bucket, self.prefix = parse_inbox_url(settings.inbox_url)
        self.s3 = s3_client(settings)

    def new_keys(self) -> list[str]:
        """Objects directly under the prefix, oldest first: `processed/` and `rejected/` are
        folders below it, and `.reason.json` files live only there."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        objects = [o for page in pages for o in page.get("Contents", []) if o["Key"] != self.prefix]
        return [o["Key"] for o in sorted(objects, key=lambda o: (o["LastModified"], o["Key"]))]

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def move(self, key: str, folder: str) -> str:
        target = self.prefix + folder + key[len(self.prefix) :]
        self.s3.copy_object(
            Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key}
        )
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return target

    def reject(self, key: str, reason: str, request_id: str | None) -> None:
        record = {
            "key": key,
            "reason": reason,
            "request_id": request_id,
            "rejected_at": datetime.now(UTC).isoformat(),
        }
        target = self.prefix + REJECTED + key[len(self.prefix) :]
        self.s3.put_object(
            Bucket=self.bucket,
            Key=target + ".reason.json",
            Body=json.dumps(record, indent=2).encode(),
            ContentType="application/json",
        )
        self.move(key, REJECTED)


def collect_inbox(settings: Settings) -> InboxReport:
    """Read every new request object into the ledger, then file it; see the module's doc."""
    inbox = Inbox(settings)
    ledger = RequestLedger(settings.ledger_path)
    report = InboxReport()
    keys = inbox.new_keys()
    manifest = DataRepo(settings.data_repo).load_manifest() if keys else None
    for key in keys:
        try:
            request = read_request(inbox.read(key))
        except ValueError as error:
            report.rejected[key] = f"malformed request: {error}"
            inbox.reject(key, report.rejected[key], None)
            continue
        try:
            record, created = ledger.submit(request)
        except ValueError as error:  # the same id with other content
            report.rejected[key] = str(error)
            inbox.reject(key, str(error), request.request_id)
            continue
        if not created:
            report.acknowledged.append(request.request_id)
            failed = record.state == RequestState.REJECTED and record.message.startswith("inbox:")
            if failed:
                inbox.reject(key, record.message, request.request_id)
            else:
                inbox.move(key, PROCESSED)
            continue
        try:
            select_forget(manifest, ids=request.sample_ids, where=request.where)
        except DataError as error:
            reason = f"inbox: {error}"
            ledger.update(request.request_id, RequestState.REJECTED, reason)
            report.rejected[key] = reason
            inbox.reject(key, reason, request.request_id)
            continue
        report.accepted.append(request.request_id)
        inbox.move(key, PROCESSED)
    return report


@task(name="collect-inbox", cache_policy=NO_CACHE)
def collect_inbox_task(settings: Settings) -> InboxReport:
    return collect_inbox(settings)
