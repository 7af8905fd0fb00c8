"""Real stores as processes on loopback: PostgreSQL (initdb + pg_ctl) and `mlflow server`.

PostgreSQL refuses to run as root; when the tests run as root (CI containers do), the cluster
belongs to `nobody` and its commands run through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_server import free_port, running, wait_for_http

PG_USER = "nobody"


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def create_database(port: int, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user="uib", dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()


@contextmanager
def postgres() -> Iterator[str]:
    """Yields `postgresql+psycopg2://uib@127.0.0.1:<port>/mlflow` (SQLAlchemy's form) for a fresh
    cluster, stopped on exit."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is not on PATH: PostgreSQL must be installed")
    root = Path(tempfile.mkdtemp(prefix="uib-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER)
        shutil.chown(sockets, PG_USER)
    port = free_port()
    try:
        subprocess.run(
            _as_postgres(
                ["initdb", "-D", str(data), "-U", "uib", "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            _as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(root / "postgres.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        try:
            create_database(port, "mlflow")
            yield f"postgresql+psycopg2://uib@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run(
                _as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
            )
    except subprocess.CalledProcessError as error:
        log = root / "postgres.log"
        raise AssertionError(
            f"{error.cmd[0:6]} failed: {error.stderr}\n"
            f"{log.read_text()[-2000:] if log.exists() else ''}"
        ) from error
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    root: Path,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Yields the tracking URI of a real `mlflow server` (one worker, loopback)."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts_destination:
        command += ["--artifacts-destination", artifacts_destination]
    log = root / f"mlflow-server-{port}.log"
    uri = f"http://127.0.0.1:{port}"
    with running(
        command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}, log
    ) as process:
        wait_for_http(process, f"{uri}/health", "the MLflow server", log, 180)
        yield uri
