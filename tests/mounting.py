"""Mounting a bucket for the live tests: in its own process, and always unmounted again.

``Mount`` runs ``qarnotfs mount`` as a subprocess (which returns once the mount is ready
and leaves the serving process behind), unmounts with ``qarnotfs unmount`` (which waits
for that process to finish its uploads), and ``cleanup()`` gets rid of the mount whatever
state it is in (``fusermount3 -u``, then lazy, then killing the process) so a failing test
never leaves a mount behind. ``run``/``sh`` drive real tools and fail with their output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qarnotfs.fs import status

QARNOTFS = (sys.executable, "-m", "qarnotfs")
COMMAND_TIMEOUT = 120.0


def storage_environment(server: Any) -> dict[str, str]:
    """This process's environment pointed at ``server`` only (for module-scoped mounts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QARNOT"))}
    env.update(server.env())
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def run(args: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, check: bool = True,
        timeout: float = COMMAND_TIMEOUT, input: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, fail the test with its output if it fails."""
    result = subprocess.run([os.fspath(a) for a in args], env=env, cwd=cwd, text=True,
                            capture_output=True, timeout=timeout, check=False, input=input,
                            stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(os.fspath(arg) for arg in args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def sh(script: str, *, cwd: str | os.PathLike[str] | None = None,
       env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet (``set -e``) with real tools."""
    return run(["sh", "-ec", script], cwd=cwd, env=env, check=check)


def qarnotfs(*args: str | os.PathLike[str], env: dict[str, str],
             check: bool = False, timeout: float = COMMAND_TIMEOUT,
             ) -> subprocess.CompletedProcess[str]:
    return run([*QARNOTFS, *args], env=env, check=check, timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0,
               message: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return status.mount_type(os.fspath(path)) is not None


@dataclass
class Mount:
    """One ``qarnotfs mount`` of ``source`` on ``mountpoint`` (started by :meth:`start`)."""

    source: str
    mountpoint: Path
    env: dict[str, str]
    workdir: Path
    options: list[str] = field(default_factory=list)
    pid: int | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "mount.log"

    @property
    def staging_dir(self) -> Path:
        return self.workdir / "staging"

    @property
    def read_cache_dir(self) -> Path:
        """The read cache of the test's mounts (kept across a remount)."""
        return self.workdir / "blocks"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"

    def command(self) -> list[str]:
        return ["mount", self.source, os.fspath(self.mountpoint),
                "--log-file", os.fspath(self.log_file),
                "--staging-dir", os.fspath(self.staging_dir),
                "--read-cache-dir", os.fspath(self.read_cache_dir), *self.options]

    def start(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        result = qarnotfs(*self.command(), env=self.env)
        if result.returncode != 0:
            raise AssertionError(f"qarnotfs mount failed ({result.returncode}): "
                                 f"{result.stderr}\nlog:\n{self.log_text()[-3000:]}")
        assert status.is_qarnotfs_mount(os.fspath(self.mountpoint)), self.log_text()[-3000:]
        record = status.read_record(os.fspath(self.mountpoint))
        assert record is not None, "the serving process wrote no state record"
        self.pid = record.pid
        return self

    def stop(self) -> None:
        """``qarnotfs unmount``: returns once the serving process has exited."""
        result = qarnotfs("unmount", self.mountpoint, env=self.env)
        assert result.returncode == 0, f"unmount failed: {result.stderr}\n{self.log_text()}"
        assert not is_mounted(self.mountpoint)
        assert self.pid is not None and not status.process_alive(self.pid)
        self.assert_clean_log()
        self.pid = None

    def remount(self) -> None:
        self.stop()
        self.start()

    def assert_clean_log(self) -> None:
        """No error and no traceback was logged by the serving process."""
        text = self.log_text()
        bad = [line for line in text.splitlines()
               if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
        assert not bad, f"the mount logged errors:\n{text[-5000:]}"

    def cleanup(self) -> None:
        """Unmount whatever the state; never leaves a mount or a process behind."""
        path = os.fspath(self.mountpoint)
        if is_mounted(path):
            qarnotfs("unmount", path, "--timeout", "30", env=self.env, timeout=60)
        for command in (["fusermount3", "-u", path], ["fusermount3", "-uz", path]):
            if not is_mounted(path):
                break
            subprocess.run(command, capture_output=True, check=False)
        if self.pid is not None and not status.wait_for_exit(self.pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            status.wait_for_exit(self.pid, 10)
        assert not is_mounted(path), f"could not unmount {path}"


@contextlib.contextmanager
def mounted(source: str, mountpoint: Path, env: dict[str, str], workdir: Path,
            *options: str) -> Iterator[Mount]:
    """A started mount, cleaned up at the end whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    mount = Mount(source, mountpoint, env, workdir, list(options))
    try:
        yield mount.start()
    finally:
        mount.cleanup()


def bucket_keys(client: Any, bucket: str, prefix: str = "") -> set[str]:
    """Every key under ``prefix``, straight from the storage."""
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(entry["Key"] for entry in page.get("Contents", []))
    return keys


def bucket_bytes(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
