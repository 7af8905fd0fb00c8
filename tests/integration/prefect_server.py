"""A real `prefect server start` process on a free loopback port, for the deployment tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_prefect_env(home: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
    }


def wait_until(check, timeout: float, what: str, log: Path | None = None, interval: float = 0.5):
    """Poll `check` until it returns a truthy value; fail naming `what` (and the log's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
    """A subprocess with its output in `log`; terminated (then killed) on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_http(process, url: str, what: str, log: Path, timeout: float) -> None:
    """Until `url` answers without a server error; fail at once, with the log, if it exits."""

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout, what, log)


@contextmanager
def prefect_server(root: Path):
    """Yields the API URL of a Prefect server (SQLite under `root`) with its services running."""
    with prefect_server_at(root, free_port()) as api_url:
        yield api_url


@contextmanager
def prefect_server_at(root: Path, port: int, log: Path | None = None):
    """`prefect_server` on a given port: started again with the same `root` and port, it is the
    same server restarted (same URL, same database `root/prefect.db`)."""
    env = {
        **quiet_prefect_env(root / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
    }
    log = log or root / "prefect-server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    with running(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
    ) as process:
        wait_for_http(process, f"{api_url}/health", "the Prefect server", log, 120)
        yield api_url
