"""The S3 server the benchmark runs against: moto's server, a local Ceph RGW, or a given one.

Owns: starting and always stopping the server the benchmark brought up, the endpoint and
credentials (passed on through the environment only, never in process arguments), and, for
moto, counting the requests the server received in a time window (from its access log);
with ``--latency``, a proxy in front of it that delays every request.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest
    from mypy_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
PROXY_LIFETIME = 24 * 3600.0
"""The latency proxy stops by itself after this (a benchmark's whole run fits in it)."""
# A cluster of its own, away from the ports and state dir the test suite's cluster uses.
RGW_BENCH_ENV = {
    "QARNOTFS_RGW_DIR": "/tmp/qarnotfs-bench-rgw",
    "RGW_PORT": "17680",
    "RGW_MON_PORT": "17690",
    "RGW_OSD_PORT_MIN": "17700",
    "RGW_OSD_PORT_MAX": "17739",
}


class BenchError(RuntimeError):
    """The benchmark cannot go on, or a workload gave a wrong result."""


@dataclass(frozen=True)
class Endpoint:
    """Where the S3 server is and how to sign requests; the secret stays out of ``repr``."""

    url: str
    access_key: str
    secret_key: str = field(repr=False)
    log_path: Path | None = None
    """moto's access log, when the benchmark started moto; None otherwise."""

    def env(self) -> dict[str, str]:
        """The variables `qarnotfs` reads (and boto3-based tools too)."""
        return {
            "QARNOT_STORAGE_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until_answers(endpoint: Endpoint, timeout: float = START_TIMEOUT) -> None:
    """Poll the endpoint with a signed ListBuckets until it answers or the deadline passes."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except Exception as error:
            if time.monotonic() > deadline:
                raise BenchError(f"S3 server at {endpoint.url} did not answer: {error}") from error
            time.sleep(0.1)  # poll interval, not a synchronisation stand-in


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[Endpoint]:
    """moto's server in its own process (so it does not share our GIL), stopped on exit."""
    port = free_port()
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        endpoint = Endpoint(f"http://{LOOPBACK}:{port}", "bench-access", "bench-secret", log_path)
        wait_until_answers(endpoint)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def rgw_server() -> Iterator[Endpoint]:
    """A throw-away Ceph RGW (scripts/ceph-rgw.sh), on ports of its own; stopped on exit."""
    script = REPO / "scripts" / "ceph-rgw.sh"
    env = {**os.environ, **RGW_BENCH_ENV, "QARNOTFS_PYTHON": sys.executable}
    try:
        started = subprocess.run(
            ["bash", str(script), "start"], env=env, capture_output=True, text=True, check=False
        )
        if started.returncode != 0:
            raise BenchError(f"ceph-rgw.sh start failed:\n{started.stderr.strip()}")
        printed = subprocess.run(
            ["bash", str(script), "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
        values = dict(re.findall(r"^export (\w+)=(\S*)$", printed, re.MULTILINE))
        yield endpoint_from(values)
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, check=False)


def endpoint_from(values: dict[str, str] | os._Environ[str]) -> Endpoint:
    """The endpoint named by QARNOT_STORAGE_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY."""
    names = ("QARNOT_STORAGE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    missing = [name for name in names if not values.get(name)]
    if missing:
        raise BenchError(f"--endpoint-from-env needs {', '.join(missing)} in the environment")
    return Endpoint(values[names[0]], values[names[1]], values[names[2]])


@contextlib.contextmanager
def behind_latency(endpoint: Endpoint, seconds: float) -> Iterator[Endpoint]:
    """``endpoint`` seen through a proxy that holds every request ``seconds`` before
    forwarding it: the round trip of a storage across a network, for whichever client
    uses the endpoint yielded (the mount and boto3 alike). The proxy is the test suite's
    (tests/faultproxy.py), with its delay rule on every request."""
    sys.path.insert(0, str(REPO / "tests"))
    from faultproxy import FaultProxy

    with FaultProxy(endpoint.url, lifetime=PROXY_LIFETIME) as proxy:
        proxy.inject("delay", seconds=seconds)
        yield replace(endpoint, url=proxy.url)


@contextlib.contextmanager
def given_endpoint() -> Iterator[Endpoint]:
    endpoint = endpoint_from(os.environ)
    wait_until_answers(endpoint, timeout=10)
    yield endpoint


_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')


class RequestLog:
    """Counts the requests moto logged between two points in time (by log file offset)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path

    def mark(self) -> int:
        return self._path.stat().st_size if self._path else 0

    @contextlib.contextmanager
    def own_requests(self, client: S3Client) -> Iterator[Counter[str]]:
        """Count the requests this client sends inside the block, to leave them out."""
        counts: Counter[str] = Counter()

        def count(request: AWSPreparedRequest, **_: object) -> None:
            target = urlsplit(request.url)
            path = target.path + (f"?{target.query}" if target.query else "")
            counts[request_kind(str(request.method), path)] += 1

        client.meta.events.register("before-send.s3", count)
        try:
            yield counts
        finally:
            client.meta.events.unregister("before-send.s3", count)

    def between(self, start: int, end: int) -> Counter[str] | None:
        if self._path is None:
            return None
        with self._path.open("rb") as log:
            log.seek(start)
            text = log.read(end - start).decode("utf-8", "replace")
        counts: Counter[str] = Counter()
        for method, target in _REQUEST.findall(text):
            counts[request_kind(method, target)] += 1
        return counts


def request_kind(method: str, target: str) -> str:
    """Name an S3 request from its method and target: LIST, GET, HEAD, PUT, DELETE, ..."""
    path, _, query = target.partition("?")
    in_bucket_root = path.strip("/").count("/") == 0
    if method == "GET" and in_bucket_root and ("list-type" in query or "prefix" in query
                                                or "delimiter" in query or not query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE-MULTI"
    if method == "POST" and "uploads" in query:
        return "MPU-START"
    if method == "POST" and "uploadId" in query:
        return "MPU-END"
    if method == "PUT" and "partNumber" in query:
        return "PART"
    return method


def format_counts(counts: Counter[str] | None) -> str:
    if counts is None:
        return "-"
    if not counts:
        return "0"
    return " ".join(f"{count} {kind}" for kind, count in counts.most_common())
