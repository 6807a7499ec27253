"""Deciding what a sync must do, in either direction, before anything is transferred.

Owns: the comparison rule (name, then size, then content: the SHA-1 that qarnotfs keeps in
object metadata, or else the 8 MiB multipart ETag rule, so that objects uploaded by the
Qarnot SDK are recognised as unchanged) and the resulting plans. Plans are plain data, so
``--dry-run`` prints exactly what a real run would do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .checksums import SHA1_METADATA_KEY, Fingerprint, fingerprint
from .objects import ObjectInfo

StatFunction = Callable[[str], "ObjectInfo | None"]
PathFormatter = Callable[[Path], str]


@dataclass
class SyncPlan:
    """Local folder -> bucket: what to upload, copy server-side, delete, and leave."""

    uploads: list[tuple[str, Path]] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def describe(self, bucket: str, show: PathFormatter = str) -> Iterator[str]:
        """One line per action, in the order they are carried out."""
        for source, destination in self.copies:
            yield f"copy: {bucket}/{source} -> {bucket}/{destination}"
        for key, path in self.uploads:
            yield f"upload: {show(path)} -> {bucket}/{key}"
        for key in self.deletes:
            yield f"delete: {bucket}/{key}"


@dataclass
class DownloadPlan:
    """Bucket -> local folder: what to download, and which local files to delete."""

    downloads: list[tuple[ObjectInfo, Path]] = field(default_factory=list)
    deletes: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def describe(self, bucket: str, show: PathFormatter = str) -> Iterator[str]:
        """One line per action, in the order they are carried out."""
        for info, path in self.downloads:
            yield f"download: {bucket}/{info.key} -> {show(path)}"
        for path in self.deletes:
            yield f"delete: {show(path)}"


def same_content(local: Fingerprint, remote: ObjectInfo, stat: StatFunction) -> bool:
    """True if the local file and the object hold the same bytes (as far as can be told).

    Size first; then the multipart ETag rule (no request); then the SHA-1 in the object's
    metadata, which needs one HEAD and only happens when sizes match but ETags do not.
    """
    if local.size != remote.size:
        return False
    if local.etag == remote.etag:
        return True
    metadata = remote.metadata
    if metadata is None:
        detailed = stat(remote.key)
        metadata = detailed.metadata if detailed else None
    return metadata is not None and metadata.get(SHA1_METADATA_KEY) == local.sha1


def plan_upload(wanted: dict[str, Path], existing: dict[str, ObjectInfo],
                stat: StatFunction) -> SyncPlan:
    """Plan to make ``existing`` (key -> object) equal ``wanted`` (key -> local file).

    A new key whose content equals an existing object (same ETag and size) becomes a
    server-side copy instead of an upload, which makes local renames cheap.
    """
    plan = SyncPlan()
    by_etag = {(info.etag, info.size): key for key, info in existing.items()}
    for key, path in sorted(wanted.items()):
        local = fingerprint(path)
        remote = existing.get(key)
        if remote is not None and same_content(local, remote, stat):
            plan.unchanged.append(key)
        elif remote is None and (local.etag, local.size) in by_etag:
            plan.copies.append((by_etag[(local.etag, local.size)], key))
        else:
            plan.uploads.append((key, path))
    plan.deletes = sorted(set(existing) - set(wanted))
    return plan


def plan_download(existing: dict[str, ObjectInfo], prefix: str, root: Path,
                  stat: StatFunction, delete: bool) -> DownloadPlan:
    """Plan to make folder ``root`` hold the objects under ``prefix`` (prefix stripped)."""
    from .paths import local_path_for_key

    plan = DownloadPlan()
    wanted: set[Path] = set()
    for key, info in sorted(existing.items()):
        relative = key[len(prefix):]
        if not relative or relative.endswith("/"):
            continue
        target = local_path_for_key(root, relative)
        if target is None:
            plan.skipped.append(key)
            continue
        wanted.add(target)
        if target.is_file() and same_content(fingerprint(target), info, stat):
            plan.unchanged.append(target)
        else:
            plan.downloads.append((info, target))
    if delete and root.is_dir():
        plan.deletes = sorted(path for path in _local_files(root) if path not in wanted)
    return plan


def _local_files(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            yield Path(os.path.abspath(os.path.join(folder, name)))
