"""Security: private staging, a mount closed to other users unless --allow-other, secrets
kept out of logs, error messages and process arguments, and no bucket key able to make a
download write outside its target folder.

The other user is ``nobody``, reached with ``setpriv`` (the tests run as root). Secrets are
looked for verbatim in everything a user or another process could read.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, closed_port
from mounting import mounted, qarnotfs, run
from servers import S3Server

from qarnotfs.bucket import Bucket
from qarnotfs.connection import Connection

pytestmark = pytest.mark.timeout(120)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
EVIL_KEYS = ("../../etc/qarnotfs-evil", "../escape", "a/../../b-escape", "ok/../../../x",
             "..", "ok/..")
GOOD_KEYS = {"ok/file": b"fine", "top": b"top", "/lead": b"leading slash"}


@pytest.fixture
def public_base() -> Iterator[Path]:
    """A folder other users can traverse (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="qarnotfs-sec-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secret_env(s3_server: S3Server, s3_env: dict[str, str]) -> dict[str, str]:
    """The environment with a secret that is unmistakable in any text (moto accepts any)."""
    if s3_server.backend != "moto":
        return s3_env
    return {**s3_env, "AWS_SECRET_ACCESS_KEY": f"SeCrEt-{uuid.uuid4().hex}"}


def secret_of(env: dict[str, str]) -> str:
    return env["AWS_SECRET_ACCESS_KEY"]


def as_nobody(*command: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return run([*NOBODY, *command], check=False, timeout=30)


# -- staging and log permissions ---------------------------------------------------------


@pytest.mark.mount
def test_staging_folder_is_0700_and_staged_files_0600(
        s3_env: dict[str, str], bucket_name: str, tmp_path: Path) -> None:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount, \
            open(mount.mountpoint / "open-file", "wb") as handle:
        handle.write(b"x" * 1000)
        handle.flush()
        private = [p for p in mount.staging_dir.iterdir() if p.is_dir()]
        assert len(private) == 1, private
        assert stat.S_IMODE(private[0].stat().st_mode) == 0o700
        staged = [p for p in private[0].iterdir() if p.is_file()]
        assert staged, "the file being written should have a staged copy"
        for path in staged:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(mount.log_file.stat().st_mode) == 0o600


# -- other users ----------------------------------------------------------------------------


@pytest.mark.mount
@pytest.mark.parametrize("allow_other", [False, True], ids=["private", "allow-other"])
def test_mount_is_private_unless_allow_other(
        s3_env: dict[str, str], bucket_name: str, s3_client: Any, tmp_path: Path,
        public_base: Path, allow_other: bool) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="shared.txt", Body=b"hello")
    options = ["--allow-other"] if allow_other else []
    with mounted(bucket_name, public_base / "mnt", s3_env, tmp_path / "w", *options) as mount:
        listing = as_nobody("ls", mount.mountpoint)
        reading = as_nobody("cat", mount.mountpoint / "shared.txt")
        if allow_other:
            assert listing.returncode == 0, listing.stderr
            assert listing.stdout.split() == ["shared.txt"]
            assert reading.stdout == "hello"
            # The files' modes still apply: nobody may not write a 0644 file of root's.
            writing = as_nobody("sh", "-c", f"echo x > {mount.mountpoint}/new")
            assert writing.returncode != 0 and "Permission denied" in writing.stderr
        else:
            assert listing.returncode != 0
            assert "Permission denied" in listing.stderr
            assert reading.returncode != 0
        # The owner is unaffected.
        assert (mount.mountpoint / "shared.txt").read_bytes() == b"hello"


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.mount
def test_secret_never_in_debug_log_or_process_arguments(
        secret_env: dict[str, str], bucket_name: str, tmp_path: Path) -> None:
    secret = secret_of(secret_env)
    with mounted(bucket_name, tmp_path / "mnt", secret_env, tmp_path / "w",
                 "--debug") as mount:
        (mount.mountpoint / "d").mkdir()
        (mount.mountpoint / "d" / "f").write_bytes(b"payload")
        assert (mount.mountpoint / "d" / "f").read_bytes() == b"payload"
        assert os.listdir(mount.mountpoint) == ["d"]
        assert mount.pid is not None
        cmdline = Path(f"/proc/{mount.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        assert b"--debug" in cmdline  # really that process's arguments
        mount.stop()
    log = mount.log_text()
    assert "getattr(" in log or "-> ok" in log, "the debug log should show FUSE requests"
    assert secret not in log


def test_secret_never_in_cli_debug_output_or_errors(
        secret_env: dict[str, str], bucket_name: str, s3_client: Any) -> None:
    secret = secret_of(secret_env)
    s3_client.put_object(Bucket=bucket_name, Key="k", Body=b"v")
    listed = qarnotfs("--debug", "ls", bucket_name, env=secret_env)
    assert listed.returncode == 0, listed.stderr
    assert "k" in listed.stdout
    assert listed.stderr, "--debug should log something"
    unreachable = {**secret_env, "QARNOT_STORAGE_URL": f"http://127.0.0.1:{closed_port()}"}
    failed = qarnotfs("ls", bucket_name, env=unreachable, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.startswith("qarnotfs: error: ") and "Traceback" not in failed.stderr
    failed_debug = qarnotfs("--debug", "ls", bucket_name, env=unreachable, timeout=120)
    assert failed_debug.returncode == 1
    for result in (listed, failed, failed_debug):
        assert secret not in result.stdout + result.stderr


@pytest.mark.mount
def test_secret_never_in_mount_errors(secret_env: dict[str, str], s3_server: S3Server,
                                      bucket_name: str, tmp_path: Path) -> None:
    secret = secret_of(secret_env)
    (tmp_path / "mnt").mkdir()
    with FaultProxy(s3_server.endpoint_url, lifetime=120) as proxy:
        proxy.inject("status", status=403, code="AccessDenied")
        denied = qarnotfs("mount", bucket_name, tmp_path / "mnt", "--debug",
                          env={**secret_env, "QARNOT_STORAGE_URL": proxy.url})
    unreachable = qarnotfs("mount", bucket_name, tmp_path / "mnt", "--debug",
                           env={**secret_env,
                                "QARNOT_STORAGE_URL": f"http://127.0.0.1:{closed_port()}"})
    for result in (denied, unreachable):
        assert result.returncode != 0
        assert result.stderr.startswith("qarnotfs: error: "), result.stderr
        assert "Traceback" not in result.stderr
        assert secret not in result.stdout + result.stderr
    assert "denied" in denied.stderr
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.parametrize("text", [
    "[storage]\nsecret_key {secret}\n",                 # no '=': a parsing error
    "secret_key = {secret}\n",                          # no section header
    "[storage]\nsecret_key = {secret}\nsecret_key = {secret}\n",  # duplicate option
    "[storage]\nsecret_key = {secret}\nunsafe = maybe\n",          # a bad value beside it
])
def test_secret_in_a_broken_config_file_is_not_echoed(s3_env: dict[str, str], tmp_path: Path,
                                                      text: str) -> None:
    secret = f"SeCrEt-{uuid.uuid4().hex}"
    config = tmp_path / "broken.conf"
    config.write_text(text.format(secret=secret))
    result = qarnotfs("--config", config, "buckets", env=s3_env)
    assert result.returncode != 0
    assert result.stderr.startswith("qarnotfs: error: ") and "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


def test_connection_repr_and_settings_hide_the_secret(s3_server: S3Server) -> None:
    with Connection(storage_url=s3_server.endpoint_url, access_key="AKIDEXAMPLE",
                    secret_key="do-not-show-me-123") as conn:
        assert "do-not-show-me-123" not in repr(conn)
        assert "do-not-show-me-123" not in repr(conn.settings)


# -- downloads stay inside their target -----------------------------------------------------


@pytest.fixture
def evil_bucket(bucket_name: str, s3_client: Any) -> str:
    for key in EVIL_KEYS:
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"EVIL")
    for key, body in GOOD_KEYS.items():
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=body)
    return bucket_name


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file()}


