"""The ``qarnotfs`` command line: bucket commands, the demo, and the mount commands' entry.

Owns: argument parsing (one subparser per command, each with ``set_defaults(func=...)``
returning an exit status), the syntax of remote paths, how each command drives the
:class:`~qarnotfs.bucket.Bucket` API, what is printed, and :func:`exit_status`, the one
place that turns an exception into an exit status and one ``qarnotfs: error: ...`` line.

Remote paths are ``BUCKET[/PREFIX]``; ``qarnot://BUCKET[/PREFIX]`` means the same and is
required by ``sync``, whose two sides can each be local or remote.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

from . import __version__, logs
from .bucket import Bucket
from .connection import Connection
from .exceptions import (
    ConfigurationException,
    MissingObjectException,
    QarnotException,
)
from .objects import ObjectInfo
from .paths import as_prefix, local_path_for_key, walk_files
from .progress import ProgressArg
from .sync import DownloadPlan, SyncPlan, plan_download, plan_upload

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEME = "qarnot://"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = f"""\
remote paths:
  BUCKET[/PREFIX], or {SCHEME}BUCKET[/PREFIX] (the form sync requires).
  A prefix names a folder at a '/' boundary: 'demo/pre' never includes 'demo/pre2/'.

credentials (never on the command line):
  QARNOT_CLIENT_TOKEN (Qarnot mode), or QARNOT_STORAGE_URL with AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY (any S3 endpoint), or a configuration file (--config, or
  $QARNOTFS_CONFIG, ~/.config/qarnotfs/qarnotfs.conf, ~/.qarnot/qarnot.conf).

exit status: 0 success, 1 runtime error, 2 usage error, 130 interrupted.
"""


class UsageError(Exception):
    """The command line is wrong: exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and raises instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- errors and exit statuses, in one place ------------------------------------------------


def exit_status(error: BaseException) -> int:
    """The exit status for an exception that ended a command."""
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def describe(error: BaseException) -> str:
    """The one line shown for an error (secrets masked)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, ConfigurationException):
        text = f"configuration: {error}"
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    elif isinstance(error, _EXPECTED):
        text = str(error) or type(error).__name__
    else:
        text = (f"unexpected {type(error).__name__}: {error} (run with --debug for the "
                "traceback)")
    return logs.redact(" ".join(text.split()))


_EXPECTED = (QarnotException, OSError, ValueError, UsageError)


# -- remote paths -------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """A bucket and a key or prefix in it ('' for the whole bucket)."""

    bucket: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.bucket}/{self.path}" if self.path else self.bucket


def parse_remote(text: str) -> Remote:
    """``BUCKET[/PREFIX]`` or ``qarnot://BUCKET[/PREFIX]`` -> Remote."""
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    bucket, _, path = body.partition("/")
    if not bucket:
        raise UsageError(f"{text!r} is not a remote path: expected BUCKET[/PREFIX]")
    return Remote(bucket, path.lstrip("/"))


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
    def progress(self) -> ProgressArg:
        return True if not self.args.quiet and sys.stderr.isatty() else None

    def say(self, line: str) -> None:
        """An informational line on stdout, unless --quiet."""
        if not self.args.quiet:
            print(line, flush=True)

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
    if ctx.args.recursive:
        found = _print_objects(ctx, bucket.iter_objects(as_prefix(remote.path)), "")
    else:
        folder = as_prefix(remote.path)
        listing = bucket.list_folder(folder)
        for prefix in sorted(listing.prefixes):
            name = prefix[len(folder):]
            print(f"{'PRE':>31} {name}" if ctx.args.long else name)
        found = bool(listing.prefixes)
        found |= _print_objects(ctx, listing.objects, folder)
    if not found and remote.path and not remote.path.endswith("/"):
        info = bucket.stat(remote.path)
        if info is not None:
            found = _print_objects(ctx, [info], "")
    if not found and remote.path:
        raise MissingObjectException(f"{remote}: no such object or folder")
    return EXIT_OK


def _print_objects(ctx: Context, objects: Iterable[ObjectInfo], strip: str) -> bool:
    found = False
    for info in objects:
        found = True
        name = info.key[len(strip):] or info.key
        if ctx.args.long:
            date = info.last_modified.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{info.size:>12} {date} {name}")
        else:
            print(name)
    return found


