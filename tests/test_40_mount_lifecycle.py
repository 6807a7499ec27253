"""The life of a mount: checks before mounting, options, every way to unmount, remounting.

Every mount runs in its own process (``qarnotfs mount``); each test checks the mount, the
bucket directly, and, where it matters, a later mount of the same bucket.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mounting import (
    QARNOTFS,
    Mount,
    bucket_bytes,
    bucket_keys,
    is_mounted,
    qarnotfs,
    run,
    wait_until,
)

from qarnotfs.fs import status

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MakeMount = Callable[..., Mount]


@pytest.fixture
def make_mount(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[MakeMount]:
    """A factory of (not yet started) mounts; all of them are cleaned up after the test."""
    made: list[Mount] = []

    def make(source: str, *options: str, env: dict[str, str] | None = None) -> Mount:
        index = len(made)
        workdir = tmp_path / f"work{index}"
        workdir.mkdir()
        mount = Mount(source, tmp_path / f"mnt{index}", env or s3_env, workdir,
                      ["--cache-ttl", "1", *options])
        mount.mountpoint.mkdir()
        made.append(mount)
        return mount

    yield make
    for mount in made:
        mount.cleanup()


def mount_fails(mount: Mount, *extra: str) -> str:
    """Run a mount that must fail; return its one error line after checking nothing is
    mounted."""
    result = qarnotfs(*mount.command(), *extra, env=mount.env, timeout=60)
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qarnotfs: error: "), lines[0]
    assert "Traceback" not in result.stderr
    assert not is_mounted(mount.mountpoint)
    return lines[0]


# -- a full round trip -----------------------------------------------------------------

def test_write_unmount_remount(make_mount: MakeMount, bucket_name: str, s3_client: Any,
                               tmp_path: Path) -> None:
    mount = make_mount(bucket_name).start()
    big = os.urandom(20 * 1024 * 1024 + 5)  # multipart upload
    (tmp_path / "big.bin").write_bytes(big)
    run(["cp", tmp_path / "big.bin", mount.mountpoint / "big.bin"])
    (mount.mountpoint / "dir").mkdir()
    (mount.mountpoint / "dir" / "note.txt").write_text("note\n")

    mount.stop()
    assert not list(mount.mountpoint.iterdir())
    assert bucket_bytes(s3_client, bucket_name, "big.bin") == big
    assert bucket_bytes(s3_client, bucket_name, "dir/note.txt") == b"note\n"

    mount.start()
    run(["cmp", tmp_path / "big.bin", mount.mountpoint / "big.bin"])
    assert (mount.mountpoint / "dir" / "note.txt").read_text() == "note\n"
    mount.stop()


# -- open files removed ------------------------------------------------------------------

def test_rm_r_of_a_folder_holding_an_open_file(make_mount: MakeMount, bucket_name: str,
                                               s3_client: Any) -> None:
    """SEMANTICS.md, Unlinked open files: ``rm -r`` succeeds although a file of the tree
    is open (libfuse hides it under a ``.fuse_hidden`` name, which rmdir ignores), the
    descriptor still reads, and nothing of the tree is left in the bucket."""
    mount = make_mount(bucket_name, "--debug").start()
    tree = mount.mountpoint / "tree"
    (tree / "sub").mkdir(parents=True)
    data = os.urandom(300_000)
    (tree / "sub" / "open.bin").write_bytes(data)
    (tree / "other.txt").write_text("other")
    fd = os.open(tree / "sub" / "open.bin", os.O_RDONLY)
    try:
        run(["rm", "-r", tree])
        assert os.listdir(mount.mountpoint) == []
        assert bucket_keys(s3_client, bucket_name) == set()
        assert os.pread(fd, len(data) + 1, 0) == data
        # Its folder is gone from libfuse's tree too: no path is left to stat it by.
        with pytest.raises(OSError) as raised:
            os.fstat(fd)
        assert raised.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    mount.stop()
    assert "rename('/tree/sub/open.bin', '/tree/sub/.fuse_hidden" in mount.log_text()
    assert bucket_keys(s3_client, bucket_name) == set()
    mount.start()
    assert os.listdir(mount.mountpoint) == []
    mount.stop()


# -- unmounting --------------------------------------------------------------------------

def _writer(path: Path, data: bytes) -> subprocess.Popen[bytes]:
    """A process that writes ``data`` to ``path``, reports, and keeps the file open until
    its stdin closes."""
    code = ("import sys\n"
            "f = open(sys.argv[1], 'wb')\n"
            "f.write(sys.stdin.buffer.read(int(sys.argv[2])))\n"
            "f.flush()\n"
            "print('written', flush=True)\n"
            "sys.stdin.buffer.read()\n"
            "f.close()\n")
    writer = subprocess.Popen([sys.executable, "-c", code, os.fspath(path), str(len(data))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(data)
    writer.stdin.flush()
    assert writer.stdout.readline() == b"written\n"
    return writer


def test_lazy_unmount_waits_for_open_file(make_mount: MakeMount, bucket_name: str,
                                          s3_client: Any) -> None:
    mount = make_mount(bucket_name).start()
    data = os.urandom(100_000)
    writer = _writer(mount.mountpoint / "open.bin", data)
    unmount = subprocess.Popen([*QARNOTFS, "unmount", "--lazy", os.fspath(mount.mountpoint)],
                               env=mount.env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: not is_mounted(mount.mountpoint), message="lazy detach")
        # The file is still open, so the serving process (and `unmount`) must wait.
        assert mount.pid is not None and status.process_alive(mount.pid)
        assert unmount.poll() is None
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        assert writer.wait(30) == 0
    assert unmount.wait(60) == 0, unmount.stderr
    assert not status.process_alive(mount.pid)
    assert bucket_bytes(s3_client, bucket_name, "open.bin") == data
    mount.assert_clean_log()


def test_sigterm_uploads_pending_data(make_mount: MakeMount, bucket_name: str,
                                      s3_client: Any) -> None:
    mount = make_mount(bucket_name).start()
    data = os.urandom(50_000)
    writer = _writer(mount.mountpoint / "pending.bin", data)
    try:
        assert mount.pid is not None
        # Written but never closed: nothing has asked for an upload yet.
        assert "pending.bin" not in bucket_keys(s3_client, bucket_name)
        os.kill(mount.pid, signal.SIGTERM)
        assert status.wait_for_exit(mount.pid, 60), "SIGTERM did not end the mount process"
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        writer.wait(30)
    assert not is_mounted(mount.mountpoint)
    assert bucket_bytes(s3_client, bucket_name, "pending.bin") == data
    mount.assert_clean_log()


@pytest.mark.parametrize("command", [["fusermount3", "-u"], ["umount"]],
                         ids=["fusermount3", "umount"])
def test_system_unmount(make_mount: MakeMount, bucket_name: str, s3_client: Any,
                        command: list[str]) -> None:
    if command == ["umount"] and os.geteuid() != 0:
        pytest.skip("umount of a FUSE mount needs root")
    mount = make_mount(bucket_name).start()
    (mount.mountpoint / "file.txt").write_text("content\n")
    run([*command, mount.mountpoint])
    assert mount.pid is not None and status.wait_for_exit(mount.pid, 60)
    assert not is_mounted(mount.mountpoint)
    assert bucket_bytes(s3_client, bucket_name, "file.txt") == b"content\n"
    assert status.read_record(os.fspath(mount.mountpoint)) is None
    mount.assert_clean_log()


def test_foreground_mount_ends_on_sigint(make_mount: MakeMount, bucket_name: str,
                                         s3_client: Any) -> None:
    mount = make_mount(bucket_name)
    process = subprocess.Popen([*QARNOTFS, *mount.command(), "--foreground"], env=mount.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: status.is_qarnotfs_mount(os.fspath(mount.mountpoint))
                   or process.poll() is not None, timeout=30, message="foreground mount")
        assert process.poll() is None, process.communicate()
        (mount.mountpoint / "fg.txt").write_text("foreground\n")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert not is_mounted(mount.mountpoint)
    assert bucket_bytes(s3_client, bucket_name, "fg.txt") == b"foreground\n"


def test_unmount_of_something_else_fails(tmp_path: Path, s3_env: dict[str, str]) -> None:
    result = qarnotfs("unmount", tmp_path, env=s3_env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"qarnotfs: error: {tmp_path} is not a qarnotfs mount"


# -- checks before mounting ------------------------------------------------------------

def test_missing_bucket(make_mount: MakeMount, missing_bucket_name: str) -> None:
    line = mount_fails(make_mount(missing_bucket_name))
    assert line == f"qarnotfs: error: bucket '{missing_bucket_name}' does not exist"


def test_non_empty_mountpoint(make_mount: MakeMount, bucket_name: str) -> None:
    mount = make_mount(bucket_name)
    (mount.mountpoint / "precious").write_text("keep me")
    assert "is not empty" in mount_fails(mount)
    assert (mount.mountpoint / "precious").read_text() == "keep me"
    # Explicitly allowed, the mount hides the folder's content until unmounted.
    mount.options.append("--nonempty")
    mount.start()
    assert not (mount.mountpoint / "precious").exists()
    mount.stop()
    assert (mount.mountpoint / "precious").read_text() == "keep me"


def test_bad_mountpoints(make_mount: MakeMount, bucket_name: str) -> None:
    mount = make_mount(bucket_name)
    mount.mountpoint.rmdir()
    assert mount_fails(mount).endswith(f"mount point {mount.mountpoint} does not exist")
    mount.mountpoint.write_text("a file")
    assert mount_fails(mount).endswith(f"mount point {mount.mountpoint} is not a folder")
    mount.mountpoint.unlink()
    mount.mountpoint.mkdir()
    mount.start()
    other = make_mount(bucket_name)
    other.mountpoint = mount.mountpoint
    again = qarnotfs(*other.command(), env=other.env)
    assert again.returncode == 1
    assert again.stderr == f"qarnotfs: error: {mount.mountpoint} is already a mount point\n"
    assert status.read_record(os.fspath(mount.mountpoint)).pid == mount.pid  # type: ignore[union-attr]
    mount.stop()


@pytest.mark.parametrize(("options", "message"), [
    (["-o", "cache_ttl=abc"], "invalid value for cache_ttl: 'abc' (expected a number of "
                              "seconds >= 0)"),
    (["--umask", "999"], "invalid value for umask: '999' (expected an octal mask such as "
                         "022)"),
    (["-o", "uid=no-such-user-here"], "invalid value for uid: 'no-such-user-here'"),
    (["-o", "bogus"], "unknown mount option: bogus"),
    (["-o", "staging_dir"], "option staging_dir needs a value"),
    (["-o", "secret_key=hunter22"], "secret_key cannot be a mount option"),
    (["--statfs-size", "12Q"], "invalid value for statfs_size: '12Q'"),
], ids=["value", "flag-value", "user", "unknown", "no-value", "secret", "size"])
def test_bad_options(make_mount: MakeMount, bucket_name: str, options: list[str],
                     message: str) -> None:
    line = mount_fails(make_mount(bucket_name), *options)
    assert message in line
    assert "hunter22" not in line


def test_no_credentials(make_mount: MakeMount, bucket_name: str,
                        s3_env: dict[str, str]) -> None:
    env = {k: v for k, v in s3_env.items() if not k.startswith("AWS_ACCESS")}
    env["AWS_SECRET_ACCESS_KEY"] = ""
    assert "no credentials" in mount_fails(make_mount(bucket_name, env=env))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_endpoint(make_mount: MakeMount, bucket_name: str,
                              s3_env: dict[str, str]) -> None:
    env = {**s3_env, "QARNOT_STORAGE_URL": f"http://127.0.0.1:{_free_port()}"}
    started = time.monotonic()
    line = mount_fails(make_mount(bucket_name, env=env))
    assert "cannot reach the storage" in line
    assert time.monotonic() - started < 20


@pytest.fixture
def auth_checking_server(s3_server: Any) -> Iterator[str]:
    """An endpoint that rejects unknown keys: RGW itself, or a moto that checks them."""
    if s3_server.backend == "rgw":
        yield s3_server.endpoint_url
        return
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, timeout=30, message="moto with authentication")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def test_bad_credentials(make_mount: MakeMount, bucket_name: str, s3_env: dict[str, str],
                         auth_checking_server: str) -> None:
    env = {**s3_env, "QARNOT_STORAGE_URL": auth_checking_server,
           "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    line = mount_fails(make_mount(bucket_name, env=env))
    assert f"access to bucket '{bucket_name}' denied: check the credentials" in line
    assert "wrong-secret-value" not in line


# -- options -----------------------------------------------------------------------------

def test_o_options(make_mount: MakeMount, bucket_name: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="plain.txt", Body=b"no metadata")
    mount = make_mount(bucket_name, "-o", "ro,uid=4321,gid=4322,umask=027",
                       "-o", "cache_ttl=0.2,negative_ttl=0,attr_timeout=0,entry_timeout=0")
    mount.start()
    info = os.stat(mount.mountpoint / "plain.txt")
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4322, 0o640)
    assert (mount.mountpoint / "plain.txt").read_bytes() == b"no metadata"
    with pytest.raises(OSError) as raised:
        (mount.mountpoint / "new.txt").write_text("refused")
    assert raised.value.errno == errno.EROFS
    assert "ro" in _mount_options(mount.mountpoint)
    # A short cache TTL: an object added behind the mount's back shows up quickly.
    s3_client.put_object(Bucket=bucket_name, Key="later.txt", Body=b"later")
    wait_until(lambda: "later.txt" in os.listdir(mount.mountpoint), timeout=10,
               message="a new object to appear")
    assert bucket_keys(s3_client, bucket_name) == {"plain.txt", "later.txt"}
    mount.stop()


def _mount_options(path: Path) -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == os.fspath(path):
                return fields[3].split(",")
    raise AssertionError(f"{path} is not mounted")


def test_prefix_mount(make_mount: MakeMount, bucket_name: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="outside.txt", Body=b"x")
    s3_client.put_object(Bucket=bucket_name, Key="data/set/inside.txt", Body=b"in")
    s3_client.put_object(Bucket=bucket_name, Key="data/settled.txt", Body=b"neighbour")
    mount = make_mount(f"{bucket_name}/data/set", "-o", "noexec,nodev").start()
    assert {"noexec", "nodev"} <= set(_mount_options(mount.mountpoint))
    assert os.listdir(mount.mountpoint) == ["inside.txt"]
    (mount.mountpoint / "sub").mkdir()
    (mount.mountpoint / "sub" / "new.txt").write_text("new")
    assert bucket_bytes(s3_client, bucket_name, "data/set/sub/new.txt") == b"new"
    mount.stop()


def test_status_and_debug_log(make_mount: MakeMount, bucket_name: str,
                              s3_env: dict[str, str]) -> None:
    mount = make_mount(bucket_name, "--debug").start()
    (mount.mountpoint / "f").write_text("x")
    listing = qarnotfs("status", env=s3_env, check=True).stdout
    assert f"{mount.mountpoint}\t{bucket_name}\tpid {mount.pid}" in listing
    assert mount.pid is not None
    with open(f"/proc/{mount.pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read()
    mount.stop()
    log = mount.log_text()
    assert "getattr('/'" in log and " ms" in log
    assert "create('/f'" in log
    secret = s3_env["AWS_SECRET_ACCESS_KEY"].encode()
    assert secret not in log.encode()
    assert secret not in arguments
    assert bucket_name not in qarnotfs("status", env=s3_env, check=True).stdout
    assert stat.S_IMODE(os.stat(mount.log_file).st_mode) == 0o600


def test_stale_mount_after_a_crash(make_mount: MakeMount, bucket_name: str,
                                   s3_env: dict[str, str]) -> None:
    mount = make_mount(bucket_name).start()
    assert mount.pid is not None
    os.kill(mount.pid, signal.SIGKILL)
    assert status.wait_for_exit(mount.pid, 30)
    with pytest.raises(OSError) as raised:
        os.listdir(mount.mountpoint)
    assert raised.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    line = mount_fails_on_stale(mount)
    assert f"if it is a stale mount, run: qarnotfs unmount {mount.mountpoint}" in line
    assert mount.pid is not None
    assert status.read_record(os.fspath(mount.mountpoint)) is not None
    assert bucket_name not in qarnotfs("status", env=s3_env, check=True).stdout

    qarnotfs("unmount", mount.mountpoint, env=s3_env, check=True)
    assert not is_mounted(mount.mountpoint)
    mount.start()
    mount.stop()


def mount_fails_on_stale(mount: Mount) -> str:
    result = qarnotfs(*mount.command(), env=mount.env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("qarnotfs: error: ")
    return result.stderr.strip()


def test_large_folder_listing(make_mount: MakeMount, bucket_name: str,
                              s3_client: Any) -> None:
    """Hundreds of entries take many readdir calls; each entry's attributes come with it."""
    names = {f"file-{i:04d}.dat" for i in range(600)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: s3_client.put_object(Bucket=bucket_name,
                                                        Key=f"big/{name}", Body=b""), names))
    mount = make_mount(bucket_name, "--debug").start()
    listing = run(["ls", "-l", mount.mountpoint / "big"]).stdout.splitlines()
    assert len(listing) == 601  # "total" and one line per file
    assert set(os.listdir(mount.mountpoint / "big")) == names
    found = run(["find", mount.mountpoint, "-type", "f"]).stdout.split()
    assert len(found) == 600
    mount.stop()
    # readdirplus: `ls -l` needed no lookup per entry.
    assert "getattr('/big/file-" not in mount.log_text()


