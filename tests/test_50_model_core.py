"""The filesystem core against a reference model: a local directory.

A Hypothesis state machine applies the same random operations to the core and to a
folder on local disk, and requires the same results: same bytes, sizes, listings, and the
same errno when a call fails. It also remounts (a fresh Filesystem on the same keys, after
closing every handle) and changes objects behind the mount's back through another client
of the bucket, then moves the caches' clock past their TTL (no sleep).

One machine, two storages: the in-memory store (``tests/memstore.py``, a new empty one
per example), where it runs 2,000 examples of up to 25 steps (one remount at most) in
about two minutes, and the test server (moto, or Ceph RGW with ``--backend rgw``, over
HTTP), 30 examples of up to 40 steps, in about half a minute on moto.

Calls the kernel would refuse before FUSE sees them (a parent that is missing or not a
folder, a rename onto an ancestor) are applied to the model only.

    QARNOTFS_MEMSTORE_MODEL_EXAMPLES=10000 pytest tests/test_50_model_core.py -k memstore
    QARNOTFS_MODEL_EXAMPLES=200 pytest tests/test_50_model_core.py -k server  # longer runs
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis.strategies as st
import pytest
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from memstore import MemStore
from model_common import (
    DATA,
    FILES,
    FOLDERS,
    LISTED,
    OFFSETS,
    OPEN_MODES,
    PATHS,
    OpenFlags,
    Outside,
    ServerClient,
    local_tree,
    pick,
    run_model,
    same,
)

from qarnotfs.fs.core import Filesystem, FsOptions
from qarnotfs.fs.keys import is_within, parent_of

if TYPE_CHECKING:
    from fakeclock import FakeClock

    from qarnotfs.fs.storage import Storage

pytest_plugins = ("fs_helpers",)

MEMSTORE_EXAMPLES = int(os.environ.get("QARNOTFS_MEMSTORE_MODEL_EXAMPLES", "2000"))
MEMSTORE_STEPS = int(os.environ.get("QARNOTFS_MEMSTORE_MODEL_STEPS", "25"))
SERVER_EXAMPLES = int(os.environ.get("QARNOTFS_MODEL_EXAMPLES", "30"))
SERVER_STEPS = int(os.environ.get("QARNOTFS_MODEL_STEPS", "40"))
CACHE_TTL = 30.0
TMPFS = Path("/dev/shm")


@dataclass(frozen=True)
class ModelStorage:
    """Where the model's core keeps its objects, and how long the model runs there."""

    example_bucket: Callable[[], tuple[Storage, Outside]]
    """The bucket of a new example, and another client of it (each example also has its
    own prefix, so a shared bucket serves)."""
    examples: int
    steps: int
    remounts: int | None = None
    """The most remounts in one example (None: no limit). A step that takes no argument
    is drawn often, and a remount (a new journal, staging folder and thread pools) costs
    as much as twenty other steps on the memstore."""


@dataclass
class Pair(OpenFlags):
    """One open file in both worlds."""

    local_fd: int
    fh: int
    flags: int
    path: str


