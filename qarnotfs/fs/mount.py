"""Mounting and unmounting: checks before mounting, the serving process, the sub-commands.

Owns: the mount request (source, mount point, :class:`~.mountoptions.MountOptions`), the
checks made before anything is mounted (mount point, configuration, endpoint,
credentials, bucket, and that the prefix is a folder), starting the serving process (in
the foreground, or daemonized with a readiness report through a pipe), telling systemd
it is ready (``$NOTIFY_SOCKET``), unmounting (who keeps a mount busy; waiting for the
uploads while showing them; what was not uploaded), and the ``mount``, ``unmount`` and
``status`` sub-commands (:func:`add_mount_commands`). The options themselves are declared
in :mod:`.mountoptions`.

Logs go to ``--log-file`` when given; else to stderr in the foreground (journald under
systemd), and in the background to ``<user log dir>/mount-<hash of the mount point>.log``
(``~/.local/state/qarnotfs/log/`` on Linux; ``$LOGS_DIRECTORY`` under systemd).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import selectors
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_log_path

from .. import logs
from ..exceptions import QarnotException, UnauthorizedException
from ..outcome import CREDENTIALS_HINT, EXIT_INTERRUPTED, CommandError, UsageError
from ..paths import as_prefix
from ..remotes import SCHEME, parse_remote
from . import status
from .allocator import tune_allocator
from .collector import freeze_startup_objects
from .mountoptions import (
    MountOptions,
    add_option_flags,
    convert_option,
    flag_values,
    fs_options,
    make_options,
    parse_o_options,
)
from .readahead import widen_read_ahead

__all__ = ["MountError", "MountRequest", "UsageError", "build_request", "convert_option",
           "mount", "parse_o_options", "unmount"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""How long the parent waits for the serving process to report the mount ready."""
CHECK_CONNECT_TIMEOUT = 5.0
CHECK_READ_TIMEOUT = 15.0
PROGRESS_EVERY = 10.0
"""While unmount waits, the pending uploads are shown again at least this often."""


class MountError(CommandError):
    """A mount or unmount that cannot go ahead; the message is the one line shown."""


# -- the request -----------------------------------------------------------------------

@dataclass
class MountRequest:
    """Everything that defines one mount, validated."""

    bucket: str
    prefix: str
    mountpoint: str
    foreground: bool = False
    options: MountOptions = field(default_factory=MountOptions)
    kernel_flags: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")


def split_source(source: str) -> tuple[str, str]:
    """``[qarnot://]BUCKET[/PREFIX]`` as (bucket, prefix ending in '/', or '')."""
    remote = parse_remote(source.strip())
    return remote.bucket, as_prefix(remote.path)


def build_request(source: str, mountpoint: str, values: dict[str, Any],
                  kernel_flags: list[str], foreground: bool = False) -> MountRequest:
    """A request from the source, mount point and option values (names as fields)."""
    bucket, prefix = split_source(source)
    return MountRequest(bucket=bucket, prefix=prefix, mountpoint=os.path.abspath(mountpoint),
                        foreground=foreground, options=make_options(values),
                        kernel_flags=list(dict.fromkeys(kernel_flags)))


# -- checks before mounting ------------------------------------------------------------

def check_mountpoint(request: MountRequest) -> None:
    """The mount point must be an existing, empty folder that nothing is mounted on."""
    path = request.mountpoint
    try:
        info = os.stat(path)
    except FileNotFoundError as error:
        raise MountError(f"mount point {path} does not exist") from error
    except OSError as error:
        # ENOTCONN or ECONNABORTED: a FUSE mount whose process died.
        raise MountError(f"mount point {path} is unusable ({error.strerror}); if it is a "
                         f"stale mount, run: qarnotfs unmount {path}") from error
    if not stat.S_ISDIR(info.st_mode):
        raise MountError(f"mount point {path} is not a folder")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    if not request.options.nonempty:
        try:
            with os.scandir(path) as entries:
                not_empty = any(True for _ in entries)
        except OSError as error:
            raise MountError(f"cannot read mount point {path}: {error.strerror}") from error
        if not_empty:
            raise MountError(f"mount point {path} is not empty "
                             "(use -o nonempty to mount over its contents)")


