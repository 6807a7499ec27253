"""The operations around a live mount: unmount with a stopped storage, a busy unmount,
``status`` of staging folders no mount serves, prefixes that are new or are files,
systemd's READY notification, and ``-o auto_unmount``.

The storage is stopped for real (a moto server in its own process, frozen with SIGSTOP);
the mount is driven with real tools and ``qarnotfs`` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mounting import (
    QARNOTFS,
    Mount,
    bucket_bytes,
    bucket_keys,
    is_mounted,
    mounted,
    qarnotfs,
    storage_environment,
    wait_until,
)
from servers import S3Server
from test_70_faults import frozen_server, moto_subprocess

from qarnotfs.fs import status

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

FAIL_FAST = {"QARNOTFS_CONNECT_TIMEOUT": "1", "QARNOTFS_READ_TIMEOUT": "1",
             "QARNOTFS_RETRY_COUNT": "0"}


def _moto_server(url: str) -> S3Server:
    return S3Server(endpoint_url=url, access_key="testing", secret_key="testing",
                    backend="moto")


def _moto_env(url: str) -> dict[str, str]:
    return storage_environment(_moto_server(url))


def _moto_bucket(url: str, name: str) -> Any:
    """A client of the moto server at ``url``, with bucket ``name`` created."""
    client = _moto_server(url).client()
    client.create_bucket(Bucket=name)
    return client


def _stoppable_mount(url: str, bucket: str, env: dict[str, str],
                     tmp_path: Path) -> tuple[Any, Mount]:
    """A new bucket on the moto server at ``url``, mounted. A long negative cache: names
    known to be free before the storage stops, so a copy is accepted and staged, and only
    its upload meets the stopped storage."""
    client = _moto_bucket(url, bucket)
    mount = Mount(bucket, tmp_path / "mnt", env, tmp_path / "state", ["--negative-ttl", "600"])
    return client, mount.start()


def _write_in_subprocess(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Write through the mount in a child (a stuck FUSE call must not stall the test)."""
    return subprocess.run(["sh", "-c", 'printf %s "$1" > "$2"', "sh", text, os.fspath(path)],
                          capture_output=True, text=True, timeout=60, check=False)


# -- a stopped storage ---------------------------------------------------------------------


@pytest.mark.moto_only
def test_unmount_with_a_stopped_storage_says_what_stays_staged(tmp_path: Path) -> None:
    with moto_subprocess(tmp_path) as (url, server):
        env = {**_moto_env(url), **FAIL_FAST}
        client, mount = _stoppable_mount(url, "stopped", env, tmp_path)
        mountpoint = mount.mountpoint
        try:
            assert not (mountpoint / "kept.txt").exists()
            with frozen_server(server):
                _write_in_subprocess(mountpoint / "kept.txt", "kept data")
                started = time.monotonic()
                result = qarnotfs("unmount", mountpoint, env=env, timeout=120)
                took = time.monotonic() - started
                assert result.returncode == 1, result.stderr
                assert took < 60, f"unmount took {took:.0f} s"
                last = result.stderr.strip().splitlines()[-1]
                assert last.startswith(f"qarnotfs: error: {mountpoint} is unmounted, but 1 "
                                       "upload(s)"), result.stderr
                assert "kept.txt" in last and "stay staged in" in last
                assert f"--staging-dir {mount.staging_dir}" in last
                assert not is_mounted(mountpoint)

                listed = qarnotfs("status", env=env, check=True).stdout
                assert "stopped\tnot mounted" in listed, listed
                assert "/kept.txt" in listed
                assert (f"upload with: qarnotfs mount stopped MOUNTPOINT --staging-dir "
                        f"{mount.staging_dir}") in listed
                report = json.loads(qarnotfs("status", "--json", env=env, check=True).stdout)
                ours = [x for x in report["not_mounted"]
                        if x["folder"].startswith(f"{mount.staging_dir}/")]
                assert [(x["source"], [(p["path"], p["bytes"]) for p in x["pending"]])
                        for x in ours] == [("stopped", [("/kept.txt", len("kept data"))])]
            mount.log_file.write_text("")  # the failed uploads were logged as errors
            mount.start()  # the storage is back: the next mount uploads what stayed
            mount.stop()
            assert bucket_bytes(client, "stopped", "kept.txt") == b"kept data"
            assert f"{mount.staging_dir}/" not in qarnotfs("status", env=env, check=True).stdout
        finally:
            mount.cleanup()


