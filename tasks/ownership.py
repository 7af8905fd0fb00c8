"""Who is running a request, and whether that process is still there.

Every `running` row of the ledger names its owner (host, process id, the process's start time)
and carries a heartbeat the owner refreshes while it works. A request whose owner is gone — its
run was killed, the machine rebooted — is taken over by the next run of the request, by the CLI
sending it again, or by the scheduled flow; nothing waits for a person.

The owner is alive when any of these says so:
  1. the request's lock (`locks/<id>.lock`, an OS file lock the run holds) is taken: the OS
     drops it when the process dies, so a held lock is a live run on a machine sharing the lock;
  2. the owner is on this host and its process exists with the recorded start time (a reused
     process id does not count);
  3. the owner is on another host and its heartbeat is younger than the lease.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psutil
from pydantic import BaseModel

HEARTBEAT_EVERY_S = 30.0
LEASE = timedelta(minutes=5)


class Owner(BaseModel):
    """The process that set a request `running`."""

    host: str
    pid: int
    started_at: float | None = None

    @classmethod
    def this_process(cls) -> Owner:
        me = psutil.Process()
        return cls(host=socket.gethostname(), pid=me.pid, started_at=me.create_time())

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def process_alive(self) -> bool:
        """On this host: the process exists, is not a zombie, and started when recorded."""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.started_at is None or abs(process.create_time() - self.started_at) < 1.0
        except psutil.NoSuchProcess:
            return False

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


def owner_gone(
    owner: Owner | None,
    heartbeat_at: datetime | None,
    lock_held: bool,
    now: datetime | None = None,
) -> str | None:
    """Why the owner of a `running` request is gone, or None while it may still be working."""
    if lock_held:
        return None
    now = now or datetime.now(UTC)
    if owner is not None and owner.on_this_host():
        if owner.process_alive():
            return None
        return f"its run ({owner.describe()}) is gone"
    if heartbeat_at is not None and now - heartbeat_at < LEASE:
        return None
    who = owner.describe() if owner else "its run"
    since = f"since {heartbeat_at:%Y-%m-%d %H:%M:%S}Z" if heartbeat_at else "ever"
    return f"no heartbeat from {who} {since} (lease {LEASE.total_seconds():.0f} s)"


@contextmanager
def heartbeat(beat: Callable[[], None], every_s: float = HEARTBEAT_EVERY_S) -> Iterator[None]:
    """Call `beat` every `every_s` seconds in a daemon thread while the block runs.

    A daemon thread dies with the process, so a killed run stops beating and its lease runs out.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                beat()
            except Exception:  # a busy ledger: the next beat tries again
                continue

    thread = threading.Thread(target=loop, name="uib-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
