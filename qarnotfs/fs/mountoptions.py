"""The mount options, each declared once: its type, default, parser, help and destination.

Owns: :class:`MountOptions`, whose fields ARE the option table. Each field's metadata
(built by :func:`_option`) says how to read its ``-o name=value`` text, what the help says,
whether it is also a ``--name`` flag of ``qarnotfs mount``, and which
:class:`~qarnotfs.fs.core.FsOptions` field it sets. From that one declaration come the
``mount`` command's flags (:func:`add_option_flags`), ``-o`` parsing
(:func:`parse_o_options`, shared by the command, fstab and the mount helper) and the
core's options (:func:`fs_options`). Also the mount(8) words that are not ours: kernel
flags passed to libfuse, and fstab words ignored.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..outcome import UsageError

# Mount flags libfuse hands to mount(2) itself (libfuse's mount_flags table), and
# auto_unmount, which libfuse gives to fusermount3 (unmount when the process dies).
KERNEL_FLAGS = frozenset({
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime",
    "dirsync", "auto_unmount",
})
# Options mount(8) and fstab use that mean nothing to a FUSE filesystem.
IGNORED_OPTIONS = frozenset({
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail",
    "_netdev", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "diratime", "nodiratime", "iversion", "noiversion", "loud", "silent",
    "default_permissions", "subtype", "fsname",
})
SECRET_OPTIONS = frozenset({"access_key", "secret_key", "token", "client_token", "password"})
SECONDS = "a number of seconds >= 0"
COUNT = "a whole number >= 0"


# -- parsers of option values -----------------------------------------------------------

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


def _size_or_zero(text: str) -> int:
    """Bytes, with an optional binary suffix: 0, 500G, 2T, 1P."""
    number = text.rstrip("KMGTPkmgtp")
    suffix = text[len(number):]
    if len(suffix) > 1:
        raise ValueError(text)
    value = int(number, 10) * _SIZE_SUFFIXES[suffix.upper()]
    if value < 0:
        raise ValueError(text)
    return value


def _size(text: str) -> int:
    """Bytes, with an optional binary suffix: 500G, 2T, 1P (not 0)."""
    value = _size_or_zero(text)
    if value == 0:
        raise ValueError(text)
    return value


def _umask(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(text)
    return value


def _user(text: str) -> int:
    return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid


def _group(text: str) -> int:
    return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid


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


def _lookups(text: str) -> str:
    from .namespace import LOOKUPS

    if text not in LOOKUPS:
        raise ValueError(text)
    return text


def _symlink_scan(text: str) -> str:
    from .attrs import SYMLINK_SCANS

    if text not in SYMLINK_SCANS:
        raise ValueError(text)
    return text


def _log_level(text: str) -> str:
    from ..logs import LEVELS

    if text.lower() not in LEVELS:
        raise ValueError(text)
    return text.lower()


# -- the declaration --------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """How one option is read and shown (a field's metadata)."""

    convert: Callable[[str], Any]
    expected: str
    help: str
    flag: bool = False
    """A switch (``-o name`` alone; ``--name`` takes no value)."""
    cli: bool = True
    """Also a ``--name`` flag of ``qarnotfs mount`` (else a global option covers it)."""
    fs: str | None = None
    """The FsOptions field it sets, if any."""
    aliases: tuple[str, ...] = ()


def _option(default: Any, convert: Callable[[str], Any], expected: str, help: str,
            **more: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(convert, expected, help, **more)})


def _switch(help: str, **more: Any) -> Any:
    return _option(False, _flag, "no value", help, flag=True, **more)