class CoreModel(RuleBasedStateMachine):
    """Same operations on a Filesystem and on a local folder."""

    storage: ModelStorage
    clock: FakeClock
    work: Path
    counter: itertools.count[int]

    def __init__(self) -> None:
        super().__init__()
        example = next(self.counter)
        self.bucket, self.outside = self.storage.example_bucket()
        self.prefix = f"ex{example}/"
        self.local = Path(tempfile.mkdtemp(prefix=f"model{example}-", dir=self.work))
        self.staging = self.work / f"staging{example}"
        self.fs = self._mount()
        self.pairs: list[Pair] = []
        self.remounts = 0

    def _mount(self) -> Filesystem:
        return Filesystem(self.bucket, FsOptions(
            prefix=self.prefix, staging_dir=self.staging, read_cache_dir=self.work / "blocks",
            cache_ttl=CACHE_TTL,
            negative_ttl=CACHE_TTL / 3, clock=self.clock, workers=4))

    def teardown(self) -> None:
        for pair in self.pairs:
            os.close(pair.local_fd)
            self.fs.release(pair.fh)
        self.fs.shutdown()
        shutil.rmtree(self.local, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    @initialize(folders=FOLDERS, files=FILES)
    def populate(self, folders: list[str], files: list[tuple[str, bytes]]) -> None:
        """A few folders and files to start with, so fewer steps just fail with ENOENT."""
        for folder in folders:
            self.mkdir(folder)
        for path, data in files:
            if self.reachable(path) and not self.is_dir(path):
                self._write_whole(path, data)

    def _write_whole(self, path: str, data: bytes) -> None:
        """``path`` holds ``data`` in both worlds (created or replaced), as a program
        writes a whole file: open with O_TRUNC, write, close."""
        same(lambda: Path(self.at(path)).write_bytes(data),
             lambda: self._write_through_one_handle(path, data))

    def _write_through_one_handle(self, path: str, data: bytes) -> int:
        flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        fh = self.fs.create(path, stat.S_IFREG | 0o644, flags)
        try:
            written = self.fs.write(fh, data, 0)
            self.fs.flush(fh)
            return written
        finally:
            self.fs.release(fh)

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
        return pick(self.pairs, index, want)

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

    @rule(path=LISTED)
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

    @rule(path=LISTED)
    def read_folder_in_order(self, path: str) -> None:
        """A program reading a folder's files one after the other: the mount fetches the
        next ones ahead, in the background, while later steps change the namespace."""
        if not self.is_dir(path):
            return
        for name in sorted(os.listdir(self.at(path))):
            child = f"{path.rstrip('/')}/{name}"
            if self.is_file(child):
                assert self._content(child) == Path(self.at(child)).read_bytes(), child

    def _content(self, path: str) -> bytes:
        fh = self.fs.open(path, os.O_RDONLY)
        try:
            return self.fs.read(fh, 1 << 20, 0)
        finally:
            self.fs.release(fh)

    # -- the world outside -------------------------------------------------------------------

    @precondition(lambda self: self.storage.remounts is None
                  or self.remounts < self.storage.remounts)
    @rule()
    def remount(self) -> None:
        self.remounts += 1
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
        self._before_the_other_client()
        self.outside.put(self.prefix + path[1:], data)
        Path(self.at(path)).write_bytes(data)
        self.clock.advance(CACHE_TTL + 1)

    @precondition(lambda self: not self.pairs)
    @rule(path=PATHS)
    def delete_behind_its_back(self, path: str) -> None:
        if not self.is_file(path):
            return
        self._before_the_other_client()
        self.outside.delete(self.prefix + path[1:])
        os.unlink(self.at(path))
        self.clock.advance(CACHE_TTL + 1)

    def _before_the_other_client(self) -> None:
        """The mount's unlinks reach the bucket before the other client's change (they are
        batched: ``fsyncdir`` is how a program waits for them, deletes.py), and no lookup
        of this mount is under way (fetches ahead run in the background: an answer
        learned after the change would be counted fresh from then, siblings.py)."""
        self.fs.fsyncdir("/")
        self.fs.namespace.ahead.settle()

    @invariant()
    def handles_agree_on_size(self) -> None:
        for pair in self.pairs:
            assert self.fs.getattr("", pair.fh).size == os.fstat(pair.local_fd).st_size

    def compare_trees(self) -> None:
        """Every folder, file and byte is the same in both worlds."""
        for path, dirs, files in local_tree(self.local):
            listed = [name for name, _ in self.fs.readdir(path)[2:]]
            assert sorted(listed) == sorted(dirs + files), path
            for name in files:
                child = f"{path.rstrip('/')}/{name}"
                assert self._content(child) == Path(self.at(child)).read_bytes(), child


@pytest.fixture
def model_work(tmp_path: Path) -> Iterator[Path]:
    """Where the examples' local trees and staging folders go: in memory (/dev/shm) where
    the machine has it. Each mount opens a journal (SQLite, synced to disk) and removes it
    at shutdown: on a disk that costs more than all of an example's steps on the memstore
    (200 examples: 43 s, 15 s in memory)."""
    if not (TMPFS.is_dir() and os.access(TMPFS, os.W_OK | os.X_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="qarnotfs-model-", dir=TMPFS) as folder:
        yield Path(folder)


@pytest.fixture(params=[
    # A step takes about 4 ms on a busy machine; shrinking a failure takes longer.
    # No server: run once per suite (the rgw pass would repeat it identically).
    pytest.param("memstore", marks=[pytest.mark.moto_only, pytest.mark.timeout(
        120 + MEMSTORE_EXAMPLES * MEMSTORE_STEPS // 100)]),
    "server",
])
def model_storage(request: pytest.FixtureRequest) -> ModelStorage:
    """The in-memory store (a new one per example), or the test server's bucket."""
    if request.param == "memstore":
        def new_store() -> tuple[Storage, Outside]:
            store = MemStore("model")
            return store, store
        return ModelStorage(new_store, MEMSTORE_EXAMPLES, MEMSTORE_STEPS, remounts=1)
    bucket = request.getfixturevalue("bucket")
    other = ServerClient(request.getfixturevalue("s3_client"),
                         request.getfixturevalue("bucket_name"))
    return ModelStorage(lambda: (bucket, other), SERVER_EXAMPLES, SERVER_STEPS)


def run_core_model(model: type[CoreModel], storage: ModelStorage, clock: FakeClock,
                   work: Path, examples: int) -> None:
    """Run ``model`` on ``storage`` for ``examples`` examples (checked to have run)."""
    class Machine(model):  # type: ignore[valid-type, misc]
        counter = itertools.count()

    Machine.storage = storage
    Machine.clock = clock
    Machine.work = work
    run_model(Machine, examples, storage.steps)
    ran = next(Machine.counter)
    assert ran >= examples, f"Hypothesis stopped after {ran} examples"


def test_core_behaves_like_a_local_folder(model_storage: ModelStorage, clock: FakeClock,
                                          model_work: Path) -> None:
    run_core_model(CoreModel, model_storage, clock, model_work, model_storage.examples)


SIBLINGS = st.sampled_from([f"/a/f{index}" for index in range(8)] + ["/f0", "/f1", "/f2"])


class ReadAheadModel(CoreModel):
    """The core model with folders of more files, read in order (so the mount fetches the
    next ones ahead, siblings.py) while these files are renamed, unlinked, truncated,
    rewritten and replaced behind the mount's back, and their folder renamed."""

    @initialize()
    def siblings(self) -> None:
        if not self.is_dir("/a"):
            self.mkdir("/a")
        for index in range(8):
            self._write_whole(f"/a/f{index}", f"file {index}\n".encode() * (index + 1))
        for index in range(3):
            self._write_whole(f"/f{index}", f"top {index}\n".encode())

    @rule(path=SIBLINGS)
    def unlink_sibling(self, path: str) -> None:
        self.unlink(path)

    @rule(old=SIBLINGS, new=st.one_of(SIBLINGS, PATHS), noreplace=st.booleans())
    def rename_sibling(self, old: str, new: str, noreplace: bool) -> None:
        self.rename(old, new, noreplace)

    @rule(path=SIBLINGS, length=OFFSETS)
    def truncate_sibling(self, path: str, length: int) -> None:
        self.truncate(path, length)

    @rule(path=SIBLINGS, mode=OPEN_MODES)
    def open_sibling(self, path: str, mode: tuple[str, int]) -> None:
        self.open(path, mode)

    @precondition(lambda self: not self.pairs)
    @rule(path=SIBLINGS, data=DATA)
    def put_sibling_behind_its_back(self, path: str, data: bytes) -> None:
        self.put_behind_its_back(path, data)


def test_reads_ahead_follow_every_namespace_change(model_storage: ModelStorage,
                                                   clock: FakeClock,
                                                   model_work: Path) -> None:
    run_core_model(ReadAheadModel, model_storage, clock, model_work,
                   max(1, model_storage.examples // 4))