def test_global_config_option(make_mount: MakeMount, bucket_name: str, s3_server: Any,
                              s3_client: Any, tmp_path: Path) -> None:
    config = tmp_path / "qarnotfs.conf"
    config.write_text(f"[storage]\nurl = {s3_server.endpoint_url}\n"
                      f"access_key = {s3_server.access_key}\n"
                      f"secret_key = {s3_server.secret_key}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QARNOT"))}
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    mount = make_mount(bucket_name, env=env)
    qarnotfs("--config", config, *mount.command(), env=env, check=True)
    record = status.read_record(os.fspath(mount.mountpoint))
    assert record is not None
    mount.pid = record.pid
    (mount.mountpoint / "configured.txt").write_text("ok")
    mount.stop()
    assert bucket_bytes(s3_client, bucket_name, "configured.txt") == b"ok"


def test_default_log_file(bucket_name: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    """In the background and without --log-file, the log goes to the user's state folder."""
    env = {**s3_env, "HOME": os.fspath(tmp_path / "home")}
    env.pop("XDG_STATE_HOME", None)
    env.pop("XDG_RUNTIME_DIR", None)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    qarnotfs("mount", bucket_name, mountpoint, "--staging-dir", tmp_path / "staging",
             env=env, check=True)
    try:
        assert f"{mountpoint}\t{bucket_name}\t" in qarnotfs("status", env=env).stdout
    finally:
        result = qarnotfs("unmount", mountpoint, env=env)
        if result.returncode != 0:
            run(["fusermount3", "-uz", mountpoint], check=False)
    assert result.returncode == 0, result.stderr
    log_dir = tmp_path / "home" / ".local" / "state" / "qarnotfs" / "log"
    logs = list(log_dir.glob("mount-*.log"))
    assert len(logs) == 1
    assert f"mounted {bucket_name} on {mountpoint}" in logs[0].read_text()
    assert stat.S_IMODE(os.stat(logs[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(log_dir).st_mode) == 0o700


def test_df_figures_are_consistent_and_configurable(make_mount: MakeMount,
                                                    bucket_name: str) -> None:
    mount = make_mount(bucket_name, "--statfs-size", "2T", "-o", "statfs_inodes=1000")
    mount.start()
    figures = os.statvfs(mount.mountpoint)
    assert figures.f_blocks * figures.f_frsize == 2 << 40
    assert figures.f_bfree == figures.f_bavail == figures.f_blocks  # used = total - free = 0
    assert figures.f_files == figures.f_ffree == 1000
    assert figures.f_namemax == 255
    df = subprocess.run(["df", "-B1", "--output=size,used,avail", os.fspath(mount.mountpoint)],
                        capture_output=True, text=True, check=True).stdout.split()
    assert df[-3:] == [str(2 << 40), "0", str(2 << 40)]
    mount.stop()