@pytest.mark.moto_only
@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_unmount_wait_shows_progress_and_ends_safely(tmp_path: Path, how: str) -> None:
    with moto_subprocess(tmp_path) as (url, server):
        # The first upload fails after 15 s and is journaled; unmount's last try then waits
        # 15 s more for the frozen storage: that is the wait the user ends.
        patient = {**_moto_env(url), "QARNOTFS_READ_TIMEOUT": "15",
                   "QARNOTFS_RETRY_COUNT": "0"}
        client, mount = _stoppable_mount(url, "waiting", patient, tmp_path)
        mountpoint = mount.mountpoint
        try:
            assert not (mountpoint / "slow.txt").exists()
            with frozen_server(server):
                # The close's upload waits for the frozen server: run it in the background.
                writer = subprocess.Popen(["sh", "-c", 'printf data > "$1"', "sh",
                                           os.fspath(mountpoint / "slow.txt")])
                wait_until(lambda: bool(status.pending_summary(
                    status.read_record(os.fspath(mountpoint)).staging  # type: ignore[union-attr]
                )), 60, "the upload to be pending")
                command = [*QARNOTFS, "unmount", "-z", os.fspath(mountpoint)]
                if how == "timeout":
                    command += ["--timeout", "3"]
                unmount = subprocess.Popen(command, env=patient, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
                assert unmount.stderr is not None
                first = unmount.stderr.readline()  # the wait shows what it waits for
                assert first.startswith("qarnotfs: waiting for 1 upload(s)"), first
                assert "slow.txt" in first
                if how == "ctrl-c":
                    unmount.send_signal(signal.SIGINT)
                _out, rest = unmount.communicate(timeout=60)
                err = first + rest
                assert unmount.returncode == (1 if how == "timeout" else 130), err
                assert not is_mounted(mountpoint)
                assert "Ctrl-C stops waiting (the data stays staged)" in err
                assert "stopped waiting for its uploads" in err
                assert "stays staged in" in err
            writer.wait(timeout=120)
            assert mount.pid is not None and status.wait_for_exit(mount.pid, 120)
            assert bucket_bytes(client, "waiting", "slow.txt") == b"data"
        finally:
            mount.cleanup()


# -- busy mounts ---------------------------------------------------------------------------


def test_busy_unmount_names_the_processes_and_mentions_z(
        s3_server: S3Server, bucket_name: str, tmp_path: Path) -> None:
    env = storage_environment(s3_server)
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "state") as mount:
        user = subprocess.Popen(["sleep", "120"], cwd=mount.mountpoint)
        try:
            result = qarnotfs("unmount", mount.mountpoint, env=env)
            assert result.returncode == 1
            line = result.stderr.strip()
            assert f"it is in use by sleep (pid {user.pid})" in line, line
            assert f"qarnotfs unmount -z {mount.mountpoint}" in line
            assert is_mounted(mount.mountpoint)
        finally:
            user.kill()
            user.wait()
        mount.stop()


# -- prefixes ------------------------------------------------------------------------------


