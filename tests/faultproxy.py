"""A TCP proxy between an S3 client and its server that injects faults, for the fault tests.

Owns: :class:`FaultProxy`, which listens on 127.0.0.1 (a port the kernel picks), forwards
every connection to the real server, and applies :class:`Rule` s to chosen HTTP requests:

* ``delay``  - hold the request ``seconds`` before forwarding it (``math.inf``: never answer);
* ``status`` - answer it with an S3 error (503 SlowDown, 500 InternalError, 403
  AccessDenied...) without reaching the server, then close the connection;
* ``cut``    - forward the headers and ``after_bytes`` of the body, then reset both
  connections (a connection cut mid-upload);
* ``cut_response`` - forward the request, pass ``after_bytes`` of the response (headers
  included) back, then reset both connections (a connection cut mid-download);
* ``close``  - close the client's connection without any answer.

A rule matches a regular expression searched in ``"METHOD /path?query"`` and applies to
its first ``times`` matches (``None``: until removed), or with ``every=N`` to one match in
N (still at most ``times``). Requests are parsed one at a time on
each connection (clients do not pipeline), which is all HTTP/1.1 keep-alive needs; the
responses flow back untouched. ``down()`` makes the proxy reset every connection, as a
dead endpoint would, until ``up()``.

Bounded: every wait is interruptible, sockets have timeouts, and the proxy stops by itself
after ``lifetime`` seconds even if a test forgets it (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

HEADER_LIMIT = 64 * 1024
CHUNK = 64 * 1024
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux's value where Python lacks the name
SOCKET_TIMEOUT = 1.0
"""How often blocked socket calls wake up to check whether the proxy is stopping."""


@dataclass
class Rule:
    """One fault, applied to the requests whose ``"METHOD target"`` matches ``match``."""

    action: str  # "delay" | "status" | "cut" | "close"
    match: str = ""
    times: int | None = None
    seconds: float = 0.0
    status: int = 503
    code: str = "SlowDown"
    after_bytes: int = 0
    every: int = 1
    hits: int = 0
    matches: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ("delay", "status", "cut", "cut_response", "close"):
            raise ValueError(f"unknown fault action {self.action!r}")
        self._pattern = re.compile(self.match)

    def claims(self, request_line: str) -> bool:
        """True (and counted) if this rule applies to the request."""
        if self.times is not None and self.hits >= self.times:
            return False
        if not self._pattern.search(request_line):
            return False
        self.matches += 1
        if self.matches % max(1, self.every):
            return False
        self.hits += 1
        return True


@dataclass
class Seen:
    """A request the proxy saw, and what it did with it (``"forward"`` or a rule action)."""

    method: str
    target: str
    action: str


class _Closed(Exception):
    """The connection (or the proxy) is finished."""


class FaultProxy:
    """A fault-injecting proxy in front of ``upstream`` (``"http://host:port"``)."""

    def __init__(self, upstream: str, lifetime: float = 180.0) -> None:
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.upstream = (host, int(port))
        self.lifetime = lifetime
        self.seen: list[Seen] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._down = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(SOCKET_TIMEOUT)
        self.port = self._listener.getsockname()[1]
        self._deadline = time.monotonic() + lifetime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def inject(self, action: str, match: str = "", times: int | None = None,
               **options: object) -> Rule:
        """Add ``Rule(action, match, times, **options)`` and return it."""
        return self.add(Rule(action, match, times, **options))  # type: ignore[arg-type]

    def clear(self) -> None:
        """Remove every rule: requests are forwarded untouched from now on."""
        with self._lock:
            self._rules.clear()

    def down(self) -> None:
        """Reset every open connection and every new one until :meth:`up`."""
        with self._lock:
            self._down = True
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def count(self, action: str, match: str = "") -> int:
        """How many seen requests matching ``match`` got ``action``."""
        pattern = re.compile(match)
        with self._lock:
            return sum(1 for s in self.seen
                       if s.action == action and pattern.search(f"{s.method} {s.target}"))

    def stop(self) -> None:
        """Stop accepting, reset every connection, wait (boundedly) for the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- plumbing --------------------------------------------------------------------

    def _finished(self) -> bool:
        if time.monotonic() > self._deadline and not self._stopping.is_set():
            self._stopping.set()  # the lifetime bound: stop even if nobody calls stop()
        return self._stopping.is_set()

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name,  # type: ignore[arg-type]
                                  daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        sock.settimeout(SOCKET_TIMEOUT)
        with self._lock:
            self._sockets.add(sock)

    def _forget(self, *sockets: socket.socket | None) -> None:
        for sock in sockets:
            if sock is None:
                continue
            with self._lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        while not self._finished():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if self._down:
                _reset(client)
                continue
            # Bytes go on as they come: with Nagle's algorithm, a response forwarded in
            # pieces would wait for the client's delayed ACK (40 ms a request).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(client)
            self._spawn(self._serve, "faultproxy-conn", client)
        self.stop()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        pending = b""
        abrupt = False
        # Response bytes the pump may still pass back (None: no limit); set per request,
        # which is safe because a client waits for each response before its next request.
        budget: list[int | None] = [None]
        try:
            while True:
                head, pending = self._read_head(client, pending)
                method, target, length, expects_continue = _parse_head(head)
                rule = self._rule_for(f"{method} {target}")
                action = rule.action if rule is not None else "forward"
                with self._lock:
                    self.seen.append(Seen(method, target, action))
                if rule is not None and rule.action == "close":
                    return
                if rule is not None and rule.action == "status":
                    if not expects_continue:  # let the client finish sending first
                        pending = self._drain(client, pending, length)
                    client.sendall(_error_response(rule.status, rule.code))
                    return
                if rule is not None and rule.action == "delay":
                    self._wait(rule.seconds, client)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=10)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(upstream)
                    self._spawn(self._pump, "faultproxy-pump", upstream, client, budget)
                if rule is not None and rule.action == "cut_response":
                    budget[0] = rule.after_bytes
                upstream.sendall(head)
                if rule is not None and rule.action == "cut":
                    abrupt = True
                    self._forward_body(client, upstream, pending, min(length, rule.after_bytes))
                    return
                pending = self._forward_body(client, upstream, pending, length)
        except (_Closed, OSError):
            return
        finally:
            end = _reset if abrupt else _close
            if upstream is not None:
                end(upstream)
            end(client)
            self._forget(client, upstream)

    def _rule_for(self, request_line: str) -> Rule | None:
        with self._lock:
            return next((r for r in self._rules if r.claims(request_line)), None)

    def _wait(self, seconds: float, client: socket.socket) -> None:
        """Hold the request; give up early if the client hangs up or the proxy stops."""
        deadline = time.monotonic() + seconds
        # poll(), not select(): a test process may hold descriptors past select's 1023.
        poller = select.poll()
        poller.register(client, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if self._finished():
                raise _Closed
            if remaining <= 0:
                return
            if poller.poll(min(0.1, remaining) * 1000):
                try:
                    if not client.recv(1, socket.MSG_PEEK):
                        raise _Closed  # the client timed out and left
                except (TimeoutError, BlockingIOError):
                    pass
                self._stopping.wait(min(0.1, remaining))

    def _recv(self, sock: socket.socket) -> bytes:
        while True:
            if self._finished():
                raise _Closed
            try:
                data = sock.recv(CHUNK)
            except TimeoutError:
                continue
            if not data:
                raise _Closed
            return data

    def _read_head(self, client: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in pending:
            if len(pending) > HEADER_LIMIT:
                raise _Closed
            pending += self._recv(client)
        end = pending.index(b"\r\n\r\n") + 4
        return pending[:end], pending[end:]

    def _drain(self, client: socket.socket, pending: bytes, length: int) -> bytes:
        while len(pending) < length:
            pending += self._recv(client)
        return pending[length:]

    def _forward_body(self, client: socket.socket, upstream: socket.socket, pending: bytes,
                      length: int) -> bytes:
        """Send ``length`` body bytes upstream; return what the client sent beyond them."""
        sent = 0
        while sent < length:
            if not pending:
                pending = self._recv(client)
            piece, pending = pending[:length - sent], pending[length - sent:]
            upstream.sendall(piece)
            sent += len(piece)
        return pending

    def _pump(self, upstream: socket.socket, client: socket.socket,
              budget: list[int | None]) -> None:
        """Copy the server's responses back to the client (cut where a rule says)."""
        try:
            while True:
                # As a client of a Ceph gateway, acknowledge its bytes at once (see
                # qarnotfs/quickack.py: else each small response waits ~40 ms).
                with contextlib.suppress(OSError):
                    upstream.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
                data = self._recv(upstream)
                limit = budget[0]
                if limit is not None and len(data) >= limit:
                    client.sendall(data[:limit])
                    _reset(client)
                    _reset(upstream)
                    return
                if limit is not None:
                    budget[0] = limit - len(data)
                client.sendall(data)
        except (_Closed, OSError):
            pass
        finally:
            _close(client)  # after the last response bytes, which a reset could discard
            self._forget(upstream, client)


def _parse_head(head: bytes) -> tuple[str, str, int, bool]:
    """(method, target, Content-Length, expects 100-continue) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = [*lines[0].split(" "), "", ""]
    length = 0
    expects_continue = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "expect":
            expects_continue = value.strip().lower() == "100-continue"
        elif name == "transfer-encoding" and value.strip().lower() != "identity":
            raise _Closed  # no S3 client call here sends a chunked body
    return method, target, length, expects_continue


def _error_response(status: int, code: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>").encode()
    reason = {403: "Forbidden", 500: "Internal Server Error", 503: "Slow Down"}.get(status,
                                                                                    "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a cut cable would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    """Close politely: what was sent is delivered before the FIN."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        sock.close()


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payload(size: int, seed: str = "") -> bytes:
    """``size`` bytes that differ from block to block (a misplaced block shows)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 128
        counter += 1
    return bytes(out[:size])