@dataclass
class MountOptions:
    """Every option of a mount; None means "the core's (or the connection's) default"."""

    read_only: bool = _switch("mount read-only (also -o ro)", fs="read_only", aliases=("ro",))
    allow_other: bool = _switch("let other users use the mount (needs user_allow_other in "
                                "/etc/fuse.conf unless root)")
    nonempty: bool = _switch("allow mounting over a non-empty folder")
    debug: bool = _switch("log every FUSE call", cli=False)
    uid: int | None = _option(None, _user, "a user id or name",
                              "owner of files without stored owner (default: you)", fs="uid")
    gid: int | None = _option(None, _group, "a group id or name",
                              "group of files without stored group (default: yours)", fs="gid")
    umask: int | None = _option(None, _umask, "an octal mask such as 022",
                                "octal umask for files without stored mode (default 022)",
                                fs="umask")
    staging_dir: str | None = _option(
        None, _path, "a folder", "private folder for files being written (default: "
        "~/.cache/qarnotfs/staging; $STATE_DIRECTORY/staging under systemd)",
        fs="staging_dir", aliases=("staging",))
    read_cache_size: int | None = _option(
        None, _size_or_zero, "a size in bytes such as 20G, or 0",
        "bound of the local cache of read data, all buckets' together, e.g. 20G (default 10G, "
        "at most a quarter of the disk's free space; 0: no read cache)", fs="read_cache_size")
    read_cache_dir: str | None = _option(
        None, _path, "a folder", "folder of the read cache, shared by the mounts using it "
        "(default: ~/.cache/qarnotfs/blocks; $CACHE_DIRECTORY/blocks under systemd)",
        fs="read_cache_dir")
    cache_ttl: float | None = _option(None, _seconds, SECONDS,
                                      "seconds metadata stays cached (default 60)",
                                      fs="cache_ttl")
    negative_ttl: float | None = _option(None, _seconds, SECONDS,
                                         "seconds a missing name stays cached (default 5)",
                                         fs="negative_ttl")
    cache_size: int | None = _option(None, _count, COUNT, "entries in the metadata cache",
                                     fs="cache_size")
    symlink_scan: str | None = _option(
        None, _symlink_scan, "marked or small",
        "which listed objects are checked for being symbolic links: marked (default: those "
        "qarnotfs wrote) or small (every object of 1-4095 bytes: s3fs's links too; one "
        "HEAD each)", fs="symlink_scan")
    lookups: str | None = _option(
        None, _lookups, "exact or listed",
        "how a name not cached yet is looked up: exact (default: a HEAD, so its stored mode, "
        "owner and times show at once) or listed (its folder is listed once, and the "
        "siblings show the listing's size and time, default mode and owner, until opened: "
        "one request per cold small file)", fs="lookups")
    delete_delay: float | None = _option(
        None, _seconds, SECONDS, "seconds an unlink waits for others to join one batched "
        "delete (default 0.05; 0: each unlink deletes before it returns)", fs="delete_delay")
    statfs_size: int | None = _option(None, _size, "a size in bytes such as 500G or 1P",
                                      "size df shows for the mount, e.g. 500G (default 1P; "
                                      "all of it free)", fs="statfs_total_bytes")
    statfs_inodes: int | None = _option(None, _count, COUNT,
                                        "number of files df -i shows (default 2^32)",
                                        fs="statfs_total_inodes")
    attr_timeout: float = _option(1.0, _seconds, SECONDS,
                                  "seconds the kernel caches attributes (default 1)")
    entry_timeout: float = _option(1.0, _seconds, SECONDS,
                                   "seconds the kernel caches names (default 1)")
    log_file: str | None = _option(None, _path, "a file", "write logs to this file (rotated "
                                   "at 10 MiB, 3 kept)")
    log_level: str | None = _option(None, _log_level, "debug, info, warning or error",
                                    "what the mount logs (default info)", cli=False)
    connect_timeout: float | None = _option(
        None, _seconds, SECONDS, "seconds to connect to the storage (default: the "
        "connection's, or $QARNOTFS_CONNECT_TIMEOUT)")
    read_timeout: float | None = _option(
        None, _seconds, SECONDS, "seconds to wait for each answer of the storage (default: "
        "the connection's, or $QARNOTFS_READ_TIMEOUT)")
    retries: int | None = _option(
        None, _count, COUNT, "retries of a failed request (default: the connection's, or "
        "$QARNOTFS_RETRY_COUNT); failed uploads are also retried in the background")
    config: str | None = _option(None, _path, "a configuration file",
                                 "configuration file with the credentials", cli=False,
                                 aliases=("conf",))


