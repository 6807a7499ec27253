"""An S3 endpoint that checks credentials, for the "bad credentials" tests.

moto accepts any key unless its IAM checks are on, and that switch is process-wide, so on
moto a second moto runs in a child process with ``INITIAL_NO_AUTH_ACTION_COUNT=0``: it
refuses every key it never issued (``InvalidAccessKeyId``, HTTP 403). A Ceph gateway
checks keys anyway, so on RGW its own endpoint is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("http://%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
server.stop()
"""


@contextmanager
def strict_endpoint(backend: str, endpoint_url: str) -> Iterator[str]:
    """Yield the URL of an S3 server that refuses unknown access keys."""
    if backend != "moto":
        yield endpoint_url
        return
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()  # blocks until the server listens
        if not url.startswith("http://"):
            raise RuntimeError("the strict moto server did not start")
        yield url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
