"""The ``qarnotfs`` command line: bucket commands, the demo, and the mount commands' entry.

Owns: argument parsing (one subparser per command, each with ``set_defaults(func=...)``
returning an exit status; the global options accepted before or after the command), how
each command drives the :class:`~qarnotfs.bucket.Bucket` API and the transfers
(:mod:`qarnotfs.transfers`), and what is printed. Every error ends through
:func:`qarnotfs.outcome.report` (one ``qarnotfs: error: ...`` line and its exit status);
a reader that goes away (``| head``) ends the command quietly.

Remote paths (:mod:`qarnotfs.remotes`) are ``BUCKET[/PREFIX]``; ``qarnot://BUCKET[/PREFIX]``
means the same and is required by ``sync``, whose two sides can each be local or remote.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import __version__, logs
from .bucket import Bucket
from .connection import Connection
from .exceptions import MissingObjectException, QarnotException
from .fs import mounthelper
from .fs.mount import add_mount_commands
from .objects import ObjectInfo
from .outcome import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    describe,
    exit_status,
    report,
)
from .paths import as_prefix, local_path_for_key, walk_files
from .progress import Step
from .remotes import SCHEME, Remote, parse_remote
from .sync import (
    DownloadPlan,
    SyncPlan,
    detail,
    mtime_metadata,
    object_mtime_ns,
    plan_download,
    plan_upload,
    split_by_time,
)
from .transfers import DEFAULT_FILES_AT_ONCE, Interrupted, Job, Transfers

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Remote",
           "UsageError", "build_parser", "describe", "exit_status", "main", "parse_remote"]

log = logging.getLogger(__name__)

EPILOG = f"""\
remote paths:
  BUCKET[/PREFIX], or {SCHEME}BUCKET[/PREFIX] (the form sync requires).
  A prefix names a folder at a '/' boundary: 'demo/pre' never includes 'demo/pre2/'.