def assert_contained(sandbox: Path, target: Path) -> None:
    """Only the expected files, all inside ``target``; nothing else anywhere in the sandbox."""
    outside = {k: v for k, v in files_under(sandbox).items()
               if not (sandbox / k).resolve().is_relative_to(target.resolve())}
    assert outside == {}, f"written outside the target: {sorted(outside)}"
    inside = files_under(target)
    assert b"EVIL" not in inside.values(), inside
    assert inside["ok/file"] == b"fine" and inside["top"] == b"top"
    assert not Path("/etc/qarnotfs-evil").exists()


def sandbox_and_target(tmp_path: Path) -> tuple[Path, Path]:
    sandbox = tmp_path / "sandbox"
    target = sandbox / "one" / "two" / "target"
    target.mkdir(parents=True)
    return sandbox, target


def test_get_all_files_never_writes_outside_the_target(
        s3_server: S3Server, evil_bucket: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    sandbox, target = sandbox_and_target(tmp_path)
    with Connection(storage_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key) as conn:
        Bucket(conn, evil_bucket, create=False).get_all_files(target)
    assert_contained(sandbox, target)
    assert "skipping key '../../etc/qarnotfs-evil'" in caplog.text


@pytest.mark.parametrize("command", ["get", "sync"])
def test_cli_download_never_writes_outside_the_target(
        s3_env: dict[str, str], evil_bucket: str, tmp_path: Path, command: str) -> None:
    sandbox, target = sandbox_and_target(tmp_path)
    args: list[str | os.PathLike[str]] = (
        ["get", "-r", evil_bucket, target] if command == "get"
        else ["sync", f"qarnot://{evil_bucket}", target])
    result = qarnotfs(*args, env=s3_env)
    assert_contained(sandbox, target)
    assert "Traceback" not in result.stderr
    assert "../../etc/qarnotfs-evil" in result.stderr, "skipped keys must be reported"


@pytest.mark.parametrize("key", ["../outside", "../../etc/qarnotfs-evil", "a/../../x"])
def test_get_file_without_local_refuses_escaping_keys(
        s3_server: S3Server, bucket_name: str, s3_client: Any, tmp_path: Path, key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"EVIL")
    work = tmp_path / "sandbox" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with Connection(storage_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                       secret_key=s3_server.secret_key) as conn, \
            pytest.raises(ValueError, match="cannot be written"):
        Bucket(conn, bucket_name, create=False).get_file(key)
    assert files_under(tmp_path / "sandbox") == {}


@pytest.mark.mount
def test_mount_never_shows_escaping_keys(s3_env: dict[str, str], evil_bucket: str,
                                         tmp_path: Path) -> None:
    with mounted(evil_bucket, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        seen = {p.relative_to(mount.mountpoint).as_posix()
                for p in mount.mountpoint.rglob("*")}
        # "a/../../b-escape" leaves a visible, empty folder "a"; "/lead" starts with an
        # empty segment, so it is hidden like every key with "..".
        assert seen == {"a", "ok", "ok/file", "top"}
    assert "hidden from the mount" in mount.log_text()

