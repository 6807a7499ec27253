"""Quick TCP acknowledgements for boto3 clients: removes a 40 ms stall on Ceph gateways.

Owns: one botocore connection-pool tweak and nothing else. It changes when the client's
kernel acknowledges response bytes, never what is sent or received.

"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)

# The "latency trap" of a Ceph gateway (beast frontend without tcp_nodelay, its default):
# beast writes a response's headers, then its body. Nagle's algorithm on the server holds a
# body smaller than one segment until the client ACKs the headers, and Linux delays that ACK
# by ~40 ms because the connection looks interactive. Every GET of a small object, listing,
# copy or error reply then takes ~44 ms instead of ~2 ms. TCP_NODELAY on the client changes
# nothing (botocore already sets it); TCP_QUICKACK on the client does: set before reading the
# response it leaves delayed-ACK ("pingpong") mode, set after the headers are read it sends
# the pending ACK at once. The kernel clears the flag by itself, hence once per response.
TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _quickack(sock: socket.socket | None) -> None:
    if TCP_QUICKACK is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)


class _QuickAckMixin:
    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _quickack(self.sock)
        response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        _quickack(self.sock)
        return response


# (ignore: botocore-stubs' AWSConnection and urllib3's HTTPConnection disagree on signatures)
class _QuickAckHTTPConnection(_QuickAckMixin, AWSHTTPConnection):  # type: ignore[misc]
    pass


class _QuickAckHTTPSConnection(_QuickAckMixin, AWSHTTPSConnection):  # type: ignore[misc]
    pass


class _QuickAckHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = _QuickAckHTTPConnection


class _QuickAckHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = _QuickAckHTTPSConnection


def install_quickack(client: Any) -> bool:
    """Make one botocore client send TCP quick ACKs; call it before the first request.

    Returns False (and changes nothing) if botocore's internals are not as expected.
    """
    try:
        classes = client._endpoint.http_session._pool_classes_by_scheme
    except AttributeError:
        return False
    if not isinstance(classes, dict):
        return False
    # Mutated in place: the PoolManager (and any proxy manager) share this very dict.
    classes["http"] = _QuickAckHTTPConnectionPool
    classes["https"] = _QuickAckHTTPSConnectionPool
    return True