credentials (never on the command line):
  QARNOT_CLIENT_TOKEN (Qarnot mode), or QARNOT_STORAGE_URL (or AWS_ENDPOINT_URL) with
  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any S3 endpoint), or AWS_PROFILE / the
  default profile of ~/.aws/credentials (with the profile's endpoint_url), or a
  configuration file (--config, or $QARNOTFS_CONFIG, ~/.config/qarnotfs/qarnotfs.conf,
  ~/.qarnot/qarnot.conf).

global options (--config, --debug, --log-level, -q) may also follow the command.
exit status: 0 success, 1 runtime error, 2 usage error, 130 interrupted.
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and raises instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- commands -----------------------------------------------------------------------------


@dataclass
class Context:
    """What every command needs: the connection and how chatty to be."""

    args: argparse.Namespace
    _connection: Connection | None = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = Connection(fileconf=self.args.config)
            logs.add_secrets([self._connection.settings.secret_key,
                              self._connection.settings.client_token])
        return self._connection

    def bucket(self, name: str) -> Bucket:
        """An existing bucket (MissingBucketException otherwise)."""
        return self.connection.retrieve_bucket(name)

    @property
    def show_bar(self) -> bool:
        return not self.args.quiet and sys.stderr.isatty()

    def say(self, line: str) -> None:
        """An informational line on stdout, unless --quiet."""
        if not self.args.quiet:
            print(line, flush=True)

    def transfers(self, bucket: Bucket) -> Transfers:
        return Transfers(bucket, self.show_bar, self.say, self.args.transfers,
                         self.args.bwlimit)

    def detail(self, bucket: Bucket, infos: list[ObjectInfo]) -> dict[str, ObjectInfo]:
        """The objects with their metadata: a HEAD each, concurrently, shown by a bar."""
        with Step("checking", self.show_bar and bool(infos), total=len(infos)) as step:
            return detail(infos, bucket.stat, bucket.connection.max_concurrency, step)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def command(body: Callable[[Context], int]) -> Callable[[argparse.Namespace], int]:
    """Adapt ``body(ctx)`` to the subparsers' ``func(args) -> int`` convention."""

    def func(args: argparse.Namespace) -> int:
        ctx = Context(args)
        try:
            return body(ctx)
        finally:
            ctx.close()

    func.__name__ = func.__qualname__ = body.__name__
    func.__doc__ = body.__doc__
    return func


@command
def cmd_buckets(ctx: Context) -> int:
    for bucket in ctx.connection.buckets():
        print(bucket.uuid)
    return EXIT_OK


@command
def cmd_ls(ctx: Context) -> int:
    remote = parse_remote(ctx.args.remote)
    bucket = ctx.bucket(remote.bucket)
    lister = _Lister(ctx.args.long, ctx.args.human_readable, ctx.args.json)
    if ctx.args.recursive:
        lister.objects(bucket.iter_objects(as_prefix(remote.path)), "")
    else:
        folder = as_prefix(remote.path)
        listing = bucket.list_folder(folder)
        for prefix in sorted(listing.prefixes):
            lister.folder(prefix, prefix[len(folder):])
        lister.objects(listing.objects, folder)
    if not lister.found and remote.path and not remote.path.endswith("/"):
        info = bucket.stat(remote.path)
        if info is not None:
            lister.objects([info], "")
    if not lister.found and remote.path:
        raise MissingObjectException(f"{remote}: no such object or folder")
    return EXIT_OK


@dataclass
class _Lister:
    """Prints what ``ls`` finds: names, a long form, sizes for people, or JSON lines."""

    long: bool
    human: bool
    as_json: bool
    found: bool = False

    def folder(self, key: str, name: str) -> None:
        self.found = True
        if self.as_json:
            print(json.dumps({"key": key, "type": "folder"}))
        else:
            print(f"{'PRE':>31} {name}" if self.long or self.human else name)

    def objects(self, objects: Iterable[ObjectInfo], strip: str) -> None:
        for info in objects:
            self.found = True
            name = info.key[len(strip):] or info.key
            if self.as_json:
                print(json.dumps({"key": info.key, "type": "object", "size": info.size,
                                  "last_modified": info.last_modified.isoformat(),
                                  "etag": info.etag}))
            elif self.long or self.human:
                size = human_size(info.size) if self.human else str(info.size)
                date = info.last_modified.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{size:>12} {date} {name}")
            else:
                print(name)


def human_size(size: int) -> str:
    """Bytes in binary units, as ``ls -lh`` shows them: 512B, 1.5KiB, 20MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?(?:/s)?", re.IGNORECASE)
_RATE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_rate(text: str) -> int:
    """``--bwlimit``: bytes per second, with binary suffixes as rclone reads them: 10M is
    10 MiB/s, 512K, 1.5M, 2MiB/s; at least 1 byte per second."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    rate = int(float(match[1]) * _RATE_UNITS[match[2].upper()])
    if rate < 1:
        raise ValueError(text)
    return rate


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


@command
def cmd_get(ctx: Context) -> int:
    remote = parse_remote(ctx.args.remote)
    if not ctx.args.recursive and not remote.path:
        raise UsageError("get needs BUCKET/KEY (or -r to download a folder)")
    if ctx.args.recursive and not ctx.args.local:
        raise UsageError("get -r needs a local folder: get -r BUCKET[/PREFIX] DIR")
    bucket = ctx.bucket(remote.bucket)
    if not ctx.args.recursive:
        info = bucket.stat(remote.path)
        if info is None or remote.path.endswith("/"):
            if bucket.has_objects_under(as_prefix(remote.path)):
                raise UsageError(f"{remote} is a folder: use get -r {remote} DIR")
            raise MissingObjectException(f"{remote}: no such file")
        into = _download_target(remote.path, ctx.args.local)
        ctx.transfers(bucket).download(
            [Job(remote.path, into, info.size, f"download: {remote} -> {_shown(into)}",
                 mtime_ns=object_mtime_ns(info))])
        return EXIT_OK
    prefix = as_prefix(remote.path)
    root = Path(ctx.args.local)
    plan = DownloadPlan()
    for info in bucket.iter_objects(prefix):
        relative = info.key[len(prefix):]
        target = local_path_for_key(root, relative)
        if target is None:
            plan.skipped.append(info.key)
        elif relative.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            plan.downloads.append((info, target))
    if not plan.downloads and not plan.skipped and prefix:
        raise MissingObjectException(f"{remote}: no objects under this prefix")
    root.mkdir(parents=True, exist_ok=True)
    _run_download_plan(ctx, bucket, plan)
    return EXIT_OK


def _download_target(key: str, local: str | None) -> Path:
    """Where ``get`` writes one object: into a folder if LOCAL is one or ends with '/'
    (as cp and aws do), else LOCAL itself; without LOCAL, the key's base name here."""
    name = os.path.basename(key)
    if local is None:
        return Path(name)
    if local.endswith("/") or os.path.isdir(local):
        return Path(local) / name
    return Path(local)


@command
def cmd_put(ctx: Context) -> int:
    *sources, destination = ctx.args.paths
    if not sources:
        raise UsageError("put needs LOCAL... BUCKET[/PREFIX]")
    remote = parse_remote(destination)
    for source in sources:
        if os.path.isdir(source) and not ctx.args.recursive:
            raise UsageError(f"{source} is a folder: use put -r")
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", source)
    bucket = ctx.bucket(remote.bucket)
    into_folder = (len(sources) > 1 or not remote.path or remote.path.endswith("/")
                   or any(os.path.isdir(s) for s in sources)
                   or bucket.has_objects_under(as_prefix(remote.path)))
    uploads: dict[str, Path] = {}
    markers: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            base = f"{as_prefix(remote.path)}{path.resolve().name}/"
            uploads.update({f"{base}{rel}": p for rel, p in walk_files(path)})
            markers.extend(f"{base}{rel}" for rel in empty_folders(path))
        else:
            key = f"{as_prefix(remote.path)}{path.name}" if into_folder else remote.path
            uploads[key] = path
    _run_upload_plan(ctx, bucket, SyncPlan(uploads=sorted(uploads.items())))
    for key in markers:  # empty folders: a zero-byte "name/" object, as the mount makes
        bucket.put(key, b"")
        ctx.say(f"upload: (empty folder) -> {bucket.uuid}/{key}")
    return EXIT_OK


def empty_folders(root: Path) -> list[str]:
    """The relative paths ("a/b/") of the folders under ``root`` holding nothing."""
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        if not dirs and not names and Path(folder) != root:
            found.append(f"{Path(folder).relative_to(root).as_posix()}/")
    return sorted(found)


@command
def cmd_sync(ctx: Context) -> int:
    source, destination = ctx.args.source, ctx.args.destination
    remote_source, remote_destination = source.startswith(SCHEME), destination.startswith(SCHEME)
    if remote_source == remote_destination:
        raise UsageError(f"sync needs exactly one remote side written {SCHEME}BUCKET[/PREFIX]")
    if remote_destination:
        _sync_up(ctx, Path(source), parse_remote(destination))
    else:
        _sync_down(ctx, parse_remote(source), Path(destination))
    return EXIT_OK


@dataclass
class _Selection:
    """What a sync looks at: ``--exclude``/``--include`` patterns (fnmatch, on the path
    relative to the synced folder; the last that matches decides, as aws-cli does)."""

    filters: list[tuple[str, str]]

    def selected(self, relative: str) -> bool:
        chosen = True
        for kind, pattern in self.filters:
            if fnmatch.fnmatchcase(relative, pattern):
                chosen = kind == "include"
        return chosen


def _sync_up(ctx: Context, local: Path, remote: Remote) -> None:
    if not local.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(local))
    selection = _Selection(ctx.args.filters)
    bucket = ctx.bucket(remote.bucket)
    prefix = as_prefix(remote.path)
    wanted = {f"{prefix}{rel}": path for rel, path in walk_files(local)
              if selection.selected(rel)}
    existing = _listed(ctx, bucket, prefix, selection)
    pairs = {key: (path.stat(), existing[key]) for key, path in wanted.items()
             if key in existing}
    unchanged, differing = _compared(ctx, bucket, pairs)
    existing.update(differing)
    with _hashing(ctx, [pairs[k][0].st_size if k in pairs else path.stat().st_size
                        for k, path in wanted.items() if k not in unchanged]) as hashing:
        plan = plan_upload(wanted, existing, bucket.stat, unchanged, hashing)
    plan.retimed = [(differing[key], wanted[key]) for key in plan.unchanged
                    if key in differing]
    if not ctx.args.delete:
        plan.deletes = []
    _run_upload_plan(ctx, bucket, plan, ctx.args.dry_run)