def check_allow_other(request: MountRequest, fuse_conf: str = "/etc/fuse.conf") -> None:
    """fusermount3 refuses allow_other to users unless /etc/fuse.conf permits it."""
    if not request.options.allow_other or os.geteuid() == 0:
        return
    try:
        with open(fuse_conf, encoding="utf-8") as handle:
            allowed = any(line.strip() == "user_allow_other" for line in handle)
    except OSError:
        allowed = False
    if not allowed:
        raise MountError(f"allow_other needs the line 'user_allow_other' in {fuse_conf} "
                         "(or mounting as root)")


def check_storage(request: MountRequest) -> None:
    """Reach the storage with the configured credentials; the bucket must exist and the
    prefix must not be a file. Fails fast (short timeouts, no retries) with one line."""
    from ..connection import Connection

    try:
        connection = Connection(fileconf=request.options.config, retry_count=0,
                                connect_timeout=CHECK_CONNECT_TIMEOUT,
                                read_timeout=CHECK_READ_TIMEOUT)
    except QarnotException as error:
        raise MountError(str(error)) from error
    try:
        if not connection.bucket_exists(request.bucket):
            raise MountError(f"bucket {request.bucket!r} does not exist")
        if request.prefix:
            _check_prefix(connection, request)
    except UnauthorizedException as error:
        raise MountError(f"access to bucket {request.bucket!r} denied: check the credentials: "
                         f"{CREDENTIALS_HINT.removeprefix('check ')} ({error})") from error
    except QarnotException as error:
        raise MountError(f"cannot reach the storage at {connection.storage_url}: "
                         f"{error}") from error
    finally:
        connection.close()


def _check_prefix(connection: Any, request: MountRequest) -> None:
    """Refuse a prefix that is a file; warn that a new prefix starts empty."""
    from ..bucket import Bucket

    bucket = Bucket(connection, request.bucket, create=False)
    if bucket.has_objects_under(request.prefix):
        return
    if bucket.stat(request.prefix.rstrip("/")) is not None:
        raise MountError(f"{request.source} is a file, not a folder: mount the folder that "
                         "holds it, or another prefix")
    log.warning("%s/ holds nothing yet: the mount starts empty, and the prefix is created "
                "by the first file written in it", request.source)


# -- serving ---------------------------------------------------------------------------

def default_log_file(mountpoint: str) -> str:
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:12]
    folder = _service_directory("LOGS_DIRECTORY") or user_log_path("qarnotfs")
    return str(Path(folder) / f"mount-{digest}.log")


def _service_directory(variable: str) -> str | None:
    """The first folder systemd gave the service in ``variable`` (StateDirectory=...)."""
    value = os.environ.get(variable, "").split(":")[0]
    return value or None


def default_staging_dir() -> str | None:
    """$STATE_DIRECTORY/staging under systemd; else None (the core's default)."""
    state = _service_directory("STATE_DIRECTORY")
    return os.path.join(state, "staging") if state else None


def service_read_cache_dir() -> str | None:
    """$CACHE_DIRECTORY/blocks under systemd (CacheDirectory=); else None (the core's
    default, the user's cache folder: root's, for a service, which is not where a
    system's caches go)."""
    cache = _service_directory("CACHE_DIRECTORY")
    return os.path.join(cache, "blocks") if cache else None


def notify_systemd(message: str) -> None:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warning("could not notify systemd at %s: %s", address.lstrip("\0"), error)


def _log_level(request: MountRequest) -> int:
    if request.options.log_level:
        return logs.level_from(name=request.options.log_level)
    return logging.DEBUG if request.options.debug else logging.INFO


