"""Faults between qarnotfs and the storage: unreachable, slow, 5xx/SlowDown, connections cut,
a server frozen with SIGSTOP, a full staging disk, credentials revoked while mounted.

Each fault is made real: a closed port, :class:`faultproxy.FaultProxy` between the client
and the S3 server, a moto server in a subprocess that is SIGSTOPped, a 2 MiB tmpfs as the
staging folder. Checked at the Bucket level (a clear :class:`QarnotException`, bounded in
time) and through the kernel mount (an errno, the mount process still serving, and no byte
lost once the storage is back).

Mount-level calls on a failing storage run in a subprocess with a timeout (``attempt``):
a test process stuck in a FUSE call could not even be interrupted by pytest-timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, closed_port, payload
from mounting import (
    Mount,
    bucket_bytes,
    bucket_keys,
    is_mounted,
    mounted,
    qarnotfs,
    wait_until,
)
from servers import S3Server

from qarnotfs.bucket import Bucket
from qarnotfs.connection import Connection
from qarnotfs.exceptions import (
    ConfigurationException,
    QarnotException,
    QarnotGenericException,
    StorageUnreachableException,
    UnauthorizedException,
)
from qarnotfs.fs import status
from qarnotfs.fs.staging import staged_copies

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
SHORT: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 1.0, "retry_count": 1}
"""Fast-failing client settings: a failing call must give up within seconds."""
# The same for a mount process (qarnotfs.connection reads these variables).
SHORT_ENV = {"QARNOTFS_CONNECT_TIMEOUT": "1", "QARNOTFS_READ_TIMEOUT": "1",
             "QARNOTFS_RETRY_COUNT": "1"}
NO_CACHE = ("--cache-ttl", "0", "--negative-ttl", "0", "--attr-timeout", "0",
            "--entry-timeout", "0")
"""Mount options so that every call reaches the storage (nothing answered from a cache)."""
GIVE_UP_WITHIN = 20.0
"""A mount-level call on a dead storage must fail within this many seconds."""


def connect(server: S3Server, url: str | None = None, **options: Any) -> Connection:
    return Connection(storage_url=url or server.endpoint_url, access_key=server.access_key,
                      secret_key=server.secret_key, **options)


# =====================================================================================
# Bucket level
# =====================================================================================


def test_unreachable_endpoint_fails_fast_with_a_clear_error(s3_server: S3Server) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with connect(s3_server, url, **SHORT) as conn:
        bucket = Bucket(conn, "any-bucket", create=False)
        with pytest.raises(StorageUnreachableException) as caught:
            bucket.stat("some/key")
        with pytest.raises(StorageUnreachableException):
            bucket.put("k", b"data")
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "unreachable" in message and url in message
    assert s3_server.secret_key not in message or s3_server.secret_key == "testing"


@contextlib.contextmanager
def descriptors_in_use(count: int) -> Iterator[None]:
    """Hold ``count`` more descriptors, so the next sockets get numbers past them (a long
    test session holds many: select() cannot watch a descriptor past 1023)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the descriptor limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("held", [0, 1100], ids=["few descriptors", "descriptors past 1023"])
def test_slow_server_times_out_then_recovers(s3_server: S3Server, proxy: FaultProxy,
                                             bucket_name: str, s3_client: Any,
                                             held: int) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="slow", Body=b"patience")
    with descriptors_in_use(held), connect(s3_server, proxy.url, **SHORT) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        proxy.inject("delay", match=r"^GET ", seconds=float("inf"))
        started = time.monotonic()
        with pytest.raises(StorageUnreachableException, match=r"(?i)timeout|timed out"):
            bucket.read("slow")
        elapsed = time.monotonic() - started
        # Two attempts (one retry) of a 1 s read timeout, plus a short backoff.
        assert 1.5 < elapsed < 10, elapsed
        assert proxy.count("delay", "GET ") == 2
        proxy.clear()
        assert bucket.read("slow") == b"patience"


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"),
                                              (503, "ServiceUnavailable")])
def test_5xx_is_retried_until_it_succeeds(s3_server: S3Server, proxy: FaultProxy,
                                          bucket_name: str, s3_client: Any, status: int,
                                          code: str) -> None:
    with connect(s3_server, proxy.url, retry_count=3) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        proxy.inject("status", match=r"^PUT /[^?]*/k$", times=2, status=status, code=code)
        bucket.put("k", b"retried")
        proxy.inject("status", match=r"^GET /[^?]*/k$", times=2, status=status, code=code)
        assert bucket.read("k") == b"retried"
    assert proxy.count("status") == 4
    assert proxy.count("forward", r"^PUT /[^?]*/k$") == 1
    assert bucket_bytes(s3_client, bucket_name, "k") == b"retried"