def _sync_down(ctx: Context, remote: Remote, local: Path) -> None:
    if local.exists() and not local.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(local))
    selection = _Selection(ctx.args.filters)
    bucket = ctx.bucket(remote.bucket)
    prefix = as_prefix(remote.path)
    existing = _listed(ctx, bucket, prefix, selection)
    targets = {key: local_path_for_key(local, key[len(prefix):]) for key in existing}
    pairs = {key: (target.stat(), existing[key]) for key, target in targets.items()
             if target is not None and not key.endswith("/") and target.is_file()}
    unchanged, differing = _compared(ctx, bucket, pairs)
    existing.update(differing)
    with _hashing(ctx, [local.st_size for key, (local, info) in pairs.items()
                        if key not in unchanged and local.st_size == info.size]) as hashing:
        plan = plan_download(existing, prefix, local, bucket.stat, ctx.args.delete,
                             unchanged, hashing)
    root = Path(os.path.abspath(local))
    plan.deletes = [path for path in plan.deletes
                    if selection.selected(path.relative_to(root).as_posix())]
    kept = set(plan.unchanged)
    plan.retimed = [(info, path) for key, info in differing.items()
                    if (path := targets[key]) is not None and path in kept]
    if not ctx.args.dry_run:
        local.mkdir(parents=True, exist_ok=True)
    _run_download_plan(ctx, bucket, plan, ctx.args.dry_run)


