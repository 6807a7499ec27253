"""The filesystem core against a reference model: a local directory.

A Hypothesis state machine applies the same random operations to the core (over the test
S3 server) and to a folder on local disk, and requires the same results: same bytes,
sizes, listings, and the same errno when a call fails. It also remounts (a fresh
Filesystem on the same keys, after closing every handle) and changes objects behind the
mount's back with a raw client, then moves the caches' clock past their TTL (no sleep).

Calls the kernel would refuse before FUSE sees them (a parent that is missing or not a
folder, a rename onto an ancestor) are applied to the model only.

    QARNOTFS_MODEL_EXAMPLES=200 pytest tests/test_50_model_core.py   # a longer run
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model_common import DATA, OFFSETS, OPEN_MODES, PATHS, OpenFlags, same

from qarnotfs.bucket import Bucket
from qarnotfs.fs.core import Filesystem, FsOptions
from qarnotfs.fs.keys import is_within, parent_of

if TYPE_CHECKING:
    from fs_helpers import FakeClock
    from mypy_boto3_s3 import S3Client

pytest_plugins = ("fs_helpers",)

EXAMPLES = int(os.environ.get("QARNOTFS_MODEL_EXAMPLES", "30"))
STEPS = int(os.environ.get("QARNOTFS_MODEL_STEPS", "40"))
CACHE_TTL = 30.0

@dataclass
class Pair(OpenFlags):
    """One open file in both worlds."""

    local_fd: int
    fh: int
    flags: int
    path: str


class CoreModel(RuleBasedStateMachine):
    """Same operations on a Filesystem and on a local folder."""

    bucket: Bucket
    s3_client: S3Client
    bucket_name: str
    clock: FakeClock
    work: Path
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        example = next(self.counter)
        self.prefix = f"ex{example}/"
        self.local = Path(tempfile.mkdtemp(prefix=f"model{example}-", dir=self.work))
        self.staging = self.work / f"staging{example}"
        self.fs = self._mount()
        self.pairs: list[Pair] = []

    def _mount(self) -> Filesystem:
        return Filesystem(self.bucket, FsOptions(
            prefix=self.prefix, staging_dir=self.staging, cache_ttl=CACHE_TTL,
            negative_ttl=CACHE_TTL / 3, clock=self.clock, workers=4))

    def teardown(self) -> None:
        for pair in self.pairs:
            os.close(pair.local_fd)
            self.fs.release(pair.fh)
        self.fs.shutdown()
        shutil.rmtree(self.local, ignore_errors=True)

    # -- the model's view ------------------------------------------------------------------

    def at(self, path: str) -> str:
        return str(self.local) + path

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.at(path))

    def is_file(self, path: str) -> bool:
        return os.path.isfile(self.at(path))

    def reachable(self, path: str) -> bool:
        """The kernel would pass this path to the filesystem (its parent is a folder)."""
        return self.is_dir(parent_of(path))

    # -- namespace -------------------------------------------------------------------------

    @rule(path=PATHS, exclusive=st.booleans(), mode=st.sampled_from([0o644, 0o600]))
    def create(self, path: str, exclusive: bool, mode: int) -> None:
        if not self.reachable(path):
            return
        flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if exclusive else 0)
        local_fd, fh = same(lambda: os.open(self.at(path), flags, mode),
                            lambda: self.fs.create(path, stat.S_IFREG | mode, flags))
        if local_fd is not None:
            self.pairs.append(Pair(local_fd, fh, flags, path))

    @rule(path=PATHS, mode=OPEN_MODES)
    def open(self, path: str, mode: tuple[str, int]) -> None:
        flags = mode[1]
        if not self.reachable(path) or self.is_dir(path):
            return  # directories are opened with opendir, not open
        local_fd, fh = same(lambda: os.open(self.at(path), flags),
                            lambda: self.fs.open(path, flags))
        if local_fd is not None:
            self.pairs.append(Pair(local_fd, fh, flags, path))

    @rule(path=PATHS)
    def mkdir(self, path: str) -> None:
        if self.reachable(path):
            same(lambda: os.mkdir(self.at(path), 0o755), lambda: self.fs.mkdir(path, 0o755))

    @rule(path=PATHS)
    def rmdir(self, path: str) -> None:
        if self.reachable(path):
            same(lambda: os.rmdir(self.at(path)), lambda: self.fs.rmdir(path))

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        if self.reachable(path):
            same(lambda: os.unlink(self.at(path)), lambda: self.fs.unlink(path))

    @rule(old=PATHS, new=PATHS, noreplace=st.booleans())
    def rename(self, old: str, new: str, noreplace: bool) -> None:
        if not (self.reachable(old) and self.reachable(new)):
            return
        if old != new and is_within(old, new):
            return  # the kernel answers ENOTEMPTY itself (new is an ancestor of old)
        if noreplace:
            # os.rename has no flags: the model checks RENAME_NOREPLACE by hand.
            def local() -> None:
                if os.path.lexists(self.at(new)) and os.path.lexists(self.at(old)):
                    raise FileExistsError(errno.EEXIST, new)
                os.rename(self.at(old), self.at(new))
        else:
            def local() -> None:
                os.rename(self.at(old), self.at(new))
        same(local, lambda: self.fs.rename(old, new, 1 if noreplace else 0))
        for pair in self.pairs:
            if is_within(pair.path, old) and os.path.lexists(self.at(new)):
                pair.path = new + pair.path[len(old):]

    @rule(path=PATHS, length=OFFSETS)
    def truncate(self, path: str, length: int) -> None:
        if self.reachable(path):
            same(lambda: os.truncate(self.at(path), length),
                 lambda: self.fs.truncate(path, length))

    # -- handles ---------------------------------------------------------------------------

    def _pair(self, index: int, want: Callable[[Pair], bool]) -> Pair | None:
        candidates = [pair for pair in self.pairs if want(pair)]
        return candidates[index % len(candidates)] if candidates else None

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), data=DATA, offset=OFFSETS)
    def write(self, index: int, data: bytes, offset: int) -> None:
        pair = self._pair(index, lambda p: p.writable)
        if pair is not None:
            written, got = same(lambda: os.pwrite(pair.local_fd, data, offset),
                                lambda: self.fs.write(pair.fh, data, offset))
            assert got == written

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), size=st.integers(1, 100), offset=OFFSETS)
    def read(self, index: int, size: int, offset: int) -> None:
        pair = self._pair(index, lambda p: p.readable)
        if pair is not None:
            expected, got = same(lambda: os.pread(pair.local_fd, size, offset),
                                 lambda: self.fs.read(pair.fh, size, offset))
            assert got == expected

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20), length=OFFSETS)
    def ftruncate(self, index: int, length: int) -> None:
        pair = self._pair(index, lambda p: p.writable)
        if pair is not None:
            same(lambda: os.ftruncate(pair.local_fd, length),
                 lambda: self.fs.truncate(pair.path, length, pair.fh))
            assert self.fs.getattr("", pair.fh).size == os.fstat(pair.local_fd).st_size

    @precondition(lambda self: self.pairs)
    @rule(index=st.integers(0, 20))
    def close(self, index: int) -> None:
        pair = self.pairs.pop(index % len(self.pairs))
        os.close(pair.local_fd)
        try:
            self.fs.flush(pair.fh)
        finally:
            self.fs.release(pair.fh)

    # -- looking -----------------------------------------------------------------------------

    @rule(path=PATHS)
    def stat(self, path: str) -> None:
        if not self.reachable(path):
            return
        expected, got = same(lambda: os.lstat(self.at(path)), lambda: self.fs.getattr(path))
        if expected is not None:
            assert stat.S_IFMT(got.mode) == stat.S_IFMT(expected.st_mode)
            if stat.S_ISREG(expected.st_mode):
                assert got.size == expected.st_size

    @rule(path=st.sampled_from(["/", "/a", "/b", "/a/a", "/a/b"]))
    def listdir(self, path: str) -> None:
        if path != "/" and not self.reachable(path):
            return
        expected, got = same(lambda: sorted(os.listdir(self.at(path))),
                             lambda: [n for n, _ in self.fs.readdir(path)][2:])
        assert got == expected

    @rule(path=PATHS)
    def read_whole(self, path: str) -> None:
        if self.reachable(path) and self.is_file(path):
            assert self._content(path) == Path(self.at(path)).read_bytes()

    def _content(self, path: str) -> bytes:
        fh = self.fs.open(path, os.O_RDONLY)
        try:
            return self.fs.read(fh, 1 << 20, 0)
        finally:
            self.fs.release(fh)

    # -- the world outside -------------------------------------------------------------------

    @rule()
    def remount(self) -> None:
        for pair in self.pairs:
            os.close(pair.local_fd)
            self.fs.flush(pair.fh)
            self.fs.release(pair.fh)
        self.pairs.clear()
        assert self.fs.pending_uploads() == []
        self.fs.shutdown()
        self.fs = self._mount()
        self.compare_trees()

    @precondition(lambda self: not self.pairs)
    @rule(path=PATHS, data=DATA)
    def put_behind_its_back(self, path: str, data: bytes) -> None:
        if not self.reachable(path) or self.is_dir(path):
            return
        self.s3_client.put_object(Bucket=self.bucket_name, Key=self.prefix + path[1:],
                                  Body=data)
        Path(self.at(path)).write_bytes(data)
        self.clock.advance(CACHE_TTL + 1)

    @precondition(lambda self: not self.pairs)
    @rule(path=PATHS)
    def delete_behind_its_back(self, path: str) -> None:
        if not self.is_file(path):
            return
        self.s3_client.delete_object(Bucket=self.bucket_name, Key=self.prefix + path[1:])
        os.unlink(self.at(path))
        self.clock.advance(CACHE_TTL + 1)

    @invariant()
    def handles_agree_on_size(self) -> None:
        for pair in self.pairs:
            assert self.fs.getattr("", pair.fh).size == os.fstat(pair.local_fd).st_size

    def compare_trees(self) -> None:
        """Every folder, file and byte is the same in both worlds."""
        for folder, dirs, files in os.walk(self.local):
            path = "/" + os.path.relpath(folder, self.local).replace(".", "", 1).lstrip("/")
            path = "/" if path == "/" else path.rstrip("/")
            listed = {name: attrs for name, attrs in self.fs.readdir(path)[2:]}
            assert sorted(listed) == sorted(dirs + files), path
            for name in files:
                child = f"{path.rstrip('/')}/{name}"
                assert self._content(child) == Path(folder, name).read_bytes(), child


def test_core_behaves_like_a_local_folder(bucket: Bucket, s3_client: S3Client,
                                          bucket_name: str, clock: FakeClock,
                                          tmp_path: Path) -> None:
    class Machine(CoreModel):
        pass

    Machine.bucket = bucket
    Machine.s3_client = s3_client
    Machine.bucket_name = bucket_name
    Machine.clock = clock
    Machine.work = tmp_path
    run_state_machine_as_test(Machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None))