def test_5xx_that_never_ends_gives_up_after_the_retries(s3_server: S3Server,
                                                        proxy: FaultProxy,
                                                        bucket_name: str) -> None:
    proxy.inject("status", match=r"^HEAD ", status=503, code="SlowDown")
    started = time.monotonic()
    with connect(s3_server, proxy.url, retry_count=2) as conn, \
            pytest.raises(QarnotGenericException, match=r"503|SlowDown"):
        Bucket(conn, bucket_name, create=False).stat("k")
    assert proxy.count("status") == 3  # 1 attempt + 2 retries, then a clear error
    assert time.monotonic() - started < 20


def test_multipart_upload_survives_slowdown_on_parts(s3_server: S3Server, proxy: FaultProxy,
                                                     bucket_name: str, s3_client: Any,
                                                     tmp_path: Path) -> None:
    data = payload(17 * MIB, "multipart")
    source = tmp_path / "big"
    source.write_bytes(data)
    proxy.inject("status", match=r"^PUT .*partNumber=2", times=2, status=503, code="SlowDown")
    with connect(s3_server, proxy.url, retry_count=3) as conn:
        Bucket(conn, bucket_name, create=False).upload("big", source)
    assert proxy.count("status") == 2
    assert bucket_bytes(s3_client, bucket_name, "big") == data


def test_connection_cut_mid_upload_is_retried(s3_server: S3Server, proxy: FaultProxy,
                                              bucket_name: str, s3_client: Any,
                                              tmp_path: Path) -> None:
    data = payload(3 * MIB, "cut-once")
    source = tmp_path / "f"
    source.write_bytes(data)
    proxy.inject("cut", match=r"^PUT ", times=1, after_bytes=MIB)
    with connect(s3_server, proxy.url, **SHORT) as conn:
        Bucket(conn, bucket_name, create=False).upload("f", source)
    assert proxy.count("cut") == 1
    assert bucket_bytes(s3_client, bucket_name, "f") == data


def test_connection_cut_every_time_fails_clearly_and_leaves_nothing(
        s3_server: S3Server, proxy: FaultProxy, bucket_name: str, s3_client: Any,
        tmp_path: Path) -> None:
    data = payload(3 * MIB, "cut-always")
    source = tmp_path / "f"
    source.write_bytes(data)
    proxy.inject("cut", match=r"^PUT ", after_bytes=MIB)
    with connect(s3_server, proxy.url, **SHORT) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        with pytest.raises(StorageUnreachableException):
            bucket.upload("f", source)
        assert "f" not in bucket_keys(s3_client, bucket_name)  # no half object
        proxy.clear()
        bucket.upload("f", source)  # the same call works once the network does
    assert bucket_bytes(s3_client, bucket_name, "f") == data