def _listed(ctx: Context, bucket: Bucket, prefix: str,
            selection: _Selection) -> dict[str, ObjectInfo]:
    """The selected objects under ``prefix``, counted on a bar while they are listed."""
    with Step("listing", ctx.show_bar, unit=" objects") as step:
        found = {}
        for info in bucket.iter_objects(prefix):
            step()
            if selection.selected(info.key[len(prefix):]):
                found[info.key] = info
        return found


def _compared(ctx: Context, bucket: Bucket,
              pairs: dict[str, tuple[os.stat_result, ObjectInfo]],
              ) -> tuple[set[str], dict[str, ObjectInfo]]:
    """Of the pairs (key -> local stat, object) on both sides: those unchanged without
    reading them (``--size-only``: equal size; default: equal size and time), and the
    pairs of equal size whose times differ (their content decides; if it is the same,
    only the time is set). ``--checksum`` reads every pair (nothing is unchanged here)."""
    if ctx.args.compare == "size":
        return {key for key, (local, info) in pairs.items() if local.st_size == info.size}, {}
    if ctx.args.compare == "checksum":
        return set(), {}
    return split_by_time(pairs, lambda infos: ctx.detail(bucket, list(infos)))


def _hashing(ctx: Context, sizes: list[int]) -> Step:
    """The bar of the hashing a plan does, when there is some (``--checksum``, or files
    whose content must be compared)."""
    return Step("hashing", ctx.show_bar and bool(sizes), total=sum(sizes), unit="iB")


@command
def cmd_rm(ctx: Context) -> int:
    remotes = [parse_remote(text) for text in ctx.args.remotes]
    if not ctx.args.recursive and any(not remote.path for remote in remotes):
        raise UsageError("rm needs BUCKET/KEY (-r deletes a prefix; rb deletes a bucket)")
    keys_by_bucket: dict[str, list[str]] = {}
    for remote in remotes:
        bucket = ctx.bucket(remote.bucket)
        keys = keys_by_bucket.setdefault(remote.bucket, [])
        if ctx.args.recursive:
            found = [info.key for info in bucket.iter_objects(as_prefix(remote.path))]
            if not found:
                raise MissingObjectException(f"{remote}: no objects under this prefix")
            keys.extend(found)
        elif bucket.stat(remote.path) is not None:
            keys.append(remote.path)
        elif bucket.has_objects_under(as_prefix(remote.path)):
            raise UsageError(f"{remote} is a folder: use rm -r to delete it and everything "
                             "in it (nothing was deleted)")
        else:
            raise MissingObjectException(f"{remote}: no such object (nothing was deleted)")
    for name, keys in keys_by_bucket.items():
        ctx.bucket(name).delete_many(keys)
        for key in keys:
            ctx.say(f"delete: {name}/{key}")
    return EXIT_OK


@command
def cmd_mb(ctx: Context) -> int:
    name = parse_remote(ctx.args.bucket).bucket
    ctx.connection.create_bucket(name)
    ctx.say(f"make_bucket: {name}")
    return EXIT_OK


