"""``qarnotfs demo``: a guided tour on an S3 server embedded in the process.

Owns: starting moto's server on 127.0.0.1, the sample files, and the tour itself, a list
of :class:`Step` (see :func:`demo_steps`) that each print the command they run, like a
tutorial, and run it through the real CLI. More steps (mounting the bucket) are appended
to that list. moto is an optional dependency: ``pip install 'qarnotfs[demo]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import QarnotException

BUCKET = "demo"
ACCESS_KEY = "demo"
SECRET_KEY = "demo-secret"  # the embedded server accepts any key; this one is not a secret
MIB = 1024 * 1024
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class DemoServer:
    """Where the demo's S3 server listens, and the keys it accepts."""

    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY


@dataclass
class DemoContext:
    """The running demo: its server and its working folder (the cwd)."""

    server: DemoServer
    workdir: Path

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def env(self) -> dict[str, str]:
        """The variables that point qarnotfs (or any S3 tool) at the demo's server."""
        return {
            "QARNOT_STORAGE_URL": self.server.endpoint,
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            # An empty configuration file, so the user's own cannot interfere.
            "QARNOTFS_CONFIG": str(self.workdir / ".qarnotfs-demo.conf"),
        }


@dataclass(frozen=True)
class Step:
    """One part of the tour: a sentence, then what it does (which prints as it goes)."""

    title: str
    run: Callable[[DemoContext], None]


class DemoFailed(QarnotException):
    """A command of the tour failed (its error was printed just before)."""


def qarnotfs(*argv: str) -> Callable[[DemoContext], None]:
    """A step action that prints ``$ qarnotfs ARGS`` and runs it through the CLI."""

    def action(_ctx: DemoContext) -> None:
        from .cli import main

        print(f"$ qarnotfs {shlex.join(argv)}", flush=True)
        if main(list(argv)) != 0:
            raise DemoFailed(f"'qarnotfs {shlex.join(argv)}' failed")

    return action


def cat(name: str) -> Callable[[DemoContext], None]:
    """A step action that prints ``$ cat NAME`` and the file."""

    def action(ctx: DemoContext) -> None:
        print(f"$ cat {shlex.quote(name)}", flush=True)
        print((ctx.workdir / name).read_text(), end="", flush=True)

    return action