@command
def cmd_get(ctx: Context) -> int:
    remote = parse_remote(ctx.args.remote)
    if not ctx.args.recursive and not remote.path:
        raise UsageError("get needs BUCKET/KEY (or -r to download a folder)")
    if ctx.args.recursive and not ctx.args.local:
        raise UsageError("get -r needs a local folder: get -r BUCKET[/PREFIX] DIR")
    bucket = ctx.bucket(remote.bucket)
    if not ctx.args.recursive:
        local = ctx.args.local or "."
        written = bucket.get_file(remote.path, local, progress=ctx.progress)
        ctx.say(f"download: {remote} -> {written}")
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
            raise FileNotFoundError(2, "No such file or directory", source)
    bucket = ctx.bucket(remote.bucket)
    into_folder = (len(sources) > 1 or not remote.path or remote.path.endswith("/")
                   or any(os.path.isdir(s) for s in sources)
                   or bucket.has_objects_under(as_prefix(remote.path)))
    uploads: dict[str, Path] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            base = f"{as_prefix(remote.path)}{path.resolve().name}/"
            uploads.update({f"{base}{rel}": p for rel, p in walk_files(path)})
        else:
            key = f"{as_prefix(remote.path)}{path.name}" if into_folder else remote.path
            uploads[key] = path
    plan = SyncPlan(uploads=sorted(uploads.items()))
    _run_upload_plan(ctx, bucket, plan)
    return EXIT_OK


@command
def cmd_sync(ctx: Context) -> int:
    source, destination = ctx.args.source, ctx.args.destination
    remote_source, remote_destination = source.startswith(SCHEME), destination.startswith(SCHEME)
    if remote_source == remote_destination:
        raise UsageError(f"sync needs exactly one remote side written {SCHEME}BUCKET[/PREFIX]")
    dry_run, delete = ctx.args.dry_run, ctx.args.delete
    if remote_destination:
        remote, local = parse_remote(destination), Path(source)
        if not local.is_dir():
            raise NotADirectoryError(20, "Not a directory", source)
        bucket = ctx.bucket(remote.bucket)
        prefix = as_prefix(remote.path)
        wanted = {f"{prefix}{rel}": path for rel, path in walk_files(local)}
        existing = {info.key: info for info in bucket.iter_objects(prefix)}
        upload_plan = plan_upload(wanted, existing, bucket.stat)
        if not delete:
            upload_plan.deletes = []
        _run_upload_plan(ctx, bucket, upload_plan, dry_run)
        return EXIT_OK
    remote, local = parse_remote(source), Path(destination)
    if local.exists() and not local.is_dir():
        raise NotADirectoryError(20, "Not a directory", destination)
    bucket = ctx.bucket(remote.bucket)
    prefix = as_prefix(remote.path)
    existing = {info.key: info for info in bucket.iter_objects(prefix)}
    download_plan = plan_download(existing, prefix, local, bucket.stat, delete)
    if not dry_run:
        local.mkdir(parents=True, exist_ok=True)
    _run_download_plan(ctx, bucket, download_plan, dry_run)
    return EXIT_OK


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
        elif bucket.stat(remote.path) is None:
            raise MissingObjectException(f"{remote}: no such object (nothing was deleted)")
        else:
            keys.append(remote.path)
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
    """Carry out (or with ``dry_run`` only print) an upload plan, printing each action."""
    if dry_run:
        for line in plan.describe(bucket.uuid, _shown):
            ctx.say(f"(dry run) {line}")
    else:
        bucket.apply(plan, ctx.progress, ctx.say)


def _run_download_plan(ctx: Context, bucket: Bucket, plan: DownloadPlan,
                       dry_run: bool = False) -> None:
    """Carry out (or with ``dry_run`` only print) a download plan, printing each action."""
    for key in plan.skipped:
        log.warning("skipping key %r: it would be written outside the target folder", key)
    if not dry_run:
        _in_parallel(ctx, lambda item: bucket.download(item[0].key, item[1], ctx.progress,
                                                       size=item[0].size), plan.downloads)
        for path in plan.deletes:
            path.unlink()
    mark = "(dry run) " if dry_run else ""
    for line in plan.describe(bucket.uuid, _shown):
        ctx.say(f"{mark}{line}")


def _in_parallel(ctx: Context, work: Callable[[T], object], items: Sequence[T]) -> None:
    """Run ``work`` on the items in threads (errors propagate once all have been tried)."""
    if not items:
        return
    workers = max(1, min(len(items), ctx.connection.max_concurrency))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, items))


# -- the parser ---------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="qarnotfs",
        description="Manage Qarnot storage buckets, and mount them as folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: see below)")
    parser.add_argument("--debug", action="store_true",
                        help="log everything, and show tracebacks (secrets are masked)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only results and errors; no progress bars")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_transfer_commands(commands)
    _add_bucket_commands(commands)
    _add_mount_commands(commands)
    return parser


Commands = argparse._SubParsersAction  # argparse's type for the sub-command table