def _libfuse_said(log_file: str | None, offset: int) -> str:
    """What libfuse or fusermount3 wrote to the log after ``offset`` (their own lines)."""
    if not log_file:
        return ""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            text = handle.read(65536).decode("utf-8", errors="replace")
    except OSError:
        return ""
    said = [line.strip() for line in text.splitlines()
            if line.startswith(("fuse:", "fusermount3:", "fusermount:"))]
    return "; ".join(dict.fromkeys(said))


def _log_size(log_file: str | None) -> int:
    try:
        return os.path.getsize(log_file) if log_file else 0
    except OSError:
        return 0


def _open_connection(connection: Any, bucket: str) -> None:
    """Send this process's first request now: it opens the pool's first connection and
    builds botocore's request path (4 ms of the first lookup on a loopback gateway, more
    across a network). check_storage reached the bucket a moment ago: a failure here only
    loses the head start (the user's first operation reports its own)."""
    try:
        connection.bucket_exists(bucket)
    except QarnotException as error:
        log.debug("first request to the storage failed: %s", error)


def serve(request: MountRequest, on_ready: Callable[[], None] | None = None) -> None:
    """Build the filesystem and serve it until unmounted (in this process)."""
    from ..bucket import Bucket
    from ..connection import Connection
    from .core import Filesystem
    from .fuse_ops import MAX_TRANSFER, KernelSettings
    from .fuse_ops import serve as serve_fuse

    options = request.options
    try:
        connection = Connection(fileconf=options.config, retry_count=options.retries,
                                connect_timeout=options.connect_timeout,
                                read_timeout=options.read_timeout)
        # botocore builds a client's exception classes at its first error answer, and
        # loads its paginators' model (a scan of its data folders) at the first paginated
        # listing: tens of ms each, more after dropped caches. Now, not in the user's first
        # lookup of a missing name or listing of a folder.
        _ = connection.s3.exceptions
        connection.s3.get_paginator("list_objects_v2")
        filesystem = Filesystem(Bucket(connection, request.bucket, create=False),
                                fs_options(options, request.prefix, default_staging_dir(),
                                           service_read_cache_dir()))
        _open_connection(connection, request.bucket)
    except QarnotException as error:
        raise MountError(str(error)) from error
    except OSError as error:
        raise MountError(f"cannot prepare the filesystem: {error}") from error
    settings = KernelSettings(
        fsname=request.source, read_only=options.read_only, allow_other=options.allow_other,
        attr_timeout=options.attr_timeout, entry_timeout=options.entry_timeout,
        flags=tuple(request.kernel_flags))
    record = status.MountRecord(pid=os.getpid(), source=request.source,
                                mountpoint=request.mountpoint, log_file=options.log_file,
                                started=time.time(), staging=str(filesystem.staging_root))
    mounted = False
    log_offset = _log_size(options.log_file)

    def ready() -> None:
        nonlocal mounted
        mounted = True
        status.write_record(record)
        with contextlib.suppress(OSError):  # only a convenience for ``status``
            status.remember_staging_root(str(filesystem.staging_root.parent))
        widen_read_ahead(request.mountpoint, MAX_TRANSFER)
        log.info("mounted %s on %s", request.source, request.mountpoint)
        notify_systemd(f"READY=1\nMAINPID={os.getpid()}\n"
                       f"STATUS=serving {request.source} on {request.mountpoint}")
        if on_ready is not None:
            on_ready()

    tune_allocator()
    log.debug("%d start-up objects exempt from garbage collections",
              freeze_startup_objects())
    try:
        serve_fuse(filesystem, request.mountpoint, settings, ready)
    except RuntimeError as error:
        if not mounted:
            cause = _libfuse_said(options.log_file, log_offset)
            where = f"; see {options.log_file}" if options.log_file else ""
            raise MountError(f"FUSE could not mount {request.mountpoint}: "
                             f"{cause or f'libfuse status {error}'}{where}") from error
        # libfuse reports a loop ended by SIGINT/SIGTERM/SIGHUP as a failure (status 8).
        log.info("stopped by a signal")
    finally:
        notify_systemd("STOPPING=1")
        status.remove_record(request.mountpoint, os.getpid())
        connection.close()
    log.info("unmounted %s from %s", request.source, request.mountpoint)


