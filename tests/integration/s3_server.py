"""A real S3-compatible server on loopback: moto's server mode, as a process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_server import free_port, running, wait_for_http

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "uib-test",
    "AWS_SECRET_ACCESS_KEY": "uib-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            **{
                "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
            },
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextmanager
def start_s3_server(root: Path) -> Iterator[S3Server]:
    """Yields an `S3Server` on a free loopback port; the process stops on exit."""
    port = free_port()
    log = root / "moto-server.log"
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running(command, dict(CREDENTIALS), log) as process:
        wait_for_http(process, f"{endpoint}/moto-api/", "the S3 server (moto)", log, 60)
        yield S3Server(endpoint)
