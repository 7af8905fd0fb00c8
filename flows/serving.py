"""`uib serve` through the Prefect server's absences: wait for it, serve, serve again.

What Prefect 3.9.1 does on its own (prefect/flows.py, prefect/runner/runner.py,
prefect/utilities/services.py, prefect/client/base.py):

- No server yet: `prefect.serve` registers the deployments before its runner starts, and a
  refused connection fails that at once with `httpx.ConnectError`: the client retries
  `ConnectError` only once it has connected (client/base.py 422-427).
- A short absence (under about 3 minutes): the runner rides it out. Each request retries a
  transport error 5 times, 2 + 4 + 8 + 16 + 32 s apart (`PREFECT_CLIENT_MAX_RETRIES`,
  client/base.py 309-375, 409-442), the cancellation observers fall back to polling, and the
  same deployment ids are polled again once the server, on the same database, is back.
- A long absence ends it. The poll loop, `critical_service_loop` (services.py 58-138, started
  at runner/_scheduled_run_poller.py 229), gives up after 3 failed polls in a row with
  `RuntimeError("Service exceeded error threshold.")`; `Runner.start` unwinds, pauses the
  deployments on its way out (`pause_on_shutdown`, runner.py 602, 893-894, 653-660) and raises
  that pause's `httpx.ConnectError` (or, if the server is back by then, the loop's error).
  `prefect.serve` lets both out: it catches only KeyboardInterrupt and TerminationSignal
  (flows.py 3120-3123). Measured with the defaults: gives up 215 s into an outage, exits at 286 s.

So this waits for `/health` before serving and serves again after a failure that says the
server is gone; any other error propagates. `prefect.serve` returns only when it was stopped
(Ctrl-C; SIGTERM, which `Runner.handle_sigterm` turns into a graceful stop), so a return ends
`uib serve`; BaseExceptions are never caught.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

import httpx

# The longest pause between two looks at /health: with the 1.5 s a refused look spends in
# httpcore's 3 connect retries, a look every 3.5 s at most, and only while the server is away.
WAIT_CAP_S = 2.0
REPORT_EVERY_S = 60.0  # a "still waiting" line this often, so a long wait is visible
GONE = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.TimeoutException,
    ConnectionError,
)
UNAVAILABLE = {502, 503, 504}
GAVE_UP = "Service exceeded error threshold"  # critical_service_loop's RuntimeError


def say(message: str) -> None:
    print(f"uib serve: {message}", file=sys.stderr, flush=True)


def server_gone(error: BaseException) -> bool:
    """Whether `error`, an exception it groups or one it was raised from (`raise … from`) says
    the server did not answer: a transport error, a 502/503/504, or the runner's poll loop
    giving up after such errors."""
    pending, seen = [error], set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, GONE):
            return True
        if isinstance(error, httpx.HTTPStatusError) and error.response.status_code in UNAVAILABLE:
            return True
        if isinstance(error, RuntimeError) and str(error).startswith(GAVE_UP):
            return True
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        if error.__cause__ is not None:
            pending.append(error.__cause__)
    return False


def health_error() -> Exception | None:
    """Why the API does not answer `/health` (None: it does). An answer that is an error, a
    401 say, counts as an answer: the server is up and serving will say what is wrong."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), get_client(sync_client=True) as api:
        error = api.api_healthcheck()  # Prefect's client: the API's auth and TLS settings
    return error if error is not None and server_gone(error) else None


def wait_for_server(api_url: str, cap: float = WAIT_CAP_S) -> None:
    """Until the server answers, however long: a supervisor would only start `uib serve` again
    to wait the same. One line when the wait starts, one a minute while it lasts, one at the end."""
    error = health_error()
    if error is None:
        return
    say(f"waiting for the Prefect server at {api_url} …")
    started = time.monotonic()
    delay, report_at = 0.5, REPORT_EVERY_S
    while error is not None:
        time.sleep(delay)
        delay = min(delay * 2, cap)
        waited = time.monotonic() - started
        if waited >= report_at:
            say(f"still waiting for {api_url} after {waited:.0f} s ({type(error).__name__})")
            report_at += REPORT_EVERY_S
        error = health_error()
    say(f"the Prefect server at {api_url} answers (after {time.monotonic() - started:.0f} s)")


def serve_through_restarts(serve: Callable[[], None], api_url: str) -> None:
    """Call `serve` once the server answers; again, once it is back, whenever it fails because
    the server went away. Returns when `serve` returns (it was stopped)."""
    pause = 0.5  # between attempts that fail at once (the server answers /health, not the rest)
    while True:
        wait_for_server(api_url)
        sigterm = signal.getsignal(signal.SIGTERM)
        started = time.monotonic()
        try:
            serve()
            return
        except Exception as error:
            if not server_gone(error):
                raise
            say(f"lost the Prefect server at {api_url} ({type(error).__name__}: {error})")
            pause = min(pause * 2, WAIT_CAP_S) if time.monotonic() - started < 60 else 0.5
            time.sleep(pause)
        finally:
            # The runner replaced the SIGTERM handler with its own, bound to a runner now gone.
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
