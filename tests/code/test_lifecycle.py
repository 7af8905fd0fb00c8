"""SIGTERM unwinds the CLI's process like Ctrl-C, so every `finally` on the way out runs."""

import subprocess
import sys

UNWIND = """
import os, signal, time
from flows.lifecycle import handle_termination
handle_termination()
try:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    finally:
        print("finally ran", flush=True)
except KeyboardInterrupt as error:
    print(type(error).__name__, error, flush=True)
"""


def test_sigterm_raises_an_interrupt_that_runs_every_finally():
    done = subprocess.run(
        [sys.executable, "-c", UNWIND], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["finally ran", "Terminated stopped by signal SIGTERM"]


def test_the_temporary_server_gets_time_to_start_on_a_busy_machine():
    """Prefect waits 20 s for its temporary server by default; a loaded machine took longer and
    the request failed before it ran. Ours waits at least `SERVER_START_TIMEOUT_S`, or longer
    where the setting asks for it."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from flows.lifecycle import SERVER_START_TIMEOUT_S, _server_start_timeout_s

    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 20}):
        assert _server_start_timeout_s() == SERVER_START_TIMEOUT_S > 20
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}):
        assert _server_start_timeout_s() == 300
