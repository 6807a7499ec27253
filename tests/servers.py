"""S3 servers for the test suite: moto in-process, or a real Ceph RADOS Gateway.

``start_moto()`` runs moto's threaded server on 127.0.0.1 (a free port chosen by the OS).
``rgw_from_env_or_start()`` finds a running RGW (``QARNOTFS_RGW_ENDPOINT``, or
``scripts/ceph-rgw.sh env``) or starts one with ``scripts/ceph-rgw.sh start``; it stops the
gateway at the end only if it started it.

Both return ``(S3Server, stop)`` where ``stop()`` is safe to call once at session end.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from qarnotfs.quickack import install_quickack

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO_ROOT = Path(__file__).resolve().parent.parent
RGW_SCRIPT = REPO_ROOT / "scripts" / "ceph-rgw.sh"
REGION = "us-east-1"

# The keys scripts/ceph-rgw.sh gives its test user unless RGW_ACCESS_KEY/RGW_SECRET_KEY say
# otherwise; moto accepts any key.
RGW_DEFAULT_ACCESS_KEY = "qarnotfs-test-access"
RGW_DEFAULT_SECRET_KEY = "qarnotfs-test-secret"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"

# `start` may have to apt-get install Ceph first (~15 s here, longer on a slow mirror).
RGW_START_TIMEOUT_S = 600.0
RGW_STOP_TIMEOUT_S = 120.0

StopFn = Callable[[], None]


@dataclass(frozen=True)
class S3Server:
    """Where an S3 server listens and how to sign requests for it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    backend: str  # "moto" or "rgw"
    region: str = REGION
    started_here: bool = field(default=False, compare=False)

    def env(self) -> dict[str, str]:
        """The variables a qarnotfs process needs to reach this server."""
        return {
            "QARNOT_STORAGE_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> S3Client:
        """A plain boto3 S3 client for this server (see ``make_client``)."""
        return make_client(self)


# ---------------------------------------------------------------------------------------------
# boto3 client
# ---------------------------------------------------------------------------------------------


def client_config(**overrides: Any) -> Config:
    """Path-style addressing and checksums only when required, as the Qarnot SDK uses
    against Ceph (botocore's newer default adds CRC checksums to every request)."""
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "max_pool_connections": 16,
    }
    options.update(overrides)
    return Config(**options)


def make_client(server: S3Server, *, quickack: bool = True, **config: Any) -> S3Client:
    """A raw boto3 S3 client for ``server``.

    With ``quickack`` (the default) the client ACKs responses at once: see
    ``install_quickack``. It only changes timing, never what is sent or received.
    """
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=client_config(**config),
    )
    if quickack:
        install_quickack(client)
    return client


def empty_and_delete_bucket(client: S3Client, name: str, attempts: int = 5) -> bool:
    """Abort pending multipart uploads, delete every object (and any versions), delete the
    bucket. A bucket that is already gone is fine. Retries a few times (a listing may lag a
    delete on RGW), then warns instead of raising: cleanup must not hide a test's result.
    Returns True when the bucket is gone."""
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            _abort_uploads(client, name)
            _delete_objects(client, name)
            if attempt > 0:
                _delete_versions(client, name)  # only a versioned bucket would need it
            client.delete_bucket(Bucket=name)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return True
            error = exc
        except (BotoCoreError, RuntimeError) as exc:  # connection trouble, partial deletes
            error = exc
        time.sleep(0.2 * (attempt + 1))
    warnings.warn(f"could not delete test bucket {name!r}: {error}", stacklevel=2)
    return False


