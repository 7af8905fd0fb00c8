"""The S3 inbox: deletion requests arriving as JSON objects under `s3://bucket/prefix/`.

Each new object under the prefix, in subfolders too (but for `processed/` and `rejected/`), is
validated (as a `DeletionRequest`, then against the current data version: `tasks.intake`) and
only then recorded in the ledger and moved to `processed/`; a refused one goes to `rejected/`
beside `<name>.reason.json` naming the problem, and the ledger never sees it. The body is read
strictly: malformed JSON, a key given twice, a string where a boolean belongs and a missing
`request_id` are refused by name. A crash between the ledger and the move leaves the object in
the inbox; the next collection finds the request in the ledger and files it. A request every id
of which an approved request erased already is approved at once and filed under `processed/`
(`tasks.erased_ids`): it is done, not bad input.

A `processed/` copy names the request's samples by salted hash (`sample_id_hashes`, as the
audit record does), never by id: the ledger keeps the ids until the erasure, and nothing reads a
filed copy back. A `rejected/` object stays as it was sent (it never entered the pipeline).
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
from tasks.erased_ids import ErasedIds, acknowledge_open
from tasks.intake import Intake, RequestInvalid
from tasks.redaction import HASH_SCHEME, hash_ids
from tasks.requests import DeletionRequest, RequestBusy, RequestLedger, RequestState
from tasks.retrying import NETWORK_RETRIES
from tasks.settings import Settings

PROCESSED, REJECTED = "processed/", "rejected/"
MAX_OBJECT_BYTES = 1 << 20


class InboxReport(BaseModel):
    accepted: list[str] = Field(default_factory=list, description="request ids now pending")
    acknowledged: list[str] = Field(
        default_factory=list, description="request ids the ledger already held"
    )
    rejected: dict[str, str] = Field(default_factory=dict, description="object key → reason")
    approved: list[str] = Field(
        default_factory=list, description="request ids approved at once: their ids were erased"
    )


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


def no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """`json.loads`' object hook: a key given twice is refused (JSON would keep the last)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"{key}: the key is given more than once")
        seen.add(key)
    return dict(pairs)


def read_request(body: bytes) -> DeletionRequest:
    """The object's request; a ValueError says what is wrong with it."""
    if len(body) > MAX_OBJECT_BYTES:
        raise ValueError(f"object of {len(body)} bytes; at most {MAX_OBJECT_BYTES}")
    try:
        json.loads(body, object_pairs_hook=no_repeated_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text: {error}") from None
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
        """Objects under the prefix, in subfolders too, oldest first; not those already filed
        under `processed/` or `rejected/` (where the `.reason.json` files live), nor the empty
        "folder" objects some S3 consoles create."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        filed = (self.prefix + PROCESSED, self.prefix + REJECTED)
        objects = [
            o
            for page in pages
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/") and not o["Key"].startswith(filed)
        ]
        return [o["Key"] for o in sorted(objects, key=lambda o: (o["LastModified"], o["Key"]))]

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def move(self, key: str, folder: str, body: bytes | None = None) -> str:
        """File the object under `folder`, as it is or, given `body`, as that body."""
        target = self.prefix + folder + key[len(self.prefix) :]
        if body is None:
            self.s3.copy_object(
                Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key}
            )
        else:
            self.s3.put_object(
                Bucket=self.bucket, Key=target, Body=body, ContentType="application/json"
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


def processed_copy(request: DeletionRequest, salt: str) -> bytes | None:
    """The body a `processed/` copy keeps: the request with `sample_id_hashes` in place of its
    `sample_ids`; None for a request that names no id (it is filed as it was sent)."""
    if request.sample_ids is None:
        return None
    fields = request.model_dump(mode="json", exclude={"sample_ids"})
    hashed = {"sample_id_hashes": hash_ids(request.sample_ids, salt), "hash_scheme": HASH_SCHEME}
    return json.dumps({**fields, **hashed}, indent=2).encode()


def collect_inbox(settings: Settings) -> InboxReport:
    """Read every new request object into the ledger, then file it; see the module's doc."""
    inbox = Inbox(settings)
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    intake = Intake(DataRepo(settings.data_repo), ledger, ErasedIds.of(settings, ledger))
    report = InboxReport()
    for key in inbox.new_keys():
        try:
            request = read_request(inbox.read(key))
        except ValueError as error:
            report.rejected[key] = f"malformed request: {error}"
            inbox.reject(key, report.rejected[key], None)
            continue
        try:
            intake.check(request)
        except RequestInvalid as error:  # a reused id, unknown ids, a predicate matching none
            report.rejected[key] = str(error)
            inbox.reject(key, str(error), request.request_id)
            continue
        record, created = ledger.submit(request)
        if acknowledged(request, intake, ledger, settings):
            report.approved.append(request.request_id)
            inbox.move(key, PROCESSED, processed_copy(request, settings.salt()))
            continue
        if not created:
            report.acknowledged.append(request.request_id)
            # refused by an inbox that recorded its refusals in the ledger
            failed = record.state == RequestState.REJECTED and record.message.startswith("inbox:")
            if failed:
                inbox.reject(key, record.message, request.request_id)
            else:
                inbox.move(key, PROCESSED, processed_copy(request, settings.salt()))
            continue
        report.accepted.append(request.request_id)
        inbox.move(key, PROCESSED, processed_copy(request, settings.salt()))
    return report


def acknowledged(
    request: DeletionRequest, intake: Intake, ledger: RequestLedger, settings: Settings
) -> bool:
    """Whether the request, every id of which approved requests erased, is approved now."""
    if not (already := intake.already_erased(request)):
        return False
    try:
        return acknowledge_open(request, settings, ledger, already) is not None
    except RequestBusy:  # a run of it holds it: that run answers it
        return False


@task(name="collect-inbox", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def collect_inbox_task(settings: Settings) -> InboxReport:
    """The inbox, retried with backoff when S3 is unreachable or answers 5xx: a retry lists
    what is left (objects already filed moved out) and records each request once."""
    return collect_inbox(settings)
