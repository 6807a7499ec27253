"""A live mount against a reference model: a local directory.

The same idea as ``test_50_model_core``, one level up: a Hypothesis state machine applies
the same random operations, as ordinary OS calls through the kernel, to a real FUSE mount
(``qarnotfs mount`` in its own process) and to a folder on local disk, and requires the
same results: same bytes, sizes, listings, types and permission bits, and the same errno
when a call fails. It also remounts (closing every descriptor, ``qarnotfs unmount``, a new
mount of the same bucket) and changes objects behind the mount's back with a raw client.

The mount runs with every cache off (``--cache-ttl 0 --negative-ttl 0 --attr-timeout 0
--entry-timeout 0``), so a change made behind its back is seen by the next call with no
waiting. One mount serves the whole test; each example works in its own folder of it.

    QARNOTFS_MOUNT_MODEL_EXAMPLES=50 QARNOTFS_MOUNT_MODEL_STEPS=40 \\
        pytest tests/test_50_model_mount.py                          # a longer run
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model_common import DATA, OFFSETS, OPEN_MODES, PATHS, OpenFlags, same
from mounting import Mount, bucket_keys, mounted

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EXAMPLES = int(os.environ.get("QARNOTFS_MOUNT_MODEL_EXAMPLES", "8"))
STEPS = int(os.environ.get("QARNOTFS_MOUNT_MODEL_STEPS", "25"))
# A step takes milliseconds, a remount about a second; shrinking a failure takes longer.
pytestmark = [pytest.mark.mount, pytest.mark.timeout(120 + EXAMPLES * STEPS)]
UMASK = 0o022
OPTIONS = ("--cache-ttl", "0", "--negative-ttl", "0", "--attr-timeout", "0",
           "--entry-timeout", "0", "--umask", f"{UMASK:03o}")
MAX_REMOUNTS = 1  # per example: a remount costs about a second, the other steps milliseconds
LISTED = st.sampled_from(["/", "/a", "/b", "/a/a", "/a/b"])

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def rename(old: str, new: str, flags: int) -> None:
    """renameat2(2), which ``os.rename`` does not offer (for ``RENAME_NOREPLACE``)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old, None, new)


@dataclass
class Pair(OpenFlags):
    """One open file (or folder) in both worlds."""

    local_fd: int
    mount_fd: int
    flags: int
    is_dir: bool
    orphaned: bool = False
    """Unlinked, then its folder was removed: libfuse has no path left to stat it by."""

    def both(self, call: Callable[[int], object]) -> tuple[object, object]:
        return same(lambda: call(self.local_fd), lambda: call(self.mount_fd),
                    sys._getframe(1).f_code.co_name)


