"""Mounting and unmounting: options, checks before mounting, the serving process.

Owns: the mount options (command-line flags and their ``-o key=value`` spellings), their
validation, the checks made before anything is mounted (mount point, configuration,
endpoint, credentials, bucket), starting the serving process (in the foreground, or
daemonized with a readiness report through a pipe), its logging, and the ``mount``,
``unmount`` and ``status`` sub-commands (:func:`add_mount_commands`).

Logs go to ``--log-file`` when given; else to stderr in the foreground, and to
``<user log dir>/mount-<hash of the mount point>.log`` (``~/.local/state/qarnotfs/log/``
on Linux) in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import logging
import logging.handlers
import os
import pwd
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from platformdirs import user_log_path

from .. import logs
from ..exceptions import QarnotException, UnauthorizedException
from ..paths import as_prefix
from . import status

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""How long the parent waits for the serving process to report the mount ready."""
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
"""A mount's log is rotated at 10 MiB, keeping three old files."""
CHECK_CONNECT_TIMEOUT = 5.0
CHECK_READ_TIMEOUT = 15.0

# Mount flags libfuse hands to mount(2) itself (libfuse's mount_flags table).
KERNEL_FLAGS = frozenset({
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime",
    "dirsync",
})
# Options mount(8) and fstab use that mean nothing to a FUSE filesystem.
IGNORED_OPTIONS = frozenset({
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail",
    "_netdev", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "diratime", "nodiratime", "iversion", "noiversion", "loud", "silent",
    "default_permissions", "subtype", "fsname",
})
SECRET_OPTIONS = frozenset({"access_key", "secret_key", "token", "client_token", "password"})


class MountError(Exception):
    """A mount or unmount that cannot go ahead; the message is the one line shown."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(MountError):
    """Bad option or argument (exit status 2, as argparse uses)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


# -- option values ---------------------------------------------------------------------

def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise ValueError(text)
    return value


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _size(text: str) -> int:
    """Bytes, with an optional binary suffix: 500G, 2T, 1P."""
    number, suffix = text.rstrip("KMGTPkmgtp"), text[len(text.rstrip("KMGTPkmgtp")):]
    if len(suffix) > 1:
        raise ValueError(text)
    value = int(number, 10) * _SIZE_SUFFIXES[suffix.upper()]
    if value <= 0:
        raise ValueError(text)
    return value