def _run_foreground(request: MountRequest) -> int:
    logs.setup(level=_log_level(request), log_file=request.options.log_file, mount=True)
    serve(request)
    return 0


def _run_background(request: MountRequest) -> int:
    """Fork the serving process; return once it reports the mount ready (or fails)."""
    if request.options.log_file is None:
        request.options.log_file = default_log_file(request.mountpoint)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the serving process
        os.close(read_end)
        os._exit(_daemon_main(request, write_end))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = _read_report(pipe, READY_TIMEOUT)
    if report is None:
        raise MountError(f"the mount of {request.mountpoint} did not become ready within "
                         f"{READY_TIMEOUT:.0f} s; see {request.options.log_file}")
    if report == "ready":
        return 0
    raise MountError(report or f"the mount process ended before the mount was ready; see "
                               f"{request.options.log_file}")


def _read_report(pipe: Any, timeout: float) -> str | None:
    """The serving process's one-line report; '' on EOF without one; None on timeout."""
    with selectors.DefaultSelector() as selector:  # not select(): no limit on fd numbers
        selector.register(pipe, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    return pipe.readline().decode("utf-8", errors="replace").strip()


def _daemon_main(request: MountRequest, report_fd: int) -> int:
    """Body of the forked serving process: detach, log to the file, serve, report."""
    reported = False

    def report(message: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(report_fd, message.replace("\n", " ").encode() + b"\n")
                os.close(report_fd)

    try:
        os.setsid()
        os.chdir("/")
        logs.setup(level=_log_level(request), log_file=request.options.log_file, mount=True)
        _redirect_std_streams(request.options.log_file)
        serve(request, on_ready=lambda: report("ready"))
        return 0
    except (CommandError, QarnotException) as error:
        log.error("%s", error)
        report(str(error))
        return getattr(error, "exit_code", 1)
    except BaseException as error:
        log.exception("the mount process failed")
        report(f"the mount process failed: {error!r}; see {request.options.log_file}")
        return 1


def _redirect_std_streams(log_file: str | None) -> None:
    """Detach from the terminal: stdin from /dev/null, stdout and stderr to the log.

    libfuse and crashes write to file descriptor 2, so it must be the log too.
    """
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    target = os.open(log_file or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)


def mount(request: MountRequest, fake: bool = False) -> int:
    """Check everything, then mount (in the background unless ``request.foreground``)."""
    check_mountpoint(request)
    check_allow_other(request)
    check_storage(request)
    if fake:
        return 0
    if request.foreground:
        return _run_foreground(request)
    return _run_background(request)


# -- unmounting ------------------------------------------------------------------------

def unmount(mountpoint: str, lazy: bool = False, timeout: float | None = None) -> int:
    """Unmount a qarnotfs mount and wait until its process has uploaded pending data.

    MountError (exit 1) if files could not be uploaded (they stay staged, and are named),
    if the wait ends (``timeout``; Ctrl-C: exit 130), or if the mount is busy (its users
    are named).
    """
    path = os.path.abspath(mountpoint)
    if not status.is_qarnotfs_mount(path):
        raise MountError(f"{path} is not a qarnotfs mount")
    record = status.read_record(path)
    crashed = record is not None and not status.process_alive(record.pid)
    _detach(path, lazy)
    if record is None:
        return 0
    if not crashed:
        try:
            finished = _wait_for_uploads(record, timeout)
        except KeyboardInterrupt:
            raise MountError(f"{path} is unmounted; stopped waiting for its uploads: "
                             f"{_still_uploading(record)}", EXIT_INTERRUPTED) from None
        if not finished:
            raise MountError(f"{path} is unmounted; stopped waiting for its uploads after "
                             f"{timeout:g} s: {_still_uploading(record)}")
    left = status.pending_summary(record.staging)
    if left:
        what = (f"its mount process {record.pid} had died, and {left} were not uploaded"
                if crashed else f"{left} could not be uploaded")
        raise MountError(f"{path} is unmounted, but {what}; they stay staged in "
                         f"{record.staging}, and {_how_to_upload(record)}")
    return 0


def _detach(path: str, lazy: bool) -> None:
    """fusermount3 -u (-uz when ``lazy``); MountError naming the users of a busy mount."""
    command = ["fusermount3", "-uz" if lazy else "-u", path]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise MountError("fusermount3 is not installed (package fuse3)") from error
    if result.returncode != 0:
        raise MountError(_why_not_unmounted(path, result.stderr))


def _why_not_unmounted(path: str, stderr: str) -> str:
    reason = stderr.strip().splitlines()[-1] if stderr.strip() else "fusermount3 failed"
    reason = reason.removeprefix("fusermount3: ")
    users = status.processes_using(path)
    if not users:
        return f"cannot unmount {path}: {reason}"
    shown = ", ".join(f"{name} (pid {pid})" for pid, name in users[:10])
    return (f"cannot unmount {path}: it is in use by {shown}; stop them, or detach it now "
            f"with: qarnotfs unmount -z {path} (it goes once they let go)")


def _still_uploading(record: status.MountRecord) -> str:
    return (f"process {record.pid} goes on uploading in the background, and what it has "
            f"not uploaded stays staged in {record.staging} (see qarnotfs status)")


def _how_to_upload(record: status.MountRecord) -> str:
    staging_root = Path(record.staging or "").parent
    return (f"the next mount of {record.source} with staging folder {staging_root} uploads "
            f"them (qarnotfs mount {record.source} MOUNTPOINT --staging-dir {staging_root})")


def _wait_for_uploads(record: status.MountRecord, timeout: float | None) -> bool:
    """Wait for the serving process to exit, showing what it still uploads; False on
    timeout."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    shown, shown_at = "", 0.0
    while True:
        now = time.monotonic()
        waiting = status.waiting_line(record.staging)
        if waiting and (waiting != shown or now - shown_at >= PROGRESS_EVERY):
            print(f"qarnotfs: waiting for {waiting} ({now - started:.0f} s so far); Ctrl-C "
                  "stops waiting (the data stays staged)", file=sys.stderr, flush=True)
            shown, shown_at = waiting, now
        if status.wait_for_exit(record.pid, 0.5):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


# -- sub-commands ----------------------------------------------------------------------

MOUNT_DESCRIPTION = f"""\
Mount BUCKET[/PREFIX] (or {SCHEME}BUCKET[/PREFIX]) on MOUNTPOINT. Returns once the mount
is ready and keeps serving in the background (logs: --log-file, else
~/.local/state/qarnotfs/log/). Every option can also be given as -o name=value (e.g. -o
ro,allow_other,uid=1000,cache_ttl=5), as can config=FILE, log_level=LEVEL and the mount
flags nodev, nosuid, noexec, sync, noatime, auto_unmount. Credentials come from the
environment or the configuration file, never from options. The same works as 'mount -t
fuse.qarnotfs BUCKET[/PREFIX] MOUNTPOINT -o OPTIONS' and in /etc/fstab. With -f and
$NOTIFY_SOCKET (systemd Type=notify), READY=1 is sent once the mount is up. Stop with
'qarnotfs unmount', fusermount3 -u, umount, or SIGTERM: each waits for pending uploads."""


def add_mount_commands(subparsers: Any, parents: list[Any], mount_parents: list[Any]) -> None:
    """Register ``mount``, ``unmount`` and ``status`` on the CLI's sub-parsers; ``mount``
    takes ``mount_parents``' global options, for its --debug is its own (every FUSE call,
    in the mount's log; before the command --debug also shows the command's output)."""
    parser = subparsers.add_parser(
        "mount", parents=mount_parents,
        help="mount a bucket (or a folder of it) on a local folder",
        description=MOUNT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", dest="mount_debug", action="store_true",
                        help="log every FUSE call with its duration (also -o debug)")
    parser.add_argument("source", metavar="BUCKET[/PREFIX]")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay attached and log to stderr (journald under systemd)")
    parser.add_argument("-o", dest="o_options", action="append", default=[],
                        metavar="OPTIONS", help="comma-separated mount options")
    add_option_flags(parser)
    parser.set_defaults(func=_mount_command)

    parser = subparsers.add_parser(
        "unmount", aliases=["umount"], parents=parents,
        help="unmount and wait for pending uploads",
        description="Unmount MOUNTPOINT and wait until its pending uploads are done, showing "
                    "them. Exits 1 (naming them) if some could not be uploaded: they stay "
                    "staged for the next mount; see 'qarnotfs status'.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-z", "--lazy", action="store_true",
                        help="detach even if busy (the mount goes once no longer used)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop waiting for pending uploads after this long (they go on "
                             "in the background; the data stays staged)")
    parser.set_defaults(func=_unmount_command)

    parser = subparsers.add_parser(
        "status", parents=parents,
        help="list the qarnotfs mounts and what every staging folder still holds",
        description="List the live qarnotfs mounts (or only MOUNTPOINT's) and, for each, "
                    "the files not in the bucket yet: bytes, upload state, retries and the "
                    "last error; then the staging folders no mount serves that still hold "
                    "files, and how to upload them.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", default=None)
    parser.add_argument("--staging-dir", action="append", default=[], metavar="FOLDER",
                        help="also look at this staging folder (repeatable)")
    parser.add_argument("--json", action="store_true", help="the same as one JSON object")
    parser.set_defaults(func=_status_command)


def _mount_command(args: argparse.Namespace) -> int:
    values, kernel_flags = parse_o_options(args.o_options)
    values.update(flag_values(args))
    values["debug"] = bool(args.debug or args.mount_debug or values.get("debug", False))
    if args.config and "config" not in values:
        values["config"] = os.path.abspath(args.config)
    if args.log_level and "log_level" not in values:
        values["log_level"] = convert_option("log_level", args.log_level)
    request = build_request(args.source, args.mountpoint, values, kernel_flags,
                            foreground=args.foreground)
    return mount(request)


def _unmount_command(args: argparse.Namespace) -> int:
    return unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)


def _status_command(args: argparse.Namespace) -> int:
    records = [r for r in status.all_records() if status.is_qarnotfs_mount(r.mountpoint)]
    if args.mountpoint is not None:
        wanted = os.path.abspath(args.mountpoint)
        records = [r for r in records if r.mountpoint == wanted]
        if not records:
            raise MountError(f"{wanted} is not a live qarnotfs mount")
    leftovers: list[status.Leftover] = []
    if args.mountpoint is None:
        roots = [*args.staging_dir, *status.known_staging_roots(records, default_staging_dir())]
        leftovers = status.leftovers(roots, {r.staging for r in records})
    if args.json:
        print(json.dumps({
            "mounts": [{**asdict(r), "pending": status.pending_records(r.staging)}
                       for r in records],
            "not_mounted": [{"folder": str(x.folder), "source": x.source,
                             "upload_command": x.upload_command,
                             "pending": status.pending_records(str(x.folder))}
                            for x in leftovers]}, indent=2))
        return 0
    for record in records:
        print(f"{record.mountpoint}\t{record.source}\tpid {record.pid}\t"
              f"log {record.log_file or '-'}")
        for line in status.pending_lines(record.staging):
            print(f"  {line}")
    for leftover in leftovers:
        print("\n".join(status.leftover_lines(leftover)))
    return 0