class MountModel(RuleBasedStateMachine):
    """Same OS calls on a live mount and on a local folder."""

    mount: Mount
    s3_client: S3Client
    bucket_name: str
    work: Path
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        example = next(self.counter)
        # Each example has its own folder of the mount, made through the mount.
        self.prefix = f"ex{example}/"
        self.local = self.work / f"model{example}"
        self.local.mkdir()
        self.mounted = self.mount.mountpoint / f"ex{example}"
        self.mounted.mkdir()
        self.pairs: list[Pair] = []
        self.remounts = 0

    def teardown(self) -> None:
        self._close_all()
        shutil.rmtree(self.local, ignore_errors=True)

    def _close_all(self) -> None:
        while self.pairs:
            pair = self.pairs.pop()
            os.close(pair.local_fd)
            os.close(pair.mount_fd)  # an upload error must fail the example

    # -- both worlds -------------------------------------------------------------------------

    def at(self, path: str) -> str:
        return str(self.local) + path.rstrip("/")

    def on(self, path: str) -> str:
        return str(self.mounted) + path.rstrip("/")

    def both(self, call: Callable[..., object], path: str, *args: object,
             ) -> tuple[object, object]:
        """``call(path, *args)`` in both worlds."""
        return same(lambda: call(Path(self.at(path)), *args),
                    lambda: call(Path(self.on(path)), *args), sys._getframe(1).f_code.co_name)

    @initialize(folders=st.lists(st.sampled_from(["/a", "/b", "/a/b"]), unique=True),
                files=st.lists(st.tuples(PATHS, DATA), max_size=4))
    def populate(self, folders: list[str], files: list[tuple[str, bytes]]) -> None:
        """A few folders and files to start with, so fewer calls just fail with ENOENT."""
        for folder in folders:
            self.mkdir(folder)
        for path, data in files:
            self.both(Path.write_bytes, path, data)

    # -- namespace ---------------------------------------------------------------------------
    # No call is filtered: the kernel answers for a missing or non-folder parent or a rename
    # onto an ancestor in both worlds, and those errnos are compared too.

    @rule(path=PATHS, exclusive=st.booleans(), mode=st.sampled_from([0o644, 0o600]))
    def create(self, path: str, exclusive: bool, mode: int) -> None:
        flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if exclusive else 0)
        self._open(path, flags, mode)

    @rule(path=PATHS, mode=OPEN_MODES)
    def open(self, path: str, mode: tuple[str, int]) -> None:
        self._open(path, mode[1])

    def _open(self, path: str, flags: int, mode: int = 0o777) -> None:
        local_fd, mount_fd = self.both(lambda p: os.open(p, flags, mode), path)
        if isinstance(local_fd, int) and isinstance(mount_fd, int):
            is_dir = stat.S_ISDIR(os.fstat(local_fd).st_mode)
            self.pairs.append(Pair(local_fd, mount_fd, flags, is_dir))

    @rule(path=PATHS)
    def mkdir(self, path: str) -> None:
        self.both(lambda p: os.mkdir(p, 0o755), path)

    @rule(path=PATHS)
    def rmdir(self, path: str) -> None:
        doomed = self._unlinked_under(path)
        self.both(os.rmdir, path)
        if not os.path.lexists(self.at(path)):
            self._orphan(doomed)

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self.both(os.unlink, path)

    @rule(path=PATHS)
    def unlink_while_open(self, path: str) -> None:
        """Common in real programs, rare by chance: the file then lives on through its
        descriptors only (libfuse names it ``.fuse_hidden...``; SEMANTICS.md)."""
        self._open(path, os.O_CREAT | os.O_RDWR, 0o644)
        self.both(os.unlink, path)

    @rule(old=PATHS, new=PATHS, noreplace=st.booleans())
    def rename(self, old: str, new: str, noreplace: bool) -> None:
        flags = _RENAME_NOREPLACE if noreplace else 0
        doomed = self._unlinked_under(new)  # if ``new`` is a folder, a rename replaces it
        same(lambda: rename(self.at(old), self.at(new), flags),
             lambda: rename(self.on(old), self.on(new), flags))
        if old != new and not os.path.lexists(self.at(old)):
            self._orphan(doomed)

    def _unlinked_under(self, folder: str) -> list[Pair]:
        """The open files, unlinked, somewhere under ``folder`` (by their local path)."""
        inside = self.at(folder) + "/"
        return [pair for pair in self.pairs if not pair.is_dir
                and os.fstat(pair.local_fd).st_nlink == 0
                and os.readlink(f"/proc/self/fd/{pair.local_fd}").startswith(inside)]

    @staticmethod
    def _orphan(pairs: list[Pair]) -> None:
        for pair in pairs:
            pair.orphaned = True

    @rule(path=PATHS, length=OFFSETS)
    def truncate(self, path: str, length: int) -> None:
        self.both(lambda p: os.truncate(p, length), path)

    # -- descriptors -------------------------------------------------------------------------

    def _pair(self, index: int, want: Callable[[Pair], bool]) -> Pair | None:
        candidates = [pair for pair in self.pairs if want(pair)]
        return candidates[index % len(candidates)] if candidates else None

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), data=DATA, offset=OFFSETS)
    def pwrite(self, index: int, data: bytes, offset: int) -> None:
        pair = self._pair(index, lambda p: p.writable)
        if pair is not None:
            written, got = pair.both(lambda fd: os.pwrite(fd, data, offset))
            assert got == written

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), data=DATA)
    def write(self, index: int, data: bytes) -> None:
        """At the descriptor's position (the end, with O_APPEND)."""
        pair = self._pair(index, lambda p: p.writable)
        if pair is not None:
            written, got = pair.both(lambda fd: os.write(fd, data))
            assert got == written

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), size=st.integers(1, 100), offset=OFFSETS)
    def pread(self, index: int, size: int, offset: int) -> None:
        pair = self._pair(index, lambda p: p.readable)
        if pair is not None:
            expected, got = pair.both(lambda fd: os.pread(fd, size, offset))
            assert got == expected

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), size=st.integers(1, 100))
    def read(self, index: int, size: int) -> None:
        pair = self._pair(index, lambda p: p.readable)
        if pair is not None:
            expected, got = pair.both(lambda fd: os.read(fd, size))
            assert got == expected

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), offset=OFFSETS)
    def seek(self, index: int, offset: int) -> None:
        pair = self._pair(index, lambda p: not p.is_dir)
        if pair is not None:
            expected, got = pair.both(lambda fd: os.lseek(fd, offset, os.SEEK_SET))
            assert got == expected

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), length=OFFSETS)
    def ftruncate(self, index: int, length: int) -> None:
        pair = self._pair(index, lambda p: p.writable)
        if pair is not None:
            pair.both(lambda fd: os.ftruncate(fd, length))

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20))
    def fsync(self, index: int) -> None:
        pair = self.pairs[index % len(self.pairs)]
        pair.both(os.fsync)

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20))
    def close(self, index: int) -> None:
        pair = self.pairs.pop(index % len(self.pairs))
        pair.both(os.close)

    # -- looking -----------------------------------------------------------------------------

    @rule(path=PATHS)
    def stat(self, path: str) -> None:
        expected, got = self.both(os.lstat, path)
        if isinstance(expected, os.stat_result) and isinstance(got, os.stat_result):
            assert got.st_mode == expected.st_mode  # type and permission bits
            if stat.S_ISREG(expected.st_mode):
                assert got.st_size == expected.st_size

    @rule(path=LISTED)
    def listdir(self, path: str) -> None:
        expected, got = self.both(lambda p: sorted(os.listdir(p)), path)
        assert got == expected

    @rule(path=PATHS)
    def read_whole(self, path: str) -> None:
        expected, got = self.both(lambda p: Path(p).read_bytes(), path)
        assert got == expected

    @invariant()
    def descriptors_agree_on_size(self) -> None:
        """fstat of every open file, unlinked ones too (nlink 0), shows the same size,
        except for the orphans: fstat is ESTALE there (SEMANTICS.md, Unlinked open files);
        their reads and writes are still compared."""
        for pair in self.pairs:
            if pair.is_dir or pair.orphaned:
                continue
            local, mounted = os.fstat(pair.local_fd), os.fstat(pair.mount_fd)
            assert (mounted.st_size, mounted.st_nlink) == (local.st_size, local.st_nlink)

    # -- the world outside -------------------------------------------------------------------

    @precondition(lambda self: self.remounts < MAX_REMOUNTS)
    @rule()
    def remount(self) -> None:
        self.remounts += 1
        self._close_all()
        self.mount.remount()
        self.compare_trees()

    def _object_path(self, path: str) -> bool:
        """``path`` can be written as an object: its folder exists and it is no folder."""
        return os.path.isdir(os.path.dirname(self.at(path))) and not os.path.isdir(self.at(path))

    @precondition(lambda self: not self.pairs)
    @rule(path=PATHS, data=DATA)
    def put_behind_its_back(self, path: str, data: bytes) -> None:
        if not self._object_path(path):
            return
        self.s3_client.put_object(Bucket=self.bucket_name, Key=self.prefix + path[1:],
                                  Body=data)
        Path(self.at(path)).write_bytes(data)
        # An object written by another tool has no stored mode: the mount shows
        # 0666 & ~umask (SEMANTICS.md, Attributes), also where a file was replaced.
        os.chmod(self.at(path), 0o666 & ~UMASK)

    @precondition(lambda self: not self.pairs)
    @rule(path=PATHS)
    def delete_behind_its_back(self, path: str) -> None:
        if not os.path.isfile(self.at(path)):
            return
        self.s3_client.delete_object(Bucket=self.bucket_name, Key=self.prefix + path[1:])
        os.unlink(self.at(path))

    def compare_trees(self) -> None:
        """Every folder, file and byte is the same in both worlds."""
        for folder, dirs, files in os.walk(self.local):
            relative = os.path.relpath(folder, self.local)
            mounted = self.mounted if relative == "." else self.mounted / relative
            assert sorted(os.listdir(mounted)) == sorted(dirs + files), relative
            for name in files:
                assert (mounted / name).read_bytes() == Path(folder, name).read_bytes(), name