def test_new_prefix_is_announced_and_a_file_is_refused(
        s3_server: S3Server, bucket_name: str, s3_client: Any, tmp_path: Path) -> None:
    env = storage_environment(s3_server)
    s3_client.put_object(Bucket=bucket_name, Key="data.csv", Body=b"1,2\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    refused = qarnotfs("mount", f"qarnot://{bucket_name}/data.csv", mountpoint, env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"qarnotfs: error: {bucket_name}/data.csv is a file, "
                                      "not a folder: mount the folder that holds it, or "
                                      "another prefix")
    assert not is_mounted(mountpoint)
    mount = Mount(f"qarnot://{bucket_name}/proj", mountpoint, env, tmp_path / "state")
    try:
        result = qarnotfs(*mount.command(), env=env)
        assert result.returncode == 0, result.stderr
        assert (f"{bucket_name}/proj/ holds nothing yet: the mount starts empty, and the "
                "prefix is created by the first file written in it") in result.stderr
        record = status.read_record(os.fspath(mountpoint))
        assert record is not None and record.source == f"{bucket_name}/proj"
        mount.pid = record.pid
        (mountpoint / "first.txt").write_text("first")
        mount.stop()
        assert bucket_keys(s3_client, bucket_name) == {"data.csv", "proj/first.txt"}
    finally:
        mount.cleanup()


# -- systemd and libfuse options -----------------------------------------------------------


def test_foreground_mount_notifies_systemd_when_ready(
        s3_server: S3Server, bucket_name: str, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(os.fspath(notify_path))
        listener.settimeout(60)
        state, cache = tmp_path / "state", tmp_path / "cache"
        env = {**storage_environment(s3_server), "NOTIFY_SOCKET": os.fspath(notify_path),
               "STATE_DIRECTORY": os.fspath(state), "CACHE_DIRECTORY": os.fspath(cache)}
        server = subprocess.Popen([*QARNOTFS, "mount", "-f", bucket_name,
                                   os.fspath(mountpoint)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            message = listener.recv(4096).decode()
            assert is_mounted(mountpoint), "READY=1 came before the mount was up"
            fields = dict(line.split("=", 1) for line in message.splitlines())
            assert fields["READY"] == "1" and fields["MAINPID"] == str(server.pid)
            assert fields["STATUS"] == f"serving {bucket_name} on {mountpoint}"
            record = status.read_record(os.fspath(mountpoint))
            assert record is not None and record.staging is not None
            assert record.staging.startswith(os.fspath(state / "staging") + "/")
            assert list(cache.glob("blocks/*/index.db")), \
                "the read cache is in systemd's CacheDirectory"
            assert qarnotfs("unmount", mountpoint, env=env).returncode == 0
            assert listener.recv(4096).decode() == "STOPPING=1"
            assert server.wait(timeout=60) == 0
        finally:
            if is_mounted(mountpoint):
                qarnotfs("unmount", "-z", mountpoint, env=env)
            if server.poll() is None:
                server.kill()
            server.communicate(timeout=60)


def test_auto_unmount_goes_when_the_process_dies(
        s3_server: S3Server, bucket_name: str, tmp_path: Path) -> None:
    env = storage_environment(s3_server)
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "state",
                 "-o", "auto_unmount") as mount:
        assert mount.pid is not None
        os.kill(mount.pid, signal.SIGKILL)
        assert status.wait_for_exit(mount.pid, 30)
        wait_until(lambda: not is_mounted(mount.mountpoint), 30, "fusermount3 to unmount")
        mount.pid = None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) to hide /dev/fuse")
def test_a_fuse_failure_shows_its_cause_on_the_terminal(
        s3_server: S3Server, bucket_name: str, tmp_path: Path) -> None:
    env = storage_environment(s3_server)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log_file = tmp_path / "mount.log"
    # A private mount namespace whose /dev has no fuse device (but a /dev/null).
    script = ('mount --make-rprivate / && mount -t tmpfs none /dev && '
              'mknod -m 666 /dev/null c 1 3 && exec "$@"')
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *QARNOTFS, "mount", bucket_name,
         os.fspath(mountpoint), "--log-file", os.fspath(log_file),
         "--staging-dir", os.fspath(tmp_path / "staging")],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"qarnotfs: error: FUSE could not mount {mountpoint}: fuse: device not found, try "
        f"'modprobe fuse' first; see {log_file}")
    assert not is_mounted(mountpoint)