@command
def cmd_rb(ctx: Context) -> int:
    name = parse_remote(ctx.args.bucket).bucket
    bucket = ctx.bucket(name)
    if bucket.has_objects_under("") and not ctx.args.force:
        raise QarnotException(f"bucket {name!r} is not empty (use --force to delete it and "
                              "everything in it)")
    bucket.delete()
    ctx.say(f"remove_bucket: {name}")
    return EXIT_OK


@command
def cmd_uploads(ctx: Context) -> int:
    """List (or with --abort, abort) the unfinished multipart uploads under a prefix."""
    from datetime import datetime, timezone

    remote = parse_remote(ctx.args.remote)
    bucket = ctx.bucket(remote.bucket)
    found = bucket.list_multipart_uploads(remote.path)
    for key, upload_id, initiated in found:
        when = datetime.fromtimestamp(initiated, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if ctx.args.abort:
            bucket.abort_multipart(key, upload_id)
            ctx.say(f"abort: {remote.bucket}/{key} (upload {upload_id}, started {when} UTC)")
        else:
            print(f"{when} {upload_id} {key}")
    if not found:
        ctx.say(f"no unfinished multipart uploads in {remote}")
    return EXIT_OK


@command
def cmd_demo(ctx: Context) -> int:
    from .demo import run_demo

    return run_demo(ctx.args)


# -- carrying out plans -------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A local path as the user would write it: relative to the current folder if inside."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else os.fspath(path)


def _run_upload_plan(ctx: Context, bucket: Bucket, plan: SyncPlan,
                     dry_run: bool = False) -> None:
    """Carry out (or with ``dry_run`` only print) an upload plan: copies, then uploads (a
    line as each completes; Ctrl-C stops them), then deletes."""
    if dry_run:
        for line in plan.describe(bucket.uuid, _shown):
            ctx.say(f"(dry run) {line}")
        return
    for source, destination in plan.copies:
        bucket.copy(source, destination)
        ctx.say(f"copy: {bucket.uuid}/{source} -> {bucket.uuid}/{destination}")
    ctx.transfers(bucket).upload([
        Job(key, path, path.stat().st_size, f"upload: {_shown(path)} -> {bucket.uuid}/{key}",
            metadata=mtime_metadata(path))
        for key, path in plan.uploads])
    for info, path in plan.retimed:  # same content, other time: set the stored time only
        bucket.copy(info.key, info.key, {**(info.metadata or {}), **mtime_metadata(path)},
                    info.size, info.content_type or None)
        log.info("%s/%s: content unchanged, modification time set", bucket.uuid, info.key)
    bucket.delete_many(plan.deletes)
    for key in plan.deletes:
        ctx.say(f"delete: {bucket.uuid}/{key}")


def _run_download_plan(ctx: Context, bucket: Bucket, plan: DownloadPlan,
                       dry_run: bool = False) -> None:
    """Carry out (or with ``dry_run`` only print) a download plan, printing each action."""
    for key in plan.skipped:
        log.warning("skipping key %r: it would be written outside the target folder", key)
    if dry_run:
        for line in plan.describe(bucket.uuid, _shown):
            ctx.say(f"(dry run) {line}")
        return
    # Each file gets the object's time, which a stored mtime gives: a HEAD each (s3transfer
    # sends none of its own, being told the size).
    detailed = ctx.detail(bucket, [info for info, _ in plan.downloads if info.metadata is None])
    ctx.transfers(bucket).download([
        Job(info.key, path, info.size, f"download: {bucket.uuid}/{info.key} -> {_shown(path)}",
            mtime_ns=object_mtime_ns(detailed.get(info.key, info)))
        for info, path in plan.downloads])
    for info, path in plan.retimed:  # same content, other time: set the file's time only
        mtime = object_mtime_ns(info)
        os.utime(path, ns=(mtime, mtime))
        log.info("%s: content unchanged, modification time set", _shown(path))
    for path in plan.deletes:
        path.unlink()
        ctx.say(f"delete: {_shown(path)}")


# -- the parser ---------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, default: object,
                    debug: bool = True) -> None:
    """--config, --debug, --log-level, -q: on the main parser (``default`` None/False)
    and again on every command (``default`` SUPPRESS, so they may follow the command).
    Without ``debug`` for ``mount``, whose --debug is its own."""

    def given(value: object) -> object:
        return argparse.SUPPRESS if default is argparse.SUPPRESS else value

    parser.add_argument("--config", metavar="FILE", default=given(None),
                        help="configuration file (default: see below)")
    if debug:
        parser.add_argument("--debug", action="store_true", default=given(False),
                            help="log everything, and show tracebacks (secrets are masked)")
    parser.add_argument("--log-level", choices=logs.LEVELS, default=given(None),
                        type=str.lower, help="what is logged (default warning; --debug: "
                        "debug; --quiet: error)")
    parser.add_argument("--log-syslog", nargs="?", const=logs.SYSLOG_SOCKET,
                        default=given(None), metavar="SOCKET",
                        help="send the log to syslog (default socket "
                             f"{logs.SYSLOG_SOCKET}) instead of stderr or --log-file; "
                             "under journald the journal has it already")
    parser.add_argument("--quiet", "-q", action="store_true", default=given(False),
                        help="print only results and errors; no progress bars")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="qarnotfs",
        description="Manage Qarnot storage buckets, and mount them as folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, None)
    parser.add_argument("--version", "-V", action="version", version=f"%(prog)s {__version__}")
    common = ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    for_mount = ArgumentParser(add_help=False)
    _global_options(for_mount, argparse.SUPPRESS, debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser)
    _add_transfer_commands(commands, [common])
    _add_bucket_commands(commands, [common])
    add_mount_commands(commands, [common], [for_mount])
    return parser


