"""A loopback HTTP/1.1 proxy in front of one real server, whose faults a test switches on.

The stores the pipeline talks to (an `mlflow server`, moto's S3 server) run as real processes;
this proxy stands between them and their clients, so a test can make a store fail the way a
network or an overloaded service does, touching neither the store nor the code under test:

* `pass_through()`: every request reaches the server, every answer the client;
* `refuse()`: the store is unreachable: the listening socket is closed (new connections are
  refused, `ECONNREFUSED`) and every open connection is cut;
* `answer(500)`: each request is answered with that status by the proxy itself
  (`Connection: close`) and never reaches the server.

A `Fault` can end after `count` requests or `seconds` after its first, and can wait: `at` starts
it with the first request whose `METHOD path` contains the text (that request is faulted),
`after` with the request following it. `plan()` lines faults up: each waits its turn until the
one before is over. `log` records what each request got, so a test shows its faults were met.

Requests are read one at a time (keep-alive connections too), so a fault switched on between
two requests of one connection applies to the second; each forwarded request gets a connection
to the server of its own, so an idle one the server closed is never reused. `Expect:
100-continue` (botocore's uploads) is answered by the proxy: `100 Continue` when it forwards,
the fault's status at once when it does not.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prefect_server import free_port

REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Fault:
    """What a store does wrong, from when, for how long. `kind`: "refuse" or "status"."""

    kind: str
    status: int = 500
    count: int | None = None
    seconds: float | None = None
    at: str | None = None
    after: str | None = None
    started_at: float | None = None
    served: int = 0

    def __post_init__(self) -> None:
        if self.kind == "refuse" and self.after is not None:
            raise ValueError("a refusal starts `at` a request: `after` it, the cut would hit it")

    def meets(self, request_line: str, now: float) -> bool:
        """Whether this request is faulted; the first one `at` (or `after`) starts the fault."""
        if self.started_at is None:
            if self.after is not None:
                if self.after in request_line:
                    self.started_at = now
                return False
            if self.at is None or self.at in request_line:
                self.started_at = now
        return self.started_at is not None

    def over(self, now: float) -> bool:
        if self.count is not None and self.served >= self.count:
            return True
        return bool(
            self.seconds is not None
            and self.started_at is not None
            and now - self.started_at >= self.seconds
        )


class FlakyProxy:
    """`url` reaches the server at `upstream` (`http://host:port`) through the planned faults."""

    def __init__(self, upstream: str, name: str = "proxy") -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[tuple[str, str]] = []  # (request line, what it got)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listening = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=name)
        self._acceptor.start()
        if not self._listening.wait(10):
            raise AssertionError(f"{name}: could not listen on 127.0.0.1:{self.port}")

    # ----------------------------------------------------------------- switches

    def pass_through(self) -> None:
        self.plan()

    def refuse(self, at: str | None = None, seconds: float | None = None) -> None:
        """Unreachable: now, or from the first request containing `at`; for `seconds`, or until
        switched back."""
        self.plan(Fault("refuse", seconds=seconds, at=at))

    def answer(
        self,
        status: int = 500,
        count: int | None = None,
        seconds: float | None = None,
        at: str | None = None,
    ) -> None:
        """Answer `status` to the next `count` requests, or for `seconds` from the first one
        (from the first containing `at`, when given)."""
        self.plan(Fault("status", status=status, count=count, seconds=seconds, at=at))

    def plan(self, *faults: Fault) -> None:
        """These faults one after the other, replacing any planned before; none: pass through."""
        with self._lock:
            self._faults = list(faults)
        if self.refusing():
            self._cut_all()

    def faulted(self) -> list[str]:
        """The request lines that met a fault."""
        with self._lock:
            return [line for line, got in self.log if got != "forwarded"]

    def refusing(self) -> bool:
        with self._lock:
            return self._refusing(time.monotonic())

    def close(self) -> None:
        self._closed.set()
        self._cut_all()
        self._acceptor.join(5)

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _current(self, now: float) -> Fault | None:
        """Under the lock: the fault in force or waiting for its trigger; spent ones dropped."""
        while self._faults:
            fault = self._faults[0]
            if fault.kind == "refuse" and fault.at is None and fault.started_at is None:
                fault.started_at = now  # unreachable from the moment it is its turn
            if fault.started_at is None or not fault.over(now):
                return fault
            self._faults.pop(0)
        return None

    def _refusing(self, now: float) -> bool:
        """Under the lock: whether the listener must be closed now."""
        fault = self._current(now)
        return fault is not None and fault.kind == "refuse" and fault.started_at is not None

    def _decide(self, request_line: str) -> Fault | None:
        """The fault this request meets, if any (counted), under the lock."""
        now = time.monotonic()
        with self._lock:
            fault = self._current(now)
            if fault is None or not fault.meets(request_line, now):
                self.log.append((request_line, "forwarded"))
                return None
            fault.served += 1
            got = "refused" if fault.kind == "refuse" else str(fault.status)
            self.log.append((request_line, got))
            return fault

    def _cut_all(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        return listener

    def _accept_loop(self) -> None:
        listener: socket.socket | None = self._listen()
        self._listening.set()
        try:
            while not self._closed.is_set():
                if self.refusing():
                    if listener is not None:
                        listener.close()
                        listener = None
                        self._cut_all()
                    time.sleep(0.05)
                    continue
                if listener is None:
                    listener = self._listen()
                ready, _, _ = select.select([listener], [], [], 0.05)
                if ready:
                    client, _ = listener.accept()
                    threading.Thread(target=self._serve, args=(client,), daemon=True).start()
        finally:
            if listener is not None:
                listener.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _forget(self, *socks: socket.socket | None) -> None:
        for sock in socks:
            if sock is None:
                continue
            with self._lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, client: socket.socket) -> None:
        """One client connection: its requests one at a time, each forwarded or faulted."""
        self._track(client)
        client_in = client.makefile("rb")
        try:
            while True:
                head = _read_head(client_in)
                if head is None:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target = request_line.split(" ")[:2]
                fault = self._decide(f"{method} {target}")
                if fault is not None and fault.kind == "refuse":
                    self._cut_all()
                    return
                headers = _headers(head)
                if fault is not None:
                    client.sendall(self._fault_answer(fault.status, method))
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _without_header(head, b"expect")
                body = _read_body(client_in, headers)
                if self._forward(client, method, head + body):
                    return
        except (OSError, ValueError):
            return  # a cut connection: the client sees it as such
        finally:
            client_in.close()
            self._forget(client)

    def _fault_answer(self, status: int, method: str) -> bytes:
        """The proxy's own answer, closing the connection (no body to a HEAD request)."""
        body = f"{self.name}: injected {status}\n".encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + (b"" if method == "HEAD" else body)

    def _forward(self, client: socket.socket, method: str, request: bytes) -> bool:
        """One request to the server on a connection of its own (so an idle connection the
        server closed is never reused), its answer to the client; whether the client's
        connection must close (a body that ends with the connection)."""
        upstream = self._track(socket.create_connection(self.upstream, timeout=300))
        upstream_in = upstream.makefile("rb")
        try:
            upstream.sendall(request)
            head = _read_head(upstream_in)
            while head is not None and head[9:10] == b"1":
                head = _read_head(upstream_in)  # an interim 1xx, answered already
            if head is None:
                raise ConnectionError("the server closed the connection without an answer")
            headers = _headers(head)
            status = int(head.split(b" ", 2)[1])
            client.sendall(head)
            no_body = method == "HEAD" or status in (204, 304)
            return _relay_body(upstream_in, client, headers, no_body)
        finally:
            upstream_in.close()
            self._forget(upstream)