def append(name: str, line: str) -> Callable[[DemoContext], None]:
    """A step action that prints ``$ echo LINE >> NAME`` and does it."""

    def action(ctx: DemoContext) -> None:
        print(f"$ echo {shlex.quote(line)} >> {shlex.quote(name)}", flush=True)
        with open(ctx.workdir / name, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    return action


def sequence(*actions: Callable[[DemoContext], None]) -> Callable[[DemoContext], None]:
    def action(ctx: DemoContext) -> None:
        for each in actions:
            each(ctx)

    return action


def demo_steps() -> list[Step]:
    """The tour, in order. Append steps here (e.g. mounting the bucket)."""
    return [
        Step("Create a bucket and upload files (the 9 MiB one goes up in 8 MiB parts).",
             sequence(qarnotfs("mb", BUCKET),
                      qarnotfs("put", "README.txt", "measurements.csv", "big-input.bin",
                               BUCKET),
                      qarnotfs("put", "-r", "results", BUCKET))),
        Step("List buckets, one folder level, then everything with sizes and dates.",
             sequence(qarnotfs("buckets"), qarnotfs("ls", BUCKET),
                      qarnotfs("ls", "-l", "-r", BUCKET))),
        Step("Download one object.",
             sequence(qarnotfs("get", f"{BUCKET}/README.txt", "README-copy.txt"),
                      cat("README-copy.txt"))),
        Step("Sync a folder of the bucket to a local folder.",
             qarnotfs("sync", f"qarnot://{BUCKET}/results", "results-copy")),
        Step("Change a local file; --dry-run shows the plan, then sync uploads only it.",
             sequence(append("results/summary.txt", "run 3: 0.93"),
                      qarnotfs("sync", "--dry-run", "results", f"qarnot://{BUCKET}/results"),
                      qarnotfs("sync", "results", f"qarnot://{BUCKET}/results"))),
        Step("Delete a folder of the bucket and look again.",
             sequence(qarnotfs("rm", "-r", f"{BUCKET}/results/run-2"),
                      qarnotfs("ls", "-r", BUCKET))),
        Step("Mount the bucket and use it with ordinary tools.", mount_tour),
    ]


def run(*argv: str) -> None:
    """Print ``$ ARGV`` and run it as a real process in the demo folder (the cwd)."""
    print(f"$ {shlex.join(argv)}", flush=True)
    command = list(argv)
    if command[0] == "qarnotfs":  # this very installation, whatever PATH says
        command[:1] = [sys.executable, "-m", "qarnotfs"]
    result = subprocess.run(command, check=False, timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise DemoFailed(f"'{shlex.join(argv)}' failed with exit status {result.returncode}")


def why_no_mount() -> str | None:
    """Why this machine cannot mount with FUSE, or None if it can."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is missing or not usable"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (package fuse3)"
    try:
        import qarnotfs.fs.mount  # noqa: F401
    except ImportError as error:
        return f"the mount module cannot be loaded ({error})"
    return None


def mount_tour(ctx: DemoContext) -> None:
    """Mount the bucket on ./mnt, use ls/cat/mkdir/cp on it, see the new object, unmount."""
    reason = why_no_mount()
    if reason is not None:
        print(f"(skipped: {reason})", flush=True)
        return
    (ctx.workdir / "mnt").mkdir()
    run("qarnotfs", "mount", BUCKET, "mnt")
    try:
        run("ls", "-l", "mnt")
        run("cat", "mnt/README.txt")
        run("mkdir", "-p", "mnt/new-folder")
        run("cp", "measurements.csv", "mnt/new-folder/copy.csv")
        wait_for_object("new-folder/copy.csv")
        qarnotfs("ls", "-l", "-r", f"{BUCKET}/new-folder")(ctx)
    finally:
        try:
            run("qarnotfs", "unmount", "mnt")
        except DemoFailed:
            # Never leave a mount behind in a folder that is about to be deleted.
            subprocess.run(["fusermount3", "-uz", str(ctx.workdir / "mnt")], check=False)
            raise


def wait_for_object(key: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """Poll the bucket until ``key`` exists (the mount uploads a file after its close)."""
    from .connection import Connection

    deadline = time.monotonic() + timeout
    with Connection() as connection:
        bucket = connection.retrieve_bucket(BUCKET)
        while bucket.stat(key) is None:
            if time.monotonic() > deadline:
                raise DemoFailed(f"{key} did not reach the bucket within {timeout:.0f} s")
            time.sleep(0.1)


def write_samples(folder: Path) -> None:
    """The files the tour uploads: text, CSV, a folder tree, one file over 8 MiB."""
    (folder / "README.txt").write_text(
        "Hello from qarnotfs!\nThis bucket lives in an S3 server embedded in the demo.\n")
    rows = ["run,duration_s,score"] + [f"{i},{10 + i * 3},{0.5 + i / 20:.2f}"
                                       for i in range(1, 6)]
    (folder / "measurements.csv").write_text("\n".join(rows) + "\n")
    for run in (1, 2):
        (folder / "results" / f"run-{run}").mkdir(parents=True)
        (folder / "results" / f"run-{run}" / "output.txt").write_text(f"run {run}: done\n")
    (folder / "results" / "summary.txt").write_text("run 1: 0.91\nrun 2: 0.87\n")
    block = bytes(range(256)) * 4096  # 1 MiB, varied so parts differ
    with open(folder / "big-input.bin", "wb") as handle:
        for index in range(9):
            handle.write(block[index:] + block[:index])


RGW_SCRIPT = Path(__file__).parent / "resources" / "ceph-rgw.sh"


def rgw_state_dir() -> Path:
    """Where the persistent demo gateway keeps its cluster and data."""
    from platformdirs import user_data_path

    return user_data_path("qarnotfs") / "rgw"


@contextlib.contextmanager
def local_rgw() -> Iterator[DemoServer]:
    """Start a one-node Ceph RADOS Gateway on 127.0.0.1 with bluestore on disk.

    The data lives in :func:`rgw_state_dir` and survives: the next ``demo --backend rgw``
    finds the same buckets. The daemons are stopped at the end (their data stays).
    """
    env = {**os.environ, "RGW_STORE": "bluestore", "RGW_KEEP": "1",
           "QARNOTFS_RGW_DIR": str(rgw_state_dir()), "QARNOTFS_PYTHON": sys.executable}
    print(f"# Starting Ceph RGW (bluestore in {rgw_state_dir()}); the first run installs "
          "Debian's Ceph packages.", flush=True)
    started = subprocess.run(["bash", str(RGW_SCRIPT), "start"], env=env, check=False,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if started.returncode != 0:
        last = (started.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise QarnotException(f"could not start Ceph RGW: {last}")
    try:
        exported = subprocess.run(["bash", str(RGW_SCRIPT), "env"], env=env, check=True,
                                  capture_output=True, text=True).stdout
        values = dict(item.split("=", 1) for line in exported.splitlines()
                      for item in shlex.split(line.removeprefix("export ")))
        yield DemoServer(values["QARNOT_STORAGE_URL"], values["AWS_ACCESS_KEY_ID"],
                         values["AWS_SECRET_ACCESS_KEY"])
    finally:
        subprocess.run(["bash", str(RGW_SCRIPT), "stop"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def demo_server(args: argparse.Namespace) -> contextlib.AbstractContextManager[DemoServer]:
    """The server the demo runs on, as ``--backend`` asks."""
    if getattr(args, "backend", "moto") == "rgw":
        return local_rgw()
    return embedded_server(args.port)


@contextlib.contextmanager
def embedded_server(port: int) -> Iterator[DemoServer]:
    """Run moto's S3 server on 127.0.0.1 (``port`` 0: a free one); yields its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise QarnotException(
            "the demo needs moto, an optional dependency: pip install 'qarnotfs[demo]'"
        ) from None
    if port:
        # moto's start() waits forever if its thread cannot bind: find out first.
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                raise QarnotException(
                    f"cannot start the demo server on 127.0.0.1:{port}: {error.strerror}"
                ) from None
    server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        yield DemoServer(f"http://{host}:{bound}")
    finally:
        server.stop()


@contextlib.contextmanager
def demo_environment(ctx: DemoContext) -> Iterator[None]:
    """Point the process at the embedded server, in the demo folder; restore afterwards."""
    saved = {name: os.environ.get(name) for name in ctx.env}
    previous_cwd = os.getcwd()
    os.environ.update(ctx.env)
    os.chdir(ctx.workdir)
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(args: argparse.Namespace) -> int:
    """Start the server, play :func:`demo_steps`, and with ``--keep`` stay up until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="qarnotfs-demo-") as workdir, \
            demo_server(args) as server:
        ctx = DemoContext(server=server, workdir=Path(workdir))
        endpoint = server.endpoint
        (ctx.workdir / ".qarnotfs-demo.conf").write_text("")
        write_samples(ctx.workdir)
        where = "in this process" if args.backend == "moto" else "(Ceph RGW)"
        print(f"# An S3 server is running {where} at {endpoint};")
        print(f"# the demo works in {workdir} (deleted at the end).\n", flush=True)
        with demo_environment(ctx):
            for number, step in enumerate(demo_steps(), start=1):
                print(f"\n## {number}. {step.title}", flush=True)
                step.run(ctx)
        print("\nThat's the tour. Run 'qarnotfs --help' for every command.", flush=True)
        if args.keep:
            wait_for_interrupt(ctx)
    return 0


def wait_for_interrupt(ctx: DemoContext) -> None:
    """Print how to reach the server from another shell, then serve until Ctrl-C."""
    print("\nThe server stays up. In another shell:\n")
    for name, value in ctx.env.items():
        if name != "QARNOTFS_CONFIG":
            print(f"export {name}={shlex.quote(value)}")
    print(f"qarnotfs ls -l -r {BUCKET}\n")
    if ctx.server.secret_key == SECRET_KEY:
        print("(the embedded server accepts any access key and secret key)")
    print("Press Ctrl-C to stop.", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    print("\nStopped.", flush=True)