def _add_transfer_commands(commands: Commands[ArgumentParser]) -> None:
    """buckets, ls, get, put, sync: listing and moving objects."""
    commands.add_parser("buckets", help="list the buckets").set_defaults(func=cmd_buckets)

    ls = commands.add_parser("ls", help="list a bucket or a folder in it")
    ls.add_argument("remote", metavar="BUCKET[/PREFIX]")
    ls.add_argument("-l", "--long", action="store_true", help="show size and date")
    ls.add_argument("-r", "--recursive", action="store_true",
                    help="every object under the prefix, with full keys")
    ls.set_defaults(func=cmd_ls)

    get = commands.add_parser("get", help="download an object, or a folder with -r",
                              description="get BUCKET/KEY [LOCAL]  |  get -r BUCKET[/PREFIX] DIR")
    get.add_argument("remote", metavar="BUCKET/KEY")
    get.add_argument("local", metavar="LOCAL", nargs="?",
                     help="file or existing folder (default: the current folder)")
    get.add_argument("-r", "--recursive", action="store_true",
                     help="download every object under the prefix into DIR")
    get.set_defaults(func=cmd_get)

    put = commands.add_parser(
        "put", help="upload files (and folders with -r)",
        description="put LOCAL... BUCKET[/PREFIX]: files go into the prefix as a folder "
                    "(a single file to a new key is stored under that key); a folder "
                    "DIR goes to PREFIX/DIR/...")
    put.add_argument("paths", metavar="LOCAL... BUCKET[/PREFIX]", nargs="+")
    put.add_argument("-r", "--recursive", action="store_true", help="upload folders")
    put.set_defaults(func=cmd_put)

    sync = commands.add_parser(
        "sync", help="make a folder and a bucket prefix hold the same files",
        description=f"sync SRC DST: exactly one side is {SCHEME}BUCKET[/PREFIX]. Files "
                    "are compared by name, size and content; only differing ones move.")
    sync.add_argument("source", metavar="SRC")
    sync.add_argument("destination", metavar="DST")
    sync.add_argument("--delete", action="store_true",
                      help="also delete what the destination has and the source lacks")
    sync.add_argument("--dry-run", "-n", action="store_true",
                      help="print what would be done, change nothing")
    sync.set_defaults(func=cmd_sync)


def _add_bucket_commands(commands: Commands[ArgumentParser]) -> None:
    """rm, mb, rb, demo: deleting and creating, and the tour."""

    rm = commands.add_parser("rm", help="delete objects (or a whole prefix with -r)")
    rm.add_argument("remotes", metavar="BUCKET/KEY", nargs="+")
    rm.add_argument("-r", "--recursive", action="store_true",
                    help="delete every object under the prefix")
    rm.set_defaults(func=cmd_rm)

    mb = commands.add_parser("mb", help="create a bucket (an existing one of yours is fine)")
    mb.add_argument("bucket", metavar="BUCKET")
    mb.set_defaults(func=cmd_mb)

    rb = commands.add_parser("rb", help="delete an empty bucket")
    rb.add_argument("bucket", metavar="BUCKET")
    rb.add_argument("--force", action="store_true",
                    help="delete the bucket even if it holds objects (they are deleted)")
    rb.set_defaults(func=cmd_rb)

    demo = commands.add_parser(
        "demo", help="try qarnotfs on an embedded S3 server (needs qarnotfs[demo])")
    demo.add_argument("--keep", action="store_true",
                      help="keep the server running and print how to use it, until Ctrl-C")
    demo.add_argument("--port", type=int, default=0,
                      help="port for the embedded server on 127.0.0.1 (default: a free one)")
    demo.add_argument("--backend", choices=("moto", "rgw"), default="moto",
                      help="moto: an S3 server inside this process (default); rgw: a local "
                      "Ceph RADOS Gateway (the server behind Qarnot storage) with its data "
                      "kept on disk between runs (installs Debian's Ceph packages; root)")
    demo.set_defaults(func=cmd_demo)


def _add_mount_commands(commands: Commands[ArgumentParser]) -> None:
    # TODO(lead): import directly once qarnotfs.fs.mount exists; the guard is temporary.
    try:
        from .fs.mount import add_mount_commands  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    add_mount_commands(commands)


# -- entry point --------------------------------------------------------------------------


def _mount_helper(argv: Sequence[str], known: Iterable[str]) -> int | None:
    """HOOK (fuse3 mount helper convention): ``qarnotfs BUCKET[/PREFIX] DIR -o OPTS``.

    mount.fuse3 runs the file system's command that way. When the first argument is not
    a command and :func:`qarnotfs.fs.mounthelper.looks_like_helper_call` recognises the
    shape, the arguments go to :func:`qarnotfs.fs.mounthelper.main`. Returns None when
    it does not apply (argparse then reports what is wrong).
    """
    if not argv or argv[0].startswith("-") or argv[0] in known:
        return None
    # TODO(lead): import directly once qarnotfs.fs.mounthelper is merged.
    try:
        from .fs import mounthelper  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    if not mounthelper.looks_like_helper_call(list(argv)):
        return None
    return int(mounthelper.main(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logs.setup(debug=debug, quiet="--quiet" in argv or "-q" in argv)
    try:
        parser = build_parser()
        known = _subcommand_names(parser)
        status = _mount_helper(argv, known)
        if status is not None:
            return status
        args = parser.parse_args(argv)
        logs.setup(debug=args.debug, quiet=args.quiet)
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as error:
        if debug:
            log.debug("traceback", exc_info=True)
        print(f"qarnotfs: error: {describe(error)}", file=sys.stderr)
        return exit_status(error)


def _subcommand_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
