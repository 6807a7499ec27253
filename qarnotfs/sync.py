"""Deciding what a sync must do, in either direction, before anything is transferred.

Owns: the comparison rule (name, then size, then content: the 8 MiB multipart ETag rule or
the whole MD5, so that objects uploaded by the Qarnot SDK or copied server-side are
recognised as unchanged, else the SHA-1 that qarnotfs keeps in object metadata), the choice
of server-side copies over uploads (content already in the bucket, or uploaded twice), and
the resulting plans. Plans are plain data, so ``--dry-run`` prints exactly what a real run
would do.
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
    """(source, destination) copied before the uploads, from objects the plan leaves."""
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    """(source, destination) copied after the uploads, from a key this plan uploads."""
    deletes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def describe(self, bucket: str, show: PathFormatter = str) -> Iterator[str]:
        """One line per action, in the order they are carried out."""
        for source, destination in self.copies:
            yield f"copy: {bucket}/{source} -> {bucket}/{destination}"
        for key, path in self.uploads:
            yield f"upload: {show(path)} -> {bucket}/{key}"
        for source, destination in self.duplicates:
            yield f"copy: {bucket}/{source} -> {bucket}/{destination}"
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

    Size first; then the ETag (no request); then the SHA-1 in the object's metadata,
    which needs one HEAD and only happens when sizes match but ETags do not.
    """
    if local.size != remote.size:
        return False
    if local.matches_etag(remote.etag):
        return True
    metadata = remote.metadata
    if metadata is None:
        detailed = stat(remote.key)
        metadata = detailed.metadata if detailed else None
    return metadata is not None and metadata.get(SHA1_METADATA_KEY) == local.sha1


def plan_upload(wanted: dict[str, Path], existing: dict[str, ObjectInfo],
                stat: StatFunction) -> SyncPlan:
    """Plan to make ``existing`` (key -> object) equal ``wanted`` (key -> local file).

    Content already in the bucket is copied server-side rather than uploaded (a local
    rename costs one request); content wanted under several keys is uploaded once and
    copied to the others. A copy's source is only ever an object the plan leaves as it
    is or deletes: one the plan overwrites could be copied after it changed.
    """
    plan = SyncPlan()
    local = {key: fingerprint(path) for key, path in sorted(wanted.items())}
    changed: list[str] = []
    for key, content in local.items():
        remote = existing.get(key)
        if remote is not None and same_content(content, remote, stat):
            plan.unchanged.append(key)
        else:
            changed.append(key)
    kept = sorted(set(plan.unchanged) | (set(existing) - set(wanted)))
    in_bucket: dict[tuple[str, int], str] = {}
    for key in kept:
        in_bucket.setdefault((existing[key].etag, existing[key].size), key)
    uploaded: dict[tuple[str, int], str] = {}
    for key in changed:
        content = local[key]
        source = in_bucket.get((content.etag, content.size)) \
            or in_bucket.get((content.md5, content.size))
        if source is not None:
            plan.copies.append((source, key))
        elif (content.etag, content.size) in uploaded:
            plan.duplicates.append((uploaded[(content.etag, content.size)], key))
        else:
            uploaded[(content.etag, content.size)] = key
            plan.uploads.append((key, wanted[key]))
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
