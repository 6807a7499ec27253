"""Bucket keys and local paths: the rules that keep them apart safely.

Owns: sanitizing remote paths the way the SDK documents (repeated ``/`` collapsed, leading
``/`` stripped), prefixes that end at a ``/`` boundary, and mapping a key to a local path
that is guaranteed to stay inside a target folder.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_REPEATED_SLASHES = re.compile(r"/{2,}")


def sanitize_key(remote: str, warn: bool = True) -> str:
    """Collapse repeated slashes and strip a leading slash, logging when it changes."""
    cleaned = _REPEATED_SLASHES.sub("/", remote).lstrip("/")
    if warn and cleaned != remote:
        log.warning("remote path %r sanitized to %r", remote, cleaned)
    return cleaned


def as_prefix(remote: str | None) -> str:
    """A folder-like prefix: '' for the whole bucket, else the path ending in one '/'."""
    if not remote:
        return ""
    cleaned = sanitize_key(remote, warn=False).rstrip("/")
    return f"{cleaned}/" if cleaned else ""


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every regular file under ``root``, sorted per folder.

    Symbolic links are neither followed nor listed, as the SDK's ``add_directory`` does.
    """
    for folder, _dirs, names in os.walk(root, followlinks=False):
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def local_path_for_key(root: str | os.PathLike[str], key: str) -> Path | None:
    """The path under ``root`` where ``key`` belongs, or None if the key would escape it.

    A key escapes when a segment is ``..``, when it is absolute after sanitizing, or when
    it holds a NUL byte. Empty and ``.`` segments are dropped. The returned path is
    lexically inside ``root``; links already inside ``root`` are the caller's own.
    """
    if "\0" in key:
        return None
    segments = [s for s in key.split("/") if s not in ("", ".")]
    if not segments or ".." in segments:
        return None
    base = Path(os.path.abspath(root))
    candidate = Path(os.path.normpath(base.joinpath(*segments)))
    if candidate == base or base not in candidate.parents:
        return None
    return candidate
