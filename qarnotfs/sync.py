"""Deciding what a sync must do, in either direction, before anything is transferred.

Owns: the comparison rules and the resulting plans. The content rule (name, then size,
then content: the 8 MiB multipart ETag rule or the whole MD5, so that objects uploaded by
the Qarnot SDK or copied server-side are recognised as unchanged, else the SHA-1 that
qarnotfs keeps in object metadata) is the SDK API's and ``sync --checksum``'s. The time
rule (:func:`split_by_time`) is the command line's default, as rclone's: equal size and
equal modification time mean unchanged, nothing read. An object's modification time is
the ``x-amz-meta-mtime`` that qarnotfs writes (the CLI's uploads, and the mount, which
stores it the way s3fs does), else its ``LastModified``; since a listing carries no
metadata, a pair of equal size costs one HEAD, sent concurrently (:func:`detail`).
Also owned: the choice of server-side copies over uploads (content already in the bucket,
or uploaded twice). Plans are plain data, so ``--dry-run`` prints exactly what a real run would do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from .checksums import SHA1_METADATA_KEY, Fingerprint, fingerprint
from .fs.attrs import format_time, parse_time
from .objects import ObjectInfo

StatFunction = Callable[[str], "ObjectInfo | None"]
PathFormatter = Callable[[Path], str]
ReadCallback = Callable[[int], object]
"""Told the number of bytes read each time a file is hashed (a progress bar)."""

Comparison = Literal["mtime", "size", "checksum"]
"""How ``sync`` tells an unchanged pair: size and time (default), size, or content."""
MTIME_METADATA_KEY = "mtime"
"""``x-amz-meta-mtime``: decimal seconds, as s3fs and the mount write it."""
STORED_MTIME_WINDOW_NS = 1_000_000
"""Times stored in metadata keep nanoseconds: 1 ms absorbs file systems that keep less."""
LAST_MODIFIED_WINDOW_NS = 1_000_000_000
"""``LastModified`` is whole seconds in a HEAD's answer (an HTTP date)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
    retimed: list[tuple[ObjectInfo, Path]] = field(default_factory=list)
    """Unchanged content with another time: only the object's stored mtime is set."""

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
    retimed: list[tuple[ObjectInfo, Path]] = field(default_factory=list)
    """Unchanged content with another time: only the local file's mtime is set."""

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


def mtime_metadata(path: Path) -> dict[str, str]:
    """The metadata an upload of ``path`` carries: its modification time."""
    return {MTIME_METADATA_KEY: format_time(path.stat().st_mtime_ns)}


def object_mtime_ns(info: ObjectInfo) -> int:
    """The object's modification time: the stored mtime if any, else ``LastModified``."""
    stored = parse_time((info.metadata or {}).get(MTIME_METADATA_KEY))
    return stored if stored is not None else _ns(info.last_modified)


def _ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


def same_time(local_mtime_ns: int, info: ObjectInfo) -> bool:
    """True if a file of that mtime and the object have the same modification time, within
    the precision of where the object's time comes from."""
    stored = parse_time((info.metadata or {}).get(MTIME_METADATA_KEY))
    if stored is not None:
        return abs(local_mtime_ns - stored) < STORED_MTIME_WINDOW_NS
    return abs(local_mtime_ns - _ns(info.last_modified)) < LAST_MODIFIED_WINDOW_NS


def detail(infos: Sequence[ObjectInfo], stat: StatFunction, workers: int,
           done: Callable[[], object] = lambda: None) -> dict[str, ObjectInfo]:
    """The objects with their metadata: one HEAD each, ``workers`` at a time (``done``
    after each). An object gone meanwhile keeps its listed summary."""
    if not infos:
        return {}

    def head(info: ObjectInfo) -> ObjectInfo:
        detailed = stat(info.key)
        done()
        return detailed or info

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(infos)))) as pool:
        return {info.key: info for info in pool.map(head, infos)}


def split_by_time(pairs: Mapping[str, tuple[os.stat_result, ObjectInfo]],
                  details: Callable[[Sequence[ObjectInfo]], dict[str, ObjectInfo]],
                  ) -> tuple[set[str], dict[str, ObjectInfo]]:
    """The default comparison of pairs (key -> local stat, listed object) present on both
    sides: ``(unchanged, differing)``, where ``differing`` holds the pairs of equal size
    whose times differ, with their metadata (content may still be the same).

    With equal sizes the object's time decides, read by ``details`` (a HEAD each: only
    the metadata tells whether a stored mtime overrides ``LastModified``, so a listed
    ``LastModified`` close to the file's time proves nothing: a file rewritten within a
    second of its upload would pass for unchanged); a different size is a change the
    listing tells.
    """
    unchanged: set[str] = set()
    to_ask = [info for local, info in pairs.values() if local.st_size == info.size]
    differing: dict[str, ObjectInfo] = {}
    for key, info in details(to_ask).items():
        if same_time(pairs[key][0].st_mtime_ns, info):
            unchanged.add(key)
        else:
            differing[key] = info
    return unchanged, differing


def plan_upload(wanted: dict[str, Path], existing: dict[str, ObjectInfo],
                stat: StatFunction, unchanged: Collection[str] = (),
                on_read: ReadCallback | None = None) -> SyncPlan:
    """Plan to make ``existing`` (key -> object) equal ``wanted`` (key -> local file).

    ``unchanged`` keys are already known to be the same (by size or time): neither read
    nor moved. The other files are hashed (``on_read`` told each chunk) and compared by
    content. Content already in the bucket is copied server-side rather than uploaded (a
    local rename costs one request); content wanted under several keys is uploaded once
    and copied to the others. A copy's source is only ever an object the plan leaves as it
    is or deletes: one the plan overwrites could be copied after it changed.
    """
    plan = SyncPlan(unchanged=sorted(key for key in unchanged if key in wanted))
    local = {key: fingerprint(path, on_read=on_read) for key, path in sorted(wanted.items())
             if key not in unchanged}
    changed: list[str] = []
    for key, content in local.items():
        remote = existing.get(key)
        if remote is not None and same_content(content, remote, stat):
            plan.unchanged.append(key)
        else:
            changed.append(key)
    plan.unchanged.sort()
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
                  stat: StatFunction, delete: bool, unchanged: Collection[str] = (),
                  on_read: ReadCallback | None = None) -> DownloadPlan:
    """Plan to make folder ``root`` hold the objects under ``prefix`` (prefix stripped).

    ``unchanged`` keys are known to match their file (by size or time): not read. Other
    files of the object's size are hashed (``on_read`` told each chunk) and compared.
    """
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
        if key in unchanged or (target.is_file() and target.stat().st_size == info.size
                                and same_content(fingerprint(target, on_read=on_read),
                                                 info, stat)):
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