Commands = argparse._SubParsersAction  # argparse's type for the sub-command table


def _add_transfer_commands(commands: Commands[ArgumentParser],
                           parents: list[ArgumentParser]) -> None:
    """buckets, ls, get, put, sync: listing and moving objects."""
    commands.add_parser("buckets", parents=parents,
                        help="list the buckets").set_defaults(func=cmd_buckets)

    # -h is --human-readable here, as for ls(1): only --help prints the help.
    ls = commands.add_parser("ls", parents=parents, add_help=False,
                             help="list a bucket or a folder in it")
    ls.add_argument("--help", action="help", help="show this help message and exit")
    ls.add_argument("remote", metavar="BUCKET[/PREFIX]")
    ls.add_argument("-l", "--long", action="store_true", help="show size and date")
    ls.add_argument("-h", "--human-readable", action="store_true",
                    help="like -l, with sizes in KiB, MiB, GiB")
    ls.add_argument("-r", "--recursive", action="store_true",
                    help="every object under the prefix, with full keys")
    ls.add_argument("--json", action="store_true",
                    help="one JSON object per line: key, type, size, last_modified, etag")
    ls.set_defaults(func=cmd_ls)

    get = commands.add_parser("get", parents=parents,
                              help="download an object, or a folder with -r",
                              description="get BUCKET/KEY [LOCAL]  |  get -r BUCKET[/PREFIX] DIR")
    get.add_argument("remote", metavar="BUCKET/KEY")
    get.add_argument("local", metavar="LOCAL", nargs="?",
                     help="file, or folder if it exists or ends with '/' (default: the "
                          "current folder)")
    get.add_argument("-r", "--recursive", action="store_true",
                     help="download every object under the prefix into DIR")
    _transfer_options(get)
    get.set_defaults(func=cmd_get)

    put = commands.add_parser(
        "put", parents=parents, help="upload files (and folders with -r)",
        description="put LOCAL... BUCKET[/PREFIX]: files go into the prefix as a folder "
                    "(a single file to a new key is stored under that key); a folder "
                    "DIR goes to PREFIX/DIR/... (empty folders too). Ctrl-C stops at once: "
                    "completed files stay, nothing partial is left.")
    put.add_argument("paths", metavar="LOCAL... BUCKET[/PREFIX]", nargs="+")
    put.add_argument("-r", "--recursive", action="store_true", help="upload folders")
    _transfer_options(put)
    put.set_defaults(func=cmd_put)

    sync = commands.add_parser(
        "sync", parents=parents, help="make a folder and a bucket prefix hold the same files",
        description=f"sync SRC DST: exactly one side is {SCHEME}BUCKET[/PREFIX]. Files "
                    "of the same name, size and modification time are unchanged (the "
                    "object's time is the one qarnotfs stored, else its LastModified); a "
                    "pair of equal size but other times is compared by content, and if it "
                    "is the same only the time is set. Uploads keep the file's time in "
                    "the object (x-amz-meta-mtime); downloads give the file the object's.")
    sync.add_argument("source", metavar="SRC")
    sync.add_argument("destination", metavar="DST")
    sync.add_argument("--delete", action="store_true",
                      help="also delete what the destination has and the source lacks")
    sync.add_argument("--dry-run", "-n", action="store_true",
                      help="print what would be done, change nothing")
    compare = sync.add_mutually_exclusive_group()
    compare.add_argument("--size-only", dest="compare", action="store_const", const="size",
                         default="mtime",
                         help="files of equal size are the same (times are not looked at)")
    compare.add_argument("--checksum", "-c", dest="compare", action="store_const",
                         const="checksum",
                         help="compare every pair of equal size by content (reads every "
                              "such local file), not by time")
    sync.add_argument("--exclude", dest="filters", action="append", default=[],
                      metavar="PATTERN", type=lambda pattern: ("exclude", pattern),
                      help="leave out paths matching PATTERN (fnmatch, relative to the "
                           "synced folder; repeatable; the last matching filter decides)")
    sync.add_argument("--include", dest="filters", action="append", metavar="PATTERN",
                      type=lambda pattern: ("include", pattern),
                      help="take back paths matching PATTERN after an --exclude")
    _transfer_options(sync)
    sync.set_defaults(func=cmd_sync)


