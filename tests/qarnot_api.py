"""A local server playing the Qarnot REST API, for the tests that connect in Qarnot mode.

Owns: :class:`FakeQarnotApi` and :func:`serve`. The fake answers ``GET /settings`` with
``settings`` (the storage URL) and ``GET /info`` with ``email`` as the account's email,
accepts only ``Authorization: <token>`` (no "Bearer"), as Qarnot does, and records the
(path, Authorization header) of every request.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class FakeQarnotApi:
    """What the fake API serves, and the (path, Authorization header) of each request."""

    token: str
    settings: dict[str, Any]
    email: str
    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(api: FakeQarnotApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            api.requests.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != api.token:
                self._answer(401, {"message": "unauthorized"})
            elif self.path == "/settings":
                self._answer(200, api.settings)
            elif self.path == "/info":
                self._answer(200, {"email": api.email, "quotaBytesBucket": 1,
                                   "bucketCount": 2, "maxBucket": 100})
            else:
                self._answer(404, {"message": "not found"})

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(api: FakeQarnotApi, tls: tuple[Path, Path] | None = None) -> Iterator[FakeQarnotApi]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    api.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


