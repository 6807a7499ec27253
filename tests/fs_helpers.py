"""Helpers for the filesystem-core tests: factories of Filesystem instances on one bucket.

``make_fs`` builds them on the test server's bucket, ``make_memfs`` on an in-memory store
(``memstore``, a :class:`memstore.MemStore` with fault hooks). Each instance gets its own
private staging folder under the test's tmp_path; all are shut down at the end of the test
("remount" = shut one down and make a new one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakeclock import FakeClock
from memstore import MemStore

from qarnotfs.bucket import Bucket
from qarnotfs.connection import Connection
from qarnotfs.fs.core import Filesystem, FsOptions
from qarnotfs.fs.storage import Storage

MakeFs = Callable[..., Filesystem]


def connect(server: object) -> Connection:
    return Connection(storage_url=server.endpoint_url,  # type: ignore[attr-defined]
                      access_key=server.access_key,  # type: ignore[attr-defined]
                      secret_key=server.secret_key)  # type: ignore[attr-defined]


@pytest.fixture
def connection(s3_server: object) -> Iterator[Connection]:
    with connect(s3_server) as conn:
        yield conn


@pytest.fixture
def bucket(connection: Connection, bucket_name: str) -> Bucket:
    return Bucket(connection, bucket_name, create=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _filesystems(storage: Storage, tmp_path: Path, clock: FakeClock) -> Iterator[MakeFs]:
    made: list[Filesystem] = []
    base = FsOptions(staging_dir=tmp_path / "staging", read_cache_dir=tmp_path / "blocks",
                     clock=clock, uid=os.getuid(),
                     gid=os.getgid(), umask=0o022)

    def make(**changes: object) -> Filesystem:
        fs = Filesystem(storage, replace(base, **changes))  # type: ignore[arg-type]
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.shutdown()


@pytest.fixture
def make_fs(bucket: Bucket, tmp_path: Path, clock: FakeClock) -> Iterator[MakeFs]:
    """make_fs(**options) -> a new Filesystem on the test's bucket."""
    yield from _filesystems(bucket, tmp_path, clock)


@pytest.fixture
def memstore() -> MemStore:
    """An empty in-memory bucket (tests/memstore.py)."""
    return MemStore("memstore")


@pytest.fixture
def make_memfs(memstore: MemStore, tmp_path: Path, clock: FakeClock) -> Iterator[MakeFs]:
    """make_memfs(**options) -> a new Filesystem on the test's ``memstore``."""
    yield from _filesystems(memstore, tmp_path, clock)