def specs() -> Iterator[tuple[str, Spec]]:
    """(name, spec) of every option, in declaration order."""
    for item in fields(MountOptions):
        yield item.name, _spec(item)


def _spec(item: Field[Any]) -> Spec:
    spec = item.metadata["spec"]
    assert isinstance(spec, Spec)
    return spec


_SPECS = dict(specs())
_ALIASES = {alias: name for name, spec in _SPECS.items() for alias in spec.aliases}


def convert_option(name: str, text: str) -> Any:
    """The value of one option, or UsageError saying what was expected."""
    spec = _SPECS[name]
    try:
        return spec.convert(text)
    except (ValueError, KeyError) as error:
        raise UsageError(
            f"invalid value for {name}: {text!r} (expected {spec.expected})") from error


def parse_o_options(specs_text: list[str], sloppy: bool = False) \
        -> tuple[dict[str, Any], list[str]]:
    """Parse ``-o`` strings into (qarnotfs option values, kernel mount flags).

    Unknown options are an error unless ``sloppy`` (mount -s), when they are ignored.
    """
    values: dict[str, Any] = {}
    kernel_flags: list[str] = []
    for text in specs_text:
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, has_value, value = item.partition("=")
            name = _ALIASES.get(key, key).replace("-", "_")
            if name == "rw" and not has_value:
                values["read_only"] = False
            elif name in _SPECS:
                values[name] = _o_value(key, name, bool(has_value), value)
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


def _o_value(key: str, name: str, has_value: bool, text: str) -> Any:
    if _SPECS[name].flag:
        return convert_option(name, text) if has_value else True
    if not has_value or not text:
        raise UsageError(f"option {key} needs a value ({key}=...)")
    return convert_option(name, text)


def make_options(values: dict[str, Any]) -> MountOptions:
    """MountOptions from parsed values (names as fields; others are not options)."""
    return MountOptions(**{k: v for k, v in values.items() if k in _SPECS})


# -- the three consumers ----------------------------------------------------------------

FLAG_PREFIX = "opt_"


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--name`` flag for each option meant for the command line."""
    for name, spec in _SPECS.items():
        if not spec.cli:
            continue
        flag = f"--{name.replace('_', '-')}"
        if spec.flag:
            parser.add_argument(flag, dest=FLAG_PREFIX + name, action="store_true",
                                default=argparse.SUPPRESS, help=spec.help)
        else:
            parser.add_argument(flag, dest=FLAG_PREFIX + name, default=argparse.SUPPRESS,
                                metavar=name.split("_")[-1].upper(), help=spec.help)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as ``--name`` flags (converted and checked)."""
    values: dict[str, Any] = {}
    for name, spec in _SPECS.items():
        given = getattr(args, FLAG_PREFIX + name, None)
        if given is None:
            continue
        values[name] = True if spec.flag else convert_option(name, given)
    return values


def fs_options(options: MountOptions, prefix: str, staging_default: str | None,
               read_cache_default: str | None = None) -> Any:
    """The core's FsOptions: every option that names an FsOptions field, if set (the
    defaults given here, systemd's folders, before the core's own)."""
    from .core import FsOptions

    values: dict[str, Any] = {"prefix": prefix}
    for name, spec in _SPECS.items():
        value = getattr(options, name)
        if spec.fs is not None and value is not None:
            values[spec.fs] = value
    staging = values.get("staging_dir", staging_default)
    if staging is not None:
        values["staging_dir"] = Path(staging)
    read_cache = values.get("read_cache_dir", read_cache_default)
    if read_cache is not None:
        values["read_cache_dir"] = Path(read_cache)
    return FsOptions(**values)
