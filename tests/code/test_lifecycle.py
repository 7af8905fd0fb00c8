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
