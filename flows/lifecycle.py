"""The CLI process's own lifecycle: its temporary Prefect server and the signals that end it.

Without `PREFECT_API_URL`, Prefect starts a temporary server as a child process and stops it
from `atexit`, which a SIGTERM skips and a SIGKILL never reaches: every killed run left one
behind. Here the CLI starts that server itself, as a child that Linux terminates when its parent
dies (`PR_SET_PDEATHSIG`), whatever killed the parent, and stops it on every ordinary exit.
SIGTERM and SIGINT become an exception (`Terminated`, `KeyboardInterrupt`), so every `finally`
and `with` on the way out runs: the server stops, an open MLflow run ends as failed, the ledger
records the request `failed`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): unwound as Ctrl-C is (the flow run ends
    `Crashed`, the CLI exits 130), so Prefect, MLflow and the ledger see an interrupted run,
    not a vanished one."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def handle_termination() -> None:
    """SIGTERM raises `Terminated` in the main thread (SIGINT already raises KeyboardInterrupt);
    a handler someone else installed is left alone."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: SIGTERM it when the parent dies. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_server_class():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class ChildServer(SubprocessASGIServer):
        """Prefect's temporary server, started so that it dies with this process."""

        _instances: dict = {}  # not Prefect's registry: Prefect never hands this one out

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect

            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            env.pop("PREFECT_API_URL", None)
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env=env,
                preexec_fn=_die_with_parent,
            )

    return ChildServer


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API for this command: `PREFECT_API_URL` when set, else a temporary server
    that this process owns (stopped on exit, terminated by the kernel if the process is killed).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    server = _child_server_class()()
    try:
        with _one_start_at_a_time():
            server.start(timeout=_server_start_timeout_s())
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _drain_prefect_clients()
    finally:
        server.stop()


SERVER_START_TIMEOUT_S = 90


def _server_start_timeout_s() -> int:
    """Prefect's `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` (20 s by default), but no
    less than `SERVER_START_TIMEOUT_S`. The server starts in about 13 s on an idle machine; on
    one busy with training jobs it took over 20, and the request failed with `Timed out while
    attempting to connect to ephemeral Prefect API server` before any of it had run."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(
        int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), SERVER_START_TIMEOUT_S
    )


@contextmanager
def _one_start_at_a_time() -> Iterator[None]:
    """Held while this process's temporary server starts, so that the servers of CLIs started
    together do so in turn. They share Prefect's database (`PREFECT_HOME/prefect.db`), and a
    server migrates it and registers block types as it starts: two servers migrating a new
    database at once failed (alembic: `expected to match one row when updating …`): of five
    CLIs started together on a new Prefect home, four exited 1 with `Timed out while attempting
    to connect to ephemeral Prefect API server`, their requests left pending. The next server
    finds the database up to date. Its waiting ends on SIGTERM and Ctrl-C as ever."""
    from prefect.settings import get_current_settings

    path = Path(get_current_settings().home) / "uib-server-start.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - closed by the `with` below
    except OSError:  # a Prefect home this user cannot write: the server says what is wrong
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # dropped by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drain_prefect_clients(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still holds while their server is up, not after."""
    from prefect._internal.concurrency.services import QueueService

    QueueService.drain_all(timeout=timeout_s, at_exit=False)