@pytest.fixture
def live_mount(bucket_name: str, s3_env: dict[str, str], tmp_path: Path) -> Iterator[Mount]:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "mount", *OPTIONS) as mount:
        yield mount
        mount.stop()  # a clean unmount, and no error in the mount's log


def test_mount_behaves_like_a_local_folder(live_mount: Mount, s3_client: S3Client,
                                           bucket_name: str, tmp_path: Path) -> None:
    class Machine(MountModel):
        pass

    Machine.mount = live_mount
    Machine.s3_client = s3_client
    Machine.bucket_name = bucket_name
    Machine.work = tmp_path / "model"
    Machine.work.mkdir()
    run_state_machine_as_test(Machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None))


def test_fstat_of_an_unlinked_open_file(live_mount: Mount, s3_client: S3Client,
                                       bucket_name: str) -> None:
    """SEMANTICS.md, Unlinked open files: handles keep working, ``fstat`` with nlink 0,
    and the ``.fuse_hidden`` name libfuse gives the file never shows nor reaches the bucket.
    """
    folder = live_mount.mountpoint / "dir"
    folder.mkdir()
    path = folder / "unlinked"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"kept")
        os.unlink(path)
        assert os.listdir(folder) == []
        assert os.pread(fd, 10, 0) == b"kept"
        attributes = os.fstat(fd)
        assert (attributes.st_size, attributes.st_nlink) == (4, 0)
        os.ftruncate(fd, 2)
        os.pwrite(fd, b"-more", 2)
        assert os.fstat(fd).st_size == 7
        # cat calls fstat on what it reads: from the descriptor, and opened again by its
        # /proc link (an open by the kernel's inode, which libfuse names by the hidden path).
        os.lseek(fd, 0, os.SEEK_SET)
        through_stdin = subprocess.run(["cat"], stdin=fd, capture_output=True, check=True)
        by_proc_link = subprocess.run(["cat", f"/proc/self/fd/{fd}"], pass_fds=(fd,),
                                      capture_output=True, check=True)
        assert through_stdin.stdout == by_proc_link.stdout == b"ke-more"
        assert os.listdir(folder) == []
        assert not any(".fuse_hidden" in key for key in bucket_keys(s3_client, bucket_name))
    finally:
        os.close(fd)
    assert os.listdir(folder) == []
    assert bucket_keys(s3_client, bucket_name) == {"dir/"}, "only the folder's marker"
    live_mount.remount()
    assert os.listdir(folder) == []
    assert bucket_keys(s3_client, bucket_name) == {"dir/"}


def test_calls_on_a_handle_alone_reach_the_right_file(live_mount: Mount) -> None:
    """fchmod, fchown, futimens, fstat and readdir on descriptors reach the right file."""
    path = live_mount.mountpoint / "by-handle"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"data")
        os.fchmod(fd, 0o600)
        os.fchown(fd, 1234, 5678)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_123))
        attributes = os.fstat(fd)
        assert (attributes.st_mode & 0o777, attributes.st_uid, attributes.st_gid) == \
            (0o600, 1234, 5678)
        assert attributes.st_mtime_ns == 2_000_000_123
        folder = os.open(live_mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert "by-handle" in os.listdir(folder)  # readdir by the folder's handle
        finally:
            os.close(folder)
    finally:
        os.close(fd)
    assert (os.stat(path).st_mode & 0o777, os.stat(path).st_mtime_ns) == (0o600, 2_000_000_123)