def _transfer_options(parser: ArgumentParser) -> None:
    """--transfers and --bwlimit, for the commands that move files."""
    parser.add_argument("--transfers", type=_positive, default=DEFAULT_FILES_AT_ONCE,
                        metavar="N", help="files moved at once (default "
                        f"{DEFAULT_FILES_AT_ONCE}; a big file's parts still go in parallel)")
    parser.add_argument("--bwlimit", type=parse_rate, default=None, metavar="RATE",
                        help="at most RATE bytes per second for the whole command, with "
                             "binary suffixes: 512K, 10M (MiB/s), 1G")


def _add_bucket_commands(commands: Commands[ArgumentParser],
                         parents: list[ArgumentParser]) -> None:
    """rm, mb, rb, uploads, demo: deleting and creating, leftovers, and the tour."""

    rm = commands.add_parser("rm", parents=parents,
                             help="delete objects (or a whole prefix with -r)")
    rm.add_argument("remotes", metavar="BUCKET/KEY", nargs="+")
    rm.add_argument("-r", "--recursive", action="store_true",
                    help="delete every object under the prefix")
    rm.set_defaults(func=cmd_rm)

    mb = commands.add_parser("mb", parents=parents,
                             help="create a bucket (an existing one of yours is fine)")
    mb.add_argument("bucket", metavar="BUCKET")
    mb.set_defaults(func=cmd_mb)

    rb = commands.add_parser("rb", parents=parents, help="delete an empty bucket")
    rb.add_argument("bucket", metavar="BUCKET")
    rb.add_argument("--force", action="store_true",
                    help="delete the bucket even if it holds objects (they are deleted)")
    rb.set_defaults(func=cmd_rb)

    uploads = commands.add_parser(
        "uploads", parents=parents,
        help="list the unfinished multipart uploads (--abort to abort them)",
        description="uploads BUCKET[/PREFIX] [--abort]: the multipart uploads started and "
                    "never completed (they use space but are no object): date, upload id, "
                    "key. --abort aborts them; do not abort those a live mount is sending.")
    uploads.add_argument("remote", metavar="BUCKET[/PREFIX]")
    uploads.add_argument("--abort", action="store_true", help="abort every one listed")
    uploads.set_defaults(func=cmd_uploads)

    demo = commands.add_parser(
        "demo", parents=parents,
        help="try qarnotfs on an embedded S3 server (needs qarnotfs[demo])")
    demo.add_argument("--keep", action="store_true",
                      help="keep the server running and print how to use it, until Ctrl-C")
    demo.add_argument("--port", type=int, default=0,
                      help="port for the embedded server on 127.0.0.1 (default: a free one)")
    demo.add_argument("--backend", choices=("moto", "rgw"), default="moto",
                      help="moto: an S3 server inside this process (default); rgw: a local "
                      "Ceph RADOS Gateway (the server behind Qarnot storage) with its data "
                      "kept on disk between runs (installs Debian's Ceph packages; root)")
    demo.set_defaults(func=cmd_demo)

    help_command = commands.add_parser("help", parents=parents,
                                       help="the help of a command (qarnotfs help mount)")
    help_command.add_argument("topic", metavar="COMMAND", nargs="?")
    help_command.add_argument("--man", action="store_true",
                              help="print the manual page (troff), built from this parser")
    help_command.set_defaults(func=_help)

    completion = commands.add_parser(
        "completion", parents=parents, help="a shell completion script (bash or zsh)",
        description="bash: eval \"$(qarnotfs completion bash)\" in ~/.bashrc. zsh: "
                    "qarnotfs completion zsh > DIR/_qarnotfs, DIR in $fpath, before "
                    "compinit (scripts/install.sh installs both).")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(func=_completion)