def test_failed_multipart_upload_leaves_no_object_and_no_pending_upload(
        s3_server: S3Server, proxy: FaultProxy, bucket_name: str, s3_client: Any,
        tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(payload(17 * MIB, "aborted"))
    proxy.inject("cut", match=r"^PUT .*partNumber=2", after_bytes=MIB)
    with connect(s3_server, proxy.url, **SHORT) as conn, \
            pytest.raises(StorageUnreachableException):
        Bucket(conn, bucket_name, create=False).upload("big", source)
    assert proxy.count("cut") >= 2  # retried before giving up
    assert "big" not in bucket_keys(s3_client, bucket_name)
    # The parts already stored were released (the upload was aborted, not left pending).
    assert s3_client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []


def test_download_cut_midway_leaves_no_partial_file(s3_server: S3Server, proxy: FaultProxy,
                                                    bucket_name: str, s3_client: Any,
                                                    tmp_path: Path) -> None:
    data = payload(2 * MIB, "download")
    s3_client.put_object(Bucket=bucket_name, Key="d", Body=data)
    target = tmp_path / "out" / "d"
    target.parent.mkdir()
    target.write_bytes(b"previous content")
    proxy.inject("close", match=r"^GET ")
    with connect(s3_server, proxy.url, **SHORT) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        with pytest.raises(QarnotException):
            bucket.download("d", target)
        # The old file is untouched and no temporary file is left beside it.
        assert target.read_bytes() == b"previous content"
        assert sorted(p.name for p in target.parent.iterdir()) == ["d"]
        proxy.clear()
        bucket.download("d", target)
    assert target.read_bytes() == data


def test_read_cut_midway_is_retried_then_gives_up_clearly(
        s3_server: S3Server, proxy: FaultProxy, bucket_name: str, s3_client: Any) -> None:
    data = payload(2 * MIB, "ranged read")
    s3_client.put_object(Bucket=bucket_name, Key="r", Body=data)
    with connect(s3_server, proxy.url, **SHORT) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        proxy.inject("cut_response", match=r"^GET ", times=1, after_bytes=100_000)
        assert bucket.read("r", 1000, 1_500_000) == data[1000:1_501_000]
        proxy.inject("cut_response", match=r"^GET ", after_bytes=100_000)
        with pytest.raises(StorageUnreachableException, match=r"(?i)connection broken"):
            bucket.read("r")
    assert proxy.count("cut_response") == 3  # 1 cut, then 2 attempts (1 retry) that failed


def test_revoked_credentials_are_unauthorized(s3_server: S3Server, proxy: FaultProxy,
                                              bucket_name: str) -> None:
    proxy.inject("status", status=403, code="AccessDenied")
    with connect(s3_server, proxy.url, **SHORT) as conn, \
            pytest.raises(UnauthorizedException, match="AccessDenied"):
        Bucket(conn, bucket_name, create=False).put("k", b"x")
    assert proxy.count("status") == 1  # a 403 is not retried


# -- a server frozen with SIGSTOP ------------------------------------------------------


@contextlib.contextmanager
def moto_subprocess(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """moto's S3 server in its own process (so it can be frozen), on a free port."""
    for _ in range(5):
        port = closed_port()
        log = (tmp_path / f"moto-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        if _wait_for_http(url, process):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail("moto_server did not start")
    try:
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_for_http(url: str, process: subprocess.Popen[bytes]) -> bool:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return True
        time.sleep(0.1)
    return False


def frozen_server(process: subprocess.Popen[bytes]) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def freeze() -> Iterator[None]:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(process.pid, signal.SIGCONT)

    return freeze()


def _subprocess_server(url: str) -> S3Server:
    return S3Server(endpoint_url=url, access_key="testing", secret_key="testing",
                    backend="moto")


@pytest.mark.moto_only
def test_sigstopped_server_times_out_then_recovers(tmp_path: Path) -> None:
    with moto_subprocess(tmp_path) as (url, process), \
            connect(_subprocess_server(url), **SHORT) as conn:
        bucket = conn.create_bucket("frozen")
        bucket.put("k", b"before")
        with frozen_server(process):
            started = time.monotonic()
            with pytest.raises(StorageUnreachableException):
                bucket.read("k")
            assert time.monotonic() - started < 10
        assert bucket.read("k") == b"before"
        bucket.put("k", b"after")
        assert bucket.read("k") == b"after"


# =====================================================================================
# Through the mount
# =====================================================================================

PROBE = r"""
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path, "rb") as f:
            sys.stdout.write("ok %s" % f.read().hex()[:64])
    elif op == "list":
        print("ok", sorted(os.listdir(path)))
    elif op == "write":
        with open(path, "wb") as f:
            f.write(bytes.fromhex(sys.argv[3]) * int(sys.argv[4]))
        print("ok")
    else:
        raise SystemExit("unknown probe " + op)
except OSError as error:
    print(errno.errorcode.get(error.errno, str(error.errno)))
"""


def attempt(op: str, path: Path, *args: str, timeout: float = 60) -> tuple[str, float]:
    """Run one file operation in a subprocess: ("ok ..." or the errno name, seconds taken).

    A subprocess, because a process stuck in a FUSE call cannot be interrupted; the timeout
    turns a hang into a test failure.
    """
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", PROBE, op, os.fspath(path), *args],
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), time.monotonic() - started


def assert_serving(mount: Mount) -> None:
    """The mount process is alive and the mount answers."""
    assert mount.pid is not None and status.process_alive(mount.pid), mount.log_text()[-3000:]
    assert is_mounted(mount.mountpoint)
    assert status.is_qarnotfs_mount(os.fspath(mount.mountpoint))


def mount_env(s3_env: dict[str, str], url: str, **overrides: str) -> dict[str, str]:
    return {**s3_env, **SHORT_ENV, "QARNOT_STORAGE_URL": url, **overrides}


@pytest.fixture
def proxied_mount(s3_env: dict[str, str], proxy: FaultProxy, bucket_name: str,
                  tmp_path: Path) -> Iterator[Mount]:
    """The test's bucket mounted through the fault proxy, with short timeouts, no caches."""
    with mounted(bucket_name, tmp_path / "mnt", mount_env(s3_env, proxy.url), tmp_path / "w",
                 *NO_CACHE) as mount:
        yield mount


@pytest.mark.mount
def test_mount_storage_unreachable_gives_eio_then_recovers(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    mnt = proxied_mount.mountpoint
    assert attempt("write", mnt / "a", "61", "1000")[0] == "ok"
    proxy.down()
    for op, path in (("read", mnt / "a"), ("list", mnt), ("write", mnt / "b")):
        outcome, seconds = attempt(op, path, "62", "10")
        assert outcome in ("EIO", "ETIMEDOUT"), (op, outcome, proxied_mount.log_text()[-2000:])
        assert seconds < GIVE_UP_WITHIN
    assert_serving(proxied_mount)
    proxy.up()
    assert attempt("read", mnt / "a")[0] == "ok " + ("61" * 32)
    assert attempt("write", mnt / "c", "63", "10")[0] == "ok"
    assert bucket_bytes(s3_client, bucket_name, "c") == b"c" * 10
    assert "storage unreachable" in proxied_mount.log_text()


@pytest.mark.mount
def test_mount_slow_storage_times_out_without_hanging(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="slow", Body=b"s" * 100)
    mnt = proxied_mount.mountpoint
    proxy.inject("delay", seconds=float("inf"))
    outcome, seconds = attempt("read", mnt / "slow")
    assert outcome in ("ETIMEDOUT", "EIO"), outcome
    assert seconds < GIVE_UP_WITHIN
    assert proxy.count("delay") >= 2  # retried once before giving up
    assert_serving(proxied_mount)
    proxy.clear()
    assert attempt("read", mnt / "slow")[0] == "ok " + "73" * 32


@pytest.mark.mount
def test_mount_slowdown_is_retried_transparently(
        s3_env: dict[str, str], proxy: FaultProxy, bucket_name: str, s3_client: Any,
        tmp_path: Path) -> None:
    env = mount_env(s3_env, proxy.url, QARNOTFS_RETRY_COUNT="4")
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "w", *NO_CACHE) as mount:
        proxy.inject("status", match=r"^PUT /[^?]*/f$", times=2, status=503, code="SlowDown")
        proxy.inject("status", match=r"^GET /[^?]*/f", times=2, status=500,
                     code="InternalError")
        assert attempt("write", mount.mountpoint / "f", "66", "5000")[0] == "ok"
        assert bucket_bytes(s3_client, bucket_name, "f") == b"f" * 5000
        assert attempt("read", mount.mountpoint / "f")[0] == "ok " + "66" * 32
        assert proxy.count("status") == 4
        mount.stop()  # and the log has no error: retried faults are not failures


@pytest.mark.mount
def test_mount_upload_cut_keeps_data_staged_and_a_later_fsync_uploads_it(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    mnt = proxied_mount.mountpoint
    data = payload(3 * MIB, "staged")
    proxy.inject("cut", match=r"^PUT ", after_bytes=MIB)
    script = (
        "import errno, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "os.write(fd, sys.stdin.buffer.read())\n"
        "try:\n    os.close(fd)\n    print('ok')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    result = subprocess.run([sys.executable, "-c", script, os.fspath(mnt / "precious")],
                            input=data, capture_output=True, timeout=60, check=True)
    assert result.stdout.decode().strip() == "EIO", result.stderr
    assert "precious" not in bucket_keys(s3_client, bucket_name)
    staged = staged_copies(proxied_mount.staging_dir)
    assert [p.read_bytes() == data for p in staged] == [True], staged
    assert staged[0].stat().st_mode & 0o777 == 0o600
    assert_serving(proxied_mount)
    assert "upload of 'precious' failed" in proxied_mount.log_text()

    proxy.clear()  # the endpoint recovers; reopening and fsync retries the upload
    fsync = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nos.fsync(fd)\n"
             "os.close(fd)\n")
    subprocess.run([sys.executable, "-c", fsync, os.fspath(mnt / "precious")],
                   capture_output=True, timeout=60, check=True)
    assert bucket_bytes(s3_client, bucket_name, "precious") == data
    assert (mnt / "precious").read_bytes() == data
    wait_until(lambda: not staged_copies(proxied_mount.staging_dir),
               timeout=10, message="the staged copy to be freed once uploaded")


@pytest.mark.mount
def test_unmount_with_uploads_failing_keeps_the_staged_copy_and_says_where(
        proxy: FaultProxy, proxied_mount: Mount, s3_env: dict[str, str]) -> None:
    data = bytes.fromhex("0123456789abcdef") * 37_500
    proxy.inject("status", match=r"^PUT ", status=500, code="InternalError")
    outcome, _ = attempt("write", proxied_mount.mountpoint / "pending", "0123456789abcdef",
                         "37500")
    assert outcome == "EIO"
    result = qarnotfs("unmount", proxied_mount.mountpoint, "--timeout", "60", env=s3_env)
    assert result.returncode == 1, result.stderr  # issue 14: what was not uploaded is named
    assert "): pending could not be uploaded" in result.stderr
    assert proxied_mount.pid is not None and not status.process_alive(proxied_mount.pid)
    kept = staged_copies(proxied_mount.staging_dir)
    assert [p.read_bytes() == data for p in kept] == [True], kept
    log = proxied_mount.log_text()
    assert f"staged copies that could not be uploaded are kept in {kept[0].parent}" in log


@pytest.mark.mount
def test_mount_read_cut_midway_is_retried(proxy: FaultProxy, proxied_mount: Mount,
                                          s3_client: Any, bucket_name: str) -> None:
    data = payload(3 * MIB, "read through the mount")
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=data)
    proxy.inject("cut_response", match=r"^GET /[^?]*/big", times=1, after_bytes=200_000)
    copy = proxied_mount.workdir / "copy"
    subprocess.run(["cp", proxied_mount.mountpoint / "big", copy], check=True, timeout=60)
    assert copy.read_bytes() == data
    assert proxy.count("cut_response") == 1


@pytest.mark.mount
def test_mount_open_for_writing_fails_cleanly_when_the_download_fails(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="doc", Body=b"original\n")
    mnt = proxied_mount.mountpoint
    proxy.inject("close", match=r"^GET /[^?]*/doc")
    append = ("import errno, sys\ntry:\n    with open(sys.argv[1], 'ab') as f:\n"
              "        f.write(b'more\\n')\n    print('ok')\n"
              "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    result = subprocess.run([sys.executable, "-c", append, mnt / "doc"], text=True,
                            capture_output=True, timeout=60, check=True)
    assert result.stdout.strip() in ("EIO", "ETIMEDOUT"), result.stdout
    assert bucket_bytes(s3_client, bucket_name, "doc") == b"original\n"
    assert not staged_copies(proxied_mount.staging_dir)
    assert_serving(proxied_mount)
    proxy.clear()
    result = subprocess.run([sys.executable, "-c", append, mnt / "doc"], text=True,
                            capture_output=True, timeout=60, check=True)
    assert result.stdout.strip() == "ok"
    assert bucket_bytes(s3_client, bucket_name, "doc") == b"original\nmore\n"


RENAME = ("import errno, os, sys\n"
          "try:\n    os.rename(sys.argv[1], sys.argv[2])\n    print('ok')\n"
          "except OSError as e:\n    print(errno.errorcode[e.errno])\n")


def interrupted_folder_rename(proxy: FaultProxy, mount: Mount, s3_client: Any,
                              bucket_name: str) -> dict[str, bytes]:
    """Rename src/ to dst/ while the copy of one of its six files always fails."""
    files = {f"src/f{i}": payload(1000 + i, f"rename {i}") for i in range(6)}
    for key, body in files.items():
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=body)
    mnt = mount.mountpoint
    proxy.inject("status", match=r"^PUT /[^/]+/dst/f3", status=500, code="InternalError")
    result = subprocess.run([sys.executable, "-c", RENAME, mnt / "src", mnt / "dst"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "EIO"
    return files


@pytest.mark.mount
def test_mount_folder_rename_interrupted_loses_nothing(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    files = interrupted_folder_rename(proxy, proxied_mount, s3_client, bucket_name)
    mnt = proxied_mount.mountpoint
    for key, body in files.items():  # every source object is still there, intact
        assert bucket_bytes(s3_client, bucket_name, key) == body
    assert sorted(os.listdir(mnt / "src")) == [f"f{i}" for i in range(6)]
    assert_serving(proxied_mount)
    proxy.clear()
    os.rename(mnt / "src", mnt / "dst2")  # works once the storage does
    assert not any(k.startswith("src/") for k in bucket_keys(s3_client, bucket_name))
    for key, body in files.items():
        assert bucket_bytes(s3_client, bucket_name, key.replace("src/", "dst2/")) == body


@pytest.mark.mount
def test_mount_folder_rename_interrupted_leaves_no_half_copied_destination(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    """rename(2) is all or nothing: a failed one must not leave the files it had copied
    so far under the new name (a program seeing dst/ would take it for the result)."""
    interrupted_folder_rename(proxy, proxied_mount, s3_client, bucket_name)
    assert not (proxied_mount.mountpoint / "dst").exists()
    assert not any(k.startswith("dst/") for k in bucket_keys(s3_client, bucket_name))


@pytest.mark.mount
def test_mount_credentials_revoked_give_eacces_and_a_log_line(
        proxy: FaultProxy, proxied_mount: Mount, s3_client: Any, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="r", Body=b"readable")
    mnt = proxied_mount.mountpoint
    proxy.inject("status", status=403, code="AccessDenied")
    for op, path in (("read", mnt / "r"), ("list", mnt), ("write", mnt / "w")):
        outcome, _ = attempt(op, path, "77", "3")
        assert outcome == "EACCES", (op, outcome)
    assert_serving(proxied_mount)
    log = proxied_mount.log_text()
    assert "AccessDenied" in log and "Traceback" not in log
    proxy.clear()
    assert attempt("read", mnt / "r")[0] == "ok " + b"readable".hex()
    assert attempt("list", mnt)[0].startswith("ok ['r'")


@pytest.mark.mount
@pytest.mark.moto_only
def test_mount_survives_a_sigstopped_server(tmp_path: Path, s3_env: dict[str, str]) -> None:
    with moto_subprocess(tmp_path) as (url, process), \
            connect(_subprocess_server(url), **SHORT) as conn:
        bucket = conn.create_bucket("frozen")
        bucket.put("k", b"kept")
        env = mount_env(s3_env, url, AWS_ACCESS_KEY_ID="testing",
                        AWS_SECRET_ACCESS_KEY="testing")
        with mounted("frozen", tmp_path / "mnt", env, tmp_path / "w", *NO_CACHE) as mount:
            mnt = mount.mountpoint
            with frozen_server(process):
                for op, path in (("read", mnt / "k"), ("list", mnt)):
                    outcome, seconds = attempt(op, path)
                    assert outcome in ("ETIMEDOUT", "EIO"), (op, outcome)
                    assert seconds < GIVE_UP_WITHIN
                assert_serving(mount)
            assert attempt("read", mnt / "k")[0] == "ok " + b"kept".hex()
            assert attempt("write", mnt / "new", "6e", "4")[0] == "ok"
            assert bucket.read("new") == b"nnnn"


@pytest.mark.mount
def test_mount_process_killed_keeps_unsaved_writes_in_staging(
        s3_env: dict[str, str], bucket_name: str, s3_client: Any, tmp_path: Path) -> None:
    """SIGKILL of the mount while a file is written but not closed: the written bytes are
    in the staging folder (they went to local disk first), ready to be recovered."""
    data = payload(500_000, "crash")
    writer = ("import sys\nf = open(sys.argv[1], 'wb')\n"
              f"f.write(sys.stdin.buffer.read({len(data)}))\n"
              "f.flush()\nprint('written', flush=True)\nsys.stdin.buffer.read()\n")
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        process = subprocess.Popen([sys.executable, "-c", writer, mount.mountpoint / "unsaved"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(data)
            process.stdin.flush()
            assert process.stdout.readline() == b"written\n"
            assert mount.pid is not None
            os.kill(mount.pid, signal.SIGKILL)
            assert status.wait_for_exit(mount.pid, 30)
        finally:
            process.kill()
            process.wait(timeout=30)
        kept = staged_copies(mount.staging_dir)
        assert [p.read_bytes() == data for p in kept] == [True], kept
        assert stat_mode(kept[0]) == 0o600
        assert "unsaved" not in bucket_keys(s3_client, bucket_name)
        result = qarnotfs("unmount", mount.mountpoint, env=s3_env)  # clears the dead mount
        # issue 14: and says what is not uploaded (exit 1)
        assert result.returncode == 1, result.stderr
        assert "had died, and 1 upload(s) (0.5 MiB): unsaved were not uploaded" in result.stderr
        assert not is_mounted(mount.mountpoint)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- a full staging disk ---------------------------------------------------------------


def fill_staging(mount: Mount) -> str:
    """Write three files that fit, then one that cannot: the big one's outcome."""
    mnt = mount.mountpoint
    for index in range(3):  # each fits, and is freed once uploaded
        assert attempt("write", mnt / f"small{index}", f"3{index}", "700000")[0] == "ok"
    return attempt("write", mnt / "huge", "68", str(4 * MIB))[0]


@pytest.mark.mount
def test_full_staging_disk_gives_enospc_and_loses_nothing(
        s3_env: dict[str, str], bucket_name: str, s3_client: Any, tmp_path: Path,
        small_tmpfs: Path) -> None:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w",
                 "--staging-dir", os.fspath(small_tmpfs)) as mount:
        assert fill_staging(mount) == "ENOSPC"
        for index in range(3):
            data = bucket_bytes(s3_client, bucket_name, f"small{index}")
            assert data == bytes([0x30 + index]) * 700000
        huge = bucket_bytes(s3_client, bucket_name, "huge") \
            if "huge" in bucket_keys(s3_client, bucket_name) else b""
        assert huge == b"h" * len(huge) and len(huge) <= 2 * MIB  # what fitted, never garbage
        assert_serving(mount)
        assert attempt("write", mount.mountpoint / "after", "61", "1000")[0] == "ok"
        assert bucket_bytes(s3_client, bucket_name, "after") == b"a" * 1000


@pytest.mark.mount
def test_full_staging_disk_is_logged_as_one_clear_line(
        s3_env: dict[str, str], bucket_name: str, tmp_path: Path, small_tmpfs: Path) -> None:
    """A full disk is an expected condition: one line naming it, not a traceback."""
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w",
                 "--staging-dir", os.fspath(small_tmpfs)) as mount:
        assert fill_staging(mount) == "ENOSPC"
        log = mount.log_text()
    assert re.search(r"(?i)staging.*full|no space left|ENOSPC", log), log[-3000:]
    assert "Traceback" not in log and "failed unexpectedly" not in log, log[-3000:]


# -- the retry and timeout settings themselves -------------------------------------------


def test_timeouts_and_retries_from_arguments_or_environment(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(s3_server) as conn:
        config: Any = conn.s3.meta.config  # botocore-stubs lack these attributes
        assert (config.connect_timeout, config.read_timeout) == (5.0, 20.0)
        assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    monkeypatch.setenv("QARNOTFS_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("QARNOTFS_READ_TIMEOUT", "7")
    monkeypatch.setenv("QARNOTFS_RETRY_COUNT", "0")
    with connect(s3_server) as conn:
        config = conn.s3.meta.config
        assert (config.connect_timeout, config.read_timeout) == (2.5, 7.0)
        assert config.retries is not None and config.retries["total_max_attempts"] == 1
    with connect(s3_server, connect_timeout=3, read_timeout=4, retry_count=2) as conn:
        config = conn.s3.meta.config  # explicit arguments win over the environment
        assert (config.connect_timeout, config.read_timeout) == (3.0, 4.0)
        assert config.retries is not None and config.retries["total_max_attempts"] == 3


@pytest.mark.parametrize(("variable", "value"), [
    ("QARNOTFS_READ_TIMEOUT", "soon"), ("QARNOTFS_READ_TIMEOUT", "0"),
    ("QARNOTFS_CONNECT_TIMEOUT", "-1"), ("QARNOTFS_CONNECT_TIMEOUT", "inf"),
    ("QARNOTFS_RETRY_COUNT", "-2"), ("QARNOTFS_RETRY_COUNT", "many"),
])
def test_bad_timeout_settings_are_clear_errors(s3_server: S3Server,
                                               monkeypatch: pytest.MonkeyPatch,
                                               variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationException):
        connect(s3_server)
    with pytest.raises(ConfigurationException, match="retry_count"):
        connect(s3_server, retry_count=-1)