def _read_head(stream) -> bytes | None:
    """The request or status line and headers, through the blank line; None at EOF."""
    lines = []
    while True:
        line = stream.readline(65537)
        if not line:
            return None if not lines else b"".join(lines)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            if len(lines) == 1:  # a stray blank line between requests
                lines = []
                continue
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    found = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            key, value = line.split(b":", 1)
            found[key.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return found


def _without_header(head: bytes, name: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(name + b":")]
    return b"\r\n".join(kept)


def _read_body(stream, headers: dict[str, str]) -> bytes:
    """A request's body, as sent (chunked bodies with their framing)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return b"".join(_chunks(stream))
    length = int(headers.get("content-length", "0") or 0)
    return _read_exactly(stream, length)


def _relay_body(stream, client: socket.socket, headers: dict[str, str], no_body: bool) -> bool:
    """Send the response's body on to the client; whether it ended with the connection."""
    if no_body:
        return False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        for piece in _chunks(stream):
            client.sendall(piece)
        return False
    if "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining:
            piece = stream.read(min(remaining, 1 << 16))
            if not piece:
                raise ConnectionError("the server closed the connection mid-body")
            client.sendall(piece)
            remaining -= len(piece)
        return False
    while piece := stream.read1(1 << 16):
        client.sendall(piece)
    return True


def _chunks(stream):
    """A chunked body's pieces, framing included, through its trailers."""
    while True:
        size_line = stream.readline(65537)
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        yield size_line
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = stream.readline(65537)
                if not trailer:
                    raise ConnectionError("connection closed inside a chunked body")
                yield trailer
                if trailer in (b"\r\n", b"\n"):
                    return
        yield _read_exactly(stream, size + 2)


def _read_exactly(stream, length: int) -> bytes:
    data = stream.read(length) if length else b""
    if len(data) != length:
        raise ConnectionError("connection closed inside a body")
    return data