def _umask(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(text)
    return value


def _user(text: str) -> int:
    if text.isdigit():
        return int(text)
    return pwd.getpwnam(text).pw_uid


def _group(text: str) -> int:
    if text.isdigit():
        return int(text)
    return grp.getgrnam(text).gr_gid


def _path(text: str) -> str:
    if not text:
        raise ValueError(text)
    return os.path.abspath(os.path.expanduser(text))


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _symlink_scan(text: str) -> str:
    from .attrs import SYMLINK_SCANS

    if text not in SYMLINK_SCANS:
        raise ValueError(text)
    return text


@dataclass(frozen=True)
class _Option:
    name: str
    convert: Callable[[str], Any]
    expected: str
    takes_value: bool = True


_OPTIONS: dict[str, _Option] = {o.name: o for o in (
    _Option("read_only", _flag, "no value", takes_value=False),
    _Option("allow_other", _flag, "no value", takes_value=False),
    _Option("nonempty", _flag, "no value", takes_value=False),
    _Option("debug", _flag, "no value", takes_value=False),
    _Option("uid", _user, "a user id or name"),
    _Option("gid", _group, "a group id or name"),
    _Option("umask", _umask, "an octal mask such as 022"),
    _Option("staging_dir", _path, "a folder"),
    _Option("cache_ttl", _seconds, "a number of seconds >= 0"),
    _Option("negative_ttl", _seconds, "a number of seconds >= 0"),
    _Option("cache_size", _count, "a whole number >= 0"),
    _Option("delete_delay", _seconds, "a number of seconds >= 0"),
    _Option("statfs_size", _size, "a size in bytes such as 500G or 1P"),
    _Option("statfs_inodes", _count, "a whole number >= 0"),
    _Option("symlink_scan", _symlink_scan, "marked or small"),
    _Option("attr_timeout", _seconds, "a number of seconds >= 0"),
    _Option("entry_timeout", _seconds, "a number of seconds >= 0"),
    _Option("log_file", _path, "a file"),
    _Option("connect_timeout", _seconds, "a number of seconds >= 0"),
    _Option("read_timeout", _seconds, "a number of seconds >= 0"),
    _Option("retries", _count, "a whole number >= 0"),
    _Option("config", _path, "a configuration file"),
)}
_ALIASES = {"ro": "read_only", "staging": "staging_dir", "conf": "config"}


def convert_option(name: str, text: str) -> Any:
    """The value of one option, or UsageError saying what was expected."""
    option = _OPTIONS[name]
    try:
        return option.convert(text)
    except (ValueError, KeyError) as error:
        raise UsageError(
            f"invalid value for {name}: {text!r} (expected {option.expected})") from error


def parse_o_options(specs: list[str], sloppy: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Parse ``-o`` strings into (qarnotfs option values, kernel mount flags).

    Unknown options are an error unless ``sloppy`` (mount -s), when they are ignored.
    """
    values: dict[str, Any] = {}
    kernel_flags: list[str] = []
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, has_value, text = item.partition("=")
            name = _ALIASES.get(key, key).replace("-", "_")
            if name == "rw" and not has_value:
                values["read_only"] = False
            elif name in _OPTIONS:
                option = _OPTIONS[name]
                if not option.takes_value:
                    values[name] = convert_option(name, text) if has_value else True
                elif not has_value or not text:
                    raise UsageError(f"option {key} needs a value ({key}=...)")
                else:
                    values[name] = convert_option(name, text)
            elif name in KERNEL_FLAGS and not has_value:
                kernel_flags.append(name)
            elif name in IGNORED_OPTIONS or name.startswith(("x-", "comment")):
                continue
            elif name in SECRET_OPTIONS:
                raise UsageError(
                    f"{key} cannot be a mount option (options are visible to every user): "
                    "put credentials in a configuration file and use -o config=FILE")
            elif not sloppy:
                raise UsageError(f"unknown mount option: {key}")
    return values, kernel_flags


# -- the request -----------------------------------------------------------------------

@dataclass
class MountRequest:
    """Everything that defines one mount, validated."""

    bucket: str
    prefix: str
    mountpoint: str
    foreground: bool = False
    read_only: bool = False
    allow_other: bool = False
    nonempty: bool = False
    debug: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    staging_dir: str | None = None
    cache_ttl: float | None = None
    negative_ttl: float | None = None
    cache_size: int | None = None
    symlink_scan: str | None = None
    delete_delay: float | None = None
    statfs_size: int | None = None
    statfs_inodes: int | None = None
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    log_file: str | None = None
    config: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    retries: int | None = None
    kernel_flags: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")


def split_source(source: str) -> tuple[str, str]:
    """``BUCKET[/PREFIX]`` as (bucket, prefix ending in '/', or '')."""
    bucket, _, prefix = source.strip().partition("/")
    if not bucket:
        raise UsageError(f"invalid source {source!r}: expected BUCKET or BUCKET/PREFIX")
    return bucket, as_prefix(prefix)


def build_request(source: str, mountpoint: str, values: dict[str, Any],
                  kernel_flags: list[str]) -> MountRequest:
    """A request from the source, mount point and option values (names as fields)."""
    bucket, prefix = split_source(source)
    known = {f.name for f in fields(MountRequest)}
    request = MountRequest(bucket=bucket, prefix=prefix, mountpoint=os.path.abspath(mountpoint),
                           **{k: v for k, v in values.items() if k in known})
    request.kernel_flags = list(dict.fromkeys(kernel_flags))
    return request


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
    if not request.nonempty:
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
    if not request.allow_other or os.geteuid() == 0:
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
    """Reach the storage with the configured credentials and make sure the bucket exists.

    Fails fast (short timeouts, no retries) with one clear line.
    """
    from ..connection import Connection

    try:
        connection = Connection(fileconf=request.config, retry_count=0,
                                connect_timeout=CHECK_CONNECT_TIMEOUT,
                                read_timeout=CHECK_READ_TIMEOUT)
    except QarnotException as error:
        raise MountError(str(error)) from error
    try:
        exists = connection.bucket_exists(request.bucket)
    except UnauthorizedException as error:
        raise MountError(f"access to bucket {request.bucket!r} denied: check the credentials "
                         f"({error})") from error
    except QarnotException as error:
        raise MountError(f"cannot reach the storage at {connection.storage_url}: "
                         f"{error}") from error
    finally:
        connection.close()
    if not exists:
        raise MountError(f"bucket {request.bucket!r} does not exist")


# -- serving ---------------------------------------------------------------------------

def default_log_file(mountpoint: str) -> str:
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:12]
    return str(user_log_path("qarnotfs") / f"mount-{digest}.log")


def setup_logging(debug: bool, log_file: str | None) -> None:
    """Send this process's logs to ``log_file`` (0600) or stderr; keep secrets out."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if log_file:
        # Rotated log files are created with the umask: keep them private too.
        os.umask(0o077)
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logs.add_secrets(os.environ.get(name) for name in logs.SECRET_VARIABLES)
    handler.addFilter(logs.RedactingFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Their debug output carries request headers (the access key, signatures).
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # mfusepy's own logger repeats each error the adapter already logs, with a traceback.
    logging.getLogger("fuse").setLevel(logging.INFO)


def _fs_options(request: MountRequest) -> Any:
    from .core import FsOptions

    values: dict[str, Any] = {
        "prefix": request.prefix,
        "read_only": request.read_only,
        "uid": os.getuid() if request.uid is None else request.uid,
        "gid": os.getgid() if request.gid is None else request.gid,
    }
    for name in ("umask", "cache_ttl", "negative_ttl", "cache_size", "symlink_scan",
                 "delete_delay"):
        if getattr(request, name) is not None:
            values[name] = getattr(request, name)
    if request.staging_dir is not None:
        values["staging_dir"] = Path(request.staging_dir)
    if request.statfs_size is not None:
        values["statfs_total_bytes"] = request.statfs_size
    if request.statfs_inodes is not None:
        values["statfs_total_inodes"] = request.statfs_inodes
    return FsOptions(**values)


def serve(request: MountRequest, on_ready: Callable[[], None] | None = None) -> None:
    """Build the filesystem and serve it until unmounted (in this process)."""
    from ..bucket import Bucket
    from ..connection import Connection
    from .core import Filesystem
    from .fuse_ops import KernelSettings
    from .fuse_ops import serve as serve_fuse

    try:
        connection = Connection(fileconf=request.config, retry_count=request.retries,
                                connect_timeout=request.connect_timeout,
                                read_timeout=request.read_timeout)
        filesystem = Filesystem(Bucket(connection, request.bucket, create=False),
                                _fs_options(request))
    except QarnotException as error:
        raise MountError(str(error)) from error
    except OSError as error:
        raise MountError(f"cannot prepare the filesystem: {error}") from error
    settings = KernelSettings(
        fsname=request.source, read_only=request.read_only, allow_other=request.allow_other,
        attr_timeout=request.attr_timeout, entry_timeout=request.entry_timeout,
        flags=tuple(request.kernel_flags))
    record = status.MountRecord(pid=os.getpid(), source=request.source,
                                mountpoint=request.mountpoint, log_file=request.log_file,
                                started=time.time(), staging=str(filesystem.staging_root))

    mounted = False

    def ready() -> None:
        nonlocal mounted
        mounted = True
        status.write_record(record)
        log.info("mounted %s on %s", request.source, request.mountpoint)
        if on_ready is not None:
            on_ready()

    try:
        serve_fuse(filesystem, request.mountpoint, settings, ready)
    except RuntimeError as error:
        if not mounted:
            where = f"; see {request.log_file}" if request.log_file else ""
            raise MountError(f"FUSE could not mount {request.mountpoint} (libfuse status "
                             f"{error}{where})") from error
        # libfuse reports a loop ended by SIGINT/SIGTERM/SIGHUP as a failure (status 8).
        log.info("stopped by a signal")
    finally:
        status.remove_record(request.mountpoint, os.getpid())
        connection.close()
    log.info("unmounted %s from %s", request.source, request.mountpoint)


def _run_foreground(request: MountRequest) -> int:
    setup_logging(request.debug, request.log_file)
    serve(request)
    return 0


def _run_background(request: MountRequest) -> int:
    """Fork the serving process; return once it reports the mount ready (or fails)."""
    if request.log_file is None:
        request.log_file = default_log_file(request.mountpoint)
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
                         f"{READY_TIMEOUT:.0f} s; see {request.log_file}")
    if report == "ready":
        return 0
    raise MountError(report or f"the mount process ended before the mount was ready; see "
                               f"{request.log_file}")


def _read_report(pipe: Any, timeout: float) -> str | None:
    """The serving process's one-line report; '' on EOF without one; None on timeout."""
    readable, _, _ = select.select([pipe], [], [], timeout)
    if not readable:
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
        setup_logging(request.debug, request.log_file)
        _redirect_std_streams(request.log_file)
        serve(request, on_ready=lambda: report("ready"))
        return 0
    except MountError as error:
        log.error("%s", error)
        report(str(error))
        return error.exit_code
    except QarnotException as error:
        log.error("%s", error)
        report(str(error))
        return 1
    except BaseException as error:
        log.exception("the mount process failed")
        report(f"the mount process failed: {error!r}; see {request.log_file}")
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
    """Unmount a qarnotfs mount and wait until its process has uploaded pending data."""
    path = os.path.abspath(mountpoint)
    if not status.is_qarnotfs_mount(path):
        raise MountError(f"{path} is not a qarnotfs mount")
    record = status.read_record(path)
    command = ["fusermount3", "-uz" if lazy else "-u", path]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise MountError("fusermount3 is not installed (package fuse3)") from error
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        reason = reason.removeprefix("fusermount3: ")
        raise MountError(f"cannot unmount {path}: {reason or 'fusermount3 failed'}")
    if record is not None and record.staging:
        waiting = status.pending_summary(record.staging)
        if waiting:
            message = f"waiting for {waiting}"
            log.info("%s", message)
            print(f"qarnotfs: {message}", file=sys.stderr)
    if record is not None and not status.wait_for_exit(record.pid, timeout):
        raise MountError(f"{path} is unmounted, but its process {record.pid} is still "
                         f"uploading after {timeout:g} s; see {record.log_file}")
    return 0


# -- sub-commands ----------------------------------------------------------------------

_MOUNT_FLAGS: tuple[tuple[str, str, str], ...] = (
    # (flag, option name, help)
    ("--read-only", "read_only", "mount read-only (also -o ro)"),
    ("--allow-other", "allow_other", "let other users use the mount (needs user_allow_other "
                                     "in /etc/fuse.conf unless root)"),
    ("--nonempty", "nonempty", "allow mounting over a non-empty folder"),
)
_MOUNT_VALUES: tuple[tuple[str, str, str], ...] = (
    ("--uid", "uid", "owner of files without stored owner (default: you)"),
    ("--gid", "gid", "group of files without stored group (default: yours)"),
    ("--umask", "umask", "octal umask for files without stored mode (default 022)"),
    ("--staging-dir", "staging_dir", "private folder for files being written"),
    ("--cache-ttl", "cache_ttl", "seconds metadata stays cached (default 60)"),
    ("--negative-ttl", "negative_ttl", "seconds a missing name stays cached (default 5)"),
    ("--cache-size", "cache_size", "entries in the metadata cache"),
    ("--symlink-scan", "symlink_scan", "which listed objects are checked for being symbolic "
                                       "links: marked (default: those qarnotfs wrote) or small "
                                       "(every object of 1-4095 bytes: s3fs's links too; one "
                                       "HEAD each)"),
    ("--delete-delay", "delete_delay", "seconds an unlink waits for others to join one "
                                       "batched delete (default 0.05; 0: each unlink deletes "
                                       "before it returns)"),
    ("--statfs-size", "statfs_size", "size df shows for the mount, e.g. 500G (default 1P; "
                                     "all of it free)"),
    ("--statfs-inodes", "statfs_inodes", "number of files df -i shows (default 2^32)"),
    ("--attr-timeout", "attr_timeout", "seconds the kernel caches attributes (default 1)"),
    ("--entry-timeout", "entry_timeout", "seconds the kernel caches names (default 1)"),
    ("--log-file", "log_file", "write logs to this file"),
    ("--connect-timeout", "connect_timeout", "seconds to connect to the storage (default 10, "
                                             "or $QARNOTFS_CONNECT_TIMEOUT)"),
    ("--read-timeout", "read_timeout", "seconds to wait for each answer of the storage "
                                       "(default 60, or $QARNOTFS_READ_TIMEOUT)"),
    ("--retries", "retries", "retries of a failed request (default 5, or "
                             "$QARNOTFS_RETRY_COUNT); failed uploads are also retried in the "
                             "background until they succeed"),
)


def add_mount_commands(subparsers: Any) -> None:
    """Register ``mount``, ``unmount`` and ``status`` on the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "mount", help="mount a bucket (or a folder of it) on a local folder",
        description="Mount BUCKET[/PREFIX] on MOUNTPOINT. Returns once the mount is ready "
                    "and keeps serving in the background (logs: --log-file, else "
                    "~/.local/state/qarnotfs/log/). Every option can also be given as "
                    "-o name=value (e.g. -o ro,allow_other,uid=1000,cache_ttl=5), as can "
                    "config=FILE and the mount flags nodev, nosuid, noexec, sync, noatime. "
                    "Credentials come from the environment or the configuration file, "
                    "never from options. The same works as 'mount -t fuse.qarnotfs "
                    "BUCKET[/PREFIX] MOUNTPOINT -o OPTIONS' and in /etc/fstab. Stop with "
                    "'qarnotfs unmount', fusermount3 -u, umount, or SIGTERM: each waits "
                    "for pending uploads.")
    parser.add_argument("source", metavar="BUCKET[/PREFIX]")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay attached and log to stderr")
    parser.add_argument("-o", dest="o_options", action="append", default=[],
                        metavar="OPTIONS", help="comma-separated mount options")
    parser.add_argument("--debug", dest="mount_debug", action="store_true",
                        default=argparse.SUPPRESS, help="log every FUSE call")
    for flag, name, text in _MOUNT_FLAGS:
        parser.add_argument(flag, dest=f"opt_{name}", action="store_true",
                            default=argparse.SUPPRESS, help=text)
    for flag, name, text in _MOUNT_VALUES:
        parser.add_argument(flag, dest=f"opt_{name}", default=argparse.SUPPRESS,
                            metavar=name.split("_")[-1].upper(), help=text)
    parser.set_defaults(func=_mount_command)

    parser = subparsers.add_parser(
        "unmount", aliases=["umount"], help="unmount and wait for pending uploads",
        description="Unmount MOUNTPOINT and wait until its pending uploads are done.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-z", "--lazy", action="store_true",
                        help="detach even if busy (the mount goes once no longer used)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop waiting for pending uploads after this long")
    parser.set_defaults(func=_unmount_command)

    parser = subparsers.add_parser(
        "status", help="list the qarnotfs mounts of this user and their pending uploads",
        description="List the live qarnotfs mounts (or only MOUNTPOINT's) and, for each, "
                    "the files not in the bucket yet: bytes, upload state, retries and the "
                    "last error.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", default=None)
    parser.set_defaults(func=_status_command)


def _fail(error: MountError, debug: bool) -> int:
    if debug:
        log.debug("details", exc_info=True)
    print(f"qarnotfs: error: {error}", file=sys.stderr)
    return error.exit_code


def _mount_command(args: argparse.Namespace) -> int:
    debug = bool(getattr(args, "debug", False) or getattr(args, "mount_debug", False))
    try:
        values, kernel_flags = parse_o_options(args.o_options)
        for _flag_name, name, _text in _MOUNT_FLAGS:
            if getattr(args, f"opt_{name}", False):
                values[name] = True
        for _flag_name, name, _text in _MOUNT_VALUES:
            text = getattr(args, f"opt_{name}", None)
            if text is not None:
                values[name] = convert_option(name, text)
        values["debug"] = debug or values.get("debug", False)
        values["foreground"] = args.foreground
        if getattr(args, "config", None) and "config" not in values:
            values["config"] = os.path.abspath(args.config)
        request = build_request(args.source, args.mountpoint, values, kernel_flags)
        return mount(request)
    except MountError as error:
        return _fail(error, debug)


def _unmount_command(args: argparse.Namespace) -> int:
    try:
        return unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    except MountError as error:
        return _fail(error, bool(getattr(args, "debug", False)))


def _status_command(args: argparse.Namespace) -> int:
    records = [r for r in status.all_records() if status.is_qarnotfs_mount(r.mountpoint)]
    if args.mountpoint is not None:
        wanted = os.path.abspath(args.mountpoint)
        records = [r for r in records if r.mountpoint == wanted]
        if not records:
            print(f"qarnotfs: error: {wanted} is not a live qarnotfs mount", file=sys.stderr)
            return 1
    for record in records:
        print(f"{record.mountpoint}\t{record.source}\tpid {record.pid}\t"
              f"log {record.log_file or '-'}")
        for line in status.pending_lines(record.staging):
            print(f"  {line}")
    return 0