def _abort_uploads(client: S3Client, name: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def _delete_keys(client: S3Client, name: str, objects: list[dict[str, str]]) -> None:
    for start in range(0, len(objects), 1000):  # DeleteObjects takes 1000 keys at most
        batch: Any = objects[start : start + 1000]
        result = client.delete_objects(Bucket=name, Delete={"Objects": batch, "Quiet": True})
        if result.get("Errors"):
            raise RuntimeError(f"DeleteObjects failed for some keys: {result['Errors'][:3]}")


def _delete_objects(client: S3Client, name: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            _delete_keys(client, name, keys)


def _delete_versions(client: S3Client, name: str) -> None:
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
        entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        objects = [{"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries]
        if objects:
            _delete_keys(client, name, objects)


# ---------------------------------------------------------------------------------------------
# moto
# ---------------------------------------------------------------------------------------------


def start_moto() -> tuple[S3Server, StopFn]:
    """Run moto's S3 in a thread of this process, on 127.0.0.1 and a port the OS picks."""
    from moto.server import ThreadedMotoServer

    # Port 0: the kernel picks a free port at bind time, so no race with other processes
    # (picking a "free" port first and binding later could lose it). A failed bind would
    # leave start() waiting forever, which port 0 rules out too.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(
        endpoint_url=f"http://{host}:{port}",
        access_key=MOTO_ACCESS_KEY,
        secret_key=MOTO_SECRET_KEY,
        backend="moto",
        started_here=True,
    )
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            server.stop()

    return s3, stop


# ---------------------------------------------------------------------------------------------
# Ceph RGW
# ---------------------------------------------------------------------------------------------


class RGWUnavailable(RuntimeError):
    """scripts/ceph-rgw.sh could not give us a gateway."""


def parse_exports(text: str) -> dict[str, str]:
    """``export A=1 B=2`` lines (as printed by ``ceph-rgw.sh env``) -> {"A": "1", "B": "2"}."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] != "export":
            continue
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if sep:
                values[name] = value
    return values


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    # The readiness probe of the script needs boto3: use this very interpreter.
    env.setdefault("QARNOTFS_PYTHON", sys.executable)
    return env


def _run_script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RGW_SCRIPT), command],
        cwd=REPO_ROOT,
        env=_script_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _server_from_exports(values: dict[str, str], started_here: bool) -> S3Server:
    try:
        return S3Server(
            endpoint_url=values["QARNOT_STORAGE_URL"],
            access_key=values["AWS_ACCESS_KEY_ID"],
            secret_key=values["AWS_SECRET_ACCESS_KEY"],
            backend="rgw",
            started_here=started_here,
        )
    except KeyError as exc:
        raise RGWUnavailable(f"ceph-rgw.sh printed no {exc.args[0]}: {values!r}") from None


def rgw_from_env_or_start() -> tuple[S3Server, StopFn]:
    """A Ceph RGW to test against, and a stop function that stops only what we started.

    1. ``QARNOTFS_RGW_ENDPOINT`` (with ``QARNOTFS_RGW_ACCESS_KEY``/``QARNOTFS_RGW_SECRET_KEY``,
       else the script's default keys): a gateway someone else runs.
    2. ``scripts/ceph-rgw.sh env`` succeeds: the gateway the script already runs.
    3. Otherwise ``scripts/ceph-rgw.sh start`` (installing Ceph if needed), stopped at the end.
    """

    def no_stop() -> None:
        return None

    endpoint = os.environ.get("QARNOTFS_RGW_ENDPOINT")
    if endpoint:
        server = S3Server(
            endpoint_url=endpoint.rstrip("/"),
            access_key=os.environ.get("QARNOTFS_RGW_ACCESS_KEY", RGW_DEFAULT_ACCESS_KEY),
            secret_key=os.environ.get("QARNOTFS_RGW_SECRET_KEY", RGW_DEFAULT_SECRET_KEY),
            backend="rgw",
        )
        return server, no_stop

    running = _run_script("env", timeout=60)
    if running.returncode == 0:
        return _server_from_exports(parse_exports(running.stdout), started_here=False), no_stop

    started = _run_script("start", timeout=RGW_START_TIMEOUT_S)
    if started.returncode != 0:
        raise RGWUnavailable(
            f"{RGW_SCRIPT} start failed (exit {started.returncode}):\n{started.stderr.strip()}"
        )
    server = _server_from_exports(parse_exports(started.stdout), started_here=True)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        result = _run_script("stop", timeout=RGW_STOP_TIMEOUT_S)
        if result.returncode != 0:
            print(f"warning: {RGW_SCRIPT} stop failed:\n{result.stderr}", file=sys.stderr)

    return server, stop
