"""Salted hashes in place of sample ids, for every record the pipeline keeps after an erasure.

The ids of a data set are easy to guess (`digits-train-00042`), so a plain hash would give them
away; keyed with the deployment's secret salt (`Settings.salt()`), which never enters a record,
it does not. The same hash names a forgotten sample in the audit record, the ledger, the S3
inbox's `processed/` copies and the validation results logged to MLflow, so a person holding the
salt can check that a given id was forgotten, and nobody else can read one back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from uib.samples import DataError

if TYPE_CHECKING:
    from tasks.validation import ValidationReport

HASH_SCHEME = "hmac-sha256(key=salt, msg=sample_id), hex"
MIN_SALT_LENGTH = 16


def hash_id(sample_id: str, salt: str) -> str:
    """The salted hash under which every record after an erasure names a sample."""
    if len(salt) < MIN_SALT_LENGTH:
        raise DataError(f"salt: must hold at least {MIN_SALT_LENGTH} characters, got {len(salt)}")
    return hmac.new(salt.encode(), str(sample_id).encode(), hashlib.sha256).hexdigest()


def hash_ids(sample_ids: Iterable[str], salt: str) -> list[str]:
    """Each id's salted hash, in the order given (a list compared by content stays comparable)."""
    return [hash_id(i, salt) for i in sample_ids]


def redact_ids(value: Any, ids: Iterable[str], salt: str) -> Any:
    """A JSON-like `value` with every string that is one of `ids` replaced by its salted hash,
    and every list of nothing but such ids by their count.

    Made for Great Expectations' results, which name ids as whole strings: a value set, the
    failing rows' values, their index (`{"sample_id": "…"}`). A list of ids becomes
    `{"redacted_sample_ids": N}` rather than N hashes: the audit record lists the hashes once.
    """
    secret = frozenset(str(i) for i in ids)
    if not secret:
        return value

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return hash_id(node, salt) if node in secret else node
        if isinstance(node, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            if node and all(isinstance(v, str) and v in secret for v in node):
                return {"redacted_sample_ids": len(node), "hash_scheme": HASH_SCHEME}
            return [walk(v) for v in node]
        return node

    return walk(value)


def redacted_report(report: ValidationReport, ids: Iterable[str], salt: str) -> ValidationReport:
    """A shift validation report whose GX result and checks name none of `ids` but by hash."""
    secret = frozenset(str(i) for i in ids)
    checks = [
        c.model_copy(update={"observed": redact_ids(c.observed, secret, salt)})
        for c in report.checks
    ]
    return report.model_copy(
        update={"gx_result": redact_ids(report.gx_result, secret, salt), "checks": checks}
    )