def _help(args: argparse.Namespace) -> int:
    """``qarnotfs help [COMMAND]``: the same as ``qarnotfs [COMMAND] --help``."""
    parser = build_parser()
    commands = _subcommands(parser)
    if args.man:
        from argparse_manpage.manpage import Manpage

        print(Manpage(parser, format="pretty", _data={
            "project_name": "qarnotfs", "version": __version__,
            "description": "mount and manage Qarnot storage buckets"}))
    elif args.topic is None:
        parser.print_help()
    elif args.topic in commands:
        commands[args.topic].print_help()
    else:
        raise UsageError(f"no command {args.topic!r}: one of {', '.join(sorted(commands))}")
    return EXIT_OK


def _completion(args: argparse.Namespace) -> int:
    """A completion script built from the parser: for zsh shtab's (a ``_qarnotfs``
    function for ``$fpath``), for bash a function completing the commands, then each
    command's options, then file names."""
    if args.shell == "zsh":
        import shtab

        print(shtab.complete(build_parser(), shell="zsh"))
        return EXIT_OK
    commands = _subcommands(build_parser())
    cases = "\n".join(
        f"        {name}) words=\"{' '.join(_option_strings(sub))}\" ;;"
        for name, sub in sorted(commands.items()))
    print(f"""_qarnotfs() {{
    local current=${{COMP_WORDS[COMP_CWORD]}} words
    if [ "$COMP_CWORD" -eq 1 ]; then
        words="{' '.join(sorted(commands))} --help --version --config --debug --quiet"
    else
        case "${{COMP_WORDS[1]}}" in
{cases}
        esac
    fi
    if [ "$COMP_CWORD" -eq 1 ] || [[ "$current" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$current"))
    else
        COMPREPLY=($(compgen -f -- "$current"))
    fi
}}
complete -F _qarnotfs qarnotfs""")
    return EXIT_OK


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({option for action in parser._actions for option in action.option_strings
                   if option.startswith("--")})


# -- entry point --------------------------------------------------------------------------


def _mount_helper_call(argv: Sequence[str], known: Iterable[str]) -> bool:
    """True for the fuse3 mount helper convention: ``qarnotfs BUCKET[/PREFIX] DIR -o OPTS``.

    mount.fuse3 runs the file system's command that way; such arguments (first one no
    command, shape recognised by :func:`mounthelper.looks_like_helper_call`) go to
    :func:`mounthelper.main`.
    """
    return (bool(argv) and not argv[0].startswith("-") and argv[0] not in known
            and mounthelper.looks_like_helper_call(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if _mount_helper_call(argv, _subcommand_names(parser)):
            return int(mounthelper.main(argv))
        args = parser.parse_args(argv)
        logs.use_syslog(args.log_syslog)
        logs.setup(level=logs.level_from(args.debug, args.quiet, args.log_level))
        return int(args.func(args))
    except BrokenPipeError:
        return _reader_went_away()
    except Interrupted as error:
        status = report(error)
        if error.abandon:  # threads still wait for the server: do not wait for them
            sys.stdout.flush()
            os._exit(status)
        return status
    except (Exception, KeyboardInterrupt) as error:
        return report(error)


def _reader_went_away() -> int:
    """stdout's reader left (``qarnotfs ls -r | head -1``): stop quietly, as tools do."""
    # Python would complain again when it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _subcommand_names(parser: argparse.ArgumentParser) -> set[str]:
    return set(_subcommands(parser))


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
