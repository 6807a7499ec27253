"""Helpers for the filesystem-core tests: a factory of Filesystem instances on one bucket.

Each instance gets its own private staging folder under the test's tmp_path; all are shut
down at the end of the test ("remount" = shut one down and make a new one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakeclock import FakeClock

from qarnotfs.bucket import Bucket
from qarnotfs.connection import Connection
from qarnotfs.fs.core import Filesystem, FsOptions

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


@pytest.fixture
def make_fs(bucket: Bucket, tmp_path: Path, clock: FakeClock) -> Iterator[MakeFs]:
    """make_fs(**options) -> a new Filesystem on the test's bucket."""
    made: list[Filesystem] = []
    base = FsOptions(staging_dir=tmp_path / "staging", clock=clock, uid=os.getuid(),
                     gid=os.getgid(), umask=0o022)

    def make(**changes: object) -> Filesystem:
        fs = Filesystem(bucket, replace(base, **changes))  # type: ignore[arg-type]
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.shutdown()
