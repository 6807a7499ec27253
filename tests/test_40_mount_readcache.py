"""The read cache through the kernel: what one mount read, the next mount (or another
mount on the machine sharing the cache folder) reads again with no GET for its bytes;
an object replaced behind the mounts is read anew. GETs are counted by a proxy in front
of the server (tests/faultproxy.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mounting import mounted, run, wait_until

from qarnotfs.fs.readcache import INDEX_NAME

if TYPE_CHECKING:
    from faultproxy import FaultProxy

pytestmark = [pytest.mark.mount, pytest.mark.timeout(300)]

MIB = 1 << 20


def digest_through(path: Path) -> str:
    """sha256sum of ``path``, as a user would check it."""
    return run(["sha256sum", path]).stdout.split()[0]


def cached_bytes(base: Path) -> int:
    """What the read cache folders under ``base`` hold, by their shared index."""
    total = 0
    for index in base.glob(f"*/{INDEX_NAME}"):
        with contextlib.closing(sqlite3.connect(index, timeout=30)) as db:
            total += db.execute("SELECT bytes FROM total").fetchone()[0]
    return total


def test_a_file_read_before_a_remount_is_read_again_without_a_get(
        s3_env: dict[str, str], bucket_name: str, s3_client: Any, tmp_path: Path,
        proxy: FaultProxy) -> None:
    data = os.urandom(6 * MIB + 4321)
    s3_client.put_object(Bucket=bucket_name, Key="data/big.bin", Body=data)
    expected = hashlib.sha256(data).hexdigest()
    env = {**s3_env, "QARNOT_STORAGE_URL": proxy.url}
    get_big = rf"^GET /{bucket_name}/data/big\.bin"
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "work") as mount:
        assert digest_through(mount.mountpoint / "data" / "big.bin") == expected
        first = proxy.count("forward", get_big)
        assert first > 0
        mount.remount()  # a new process: nothing in the kernel's page cache either
        assert digest_through(mount.mountpoint / "data" / "big.bin") == expected
        # The lookup's GET of the first 64 KiB (it tells the metadata) and the open's
        # check, a 304 since the cache holds the first block: no GET of a block.
        assert proxy.count("forward", get_big) <= first + 2
        with open(mount.mountpoint / "data" / "big.bin", "rb") as reader:
            assert os.pread(reader.fileno(), 1000, 5 * MIB + 17) == data[5 * MIB + 17:][:1000]
        assert proxy.count("forward", get_big) <= first + 3, "the open's check only"

        blocks = mount.read_cache_dir
        assert all(p.stat().st_mode & 0o077 == 0 for p in [blocks, *blocks.rglob("*")])

        new = os.urandom(len(data))  # replaced behind the mount: new ETag, same size
        s3_client.put_object(Bucket=bucket_name, Key="data/big.bin", Body=new)
        mount.remount()
        assert digest_through(mount.mountpoint / "data" / "big.bin") == \
            hashlib.sha256(new).hexdigest()
        assert proxy.count("forward", get_big) > first


def test_two_mounts_share_one_read_cache(s3_env: dict[str, str], bucket_name: str,
                                         s3_client: Any, tmp_path: Path,
                                         proxy: FaultProxy) -> None:
    data = os.urandom(3 * MIB)
    s3_client.put_object(Bucket=bucket_name, Key="shared.bin", Body=data)
    env = {**s3_env, "QARNOT_STORAGE_URL": proxy.url}
    shared = ["--read-cache-dir", os.fspath(tmp_path / "blocks")]
    get_shared = rf"^GET /{bucket_name}/shared\.bin"
    with mounted(bucket_name, tmp_path / "one", env, tmp_path / "w1", *shared) as one, \
            mounted(bucket_name, tmp_path / "two", env, tmp_path / "w2", *shared) as two:
        assert (one.mountpoint / "shared.bin").read_bytes() == data
        sent = proxy.count("forward", get_shared)
        assert sent > 0
        wait_until(lambda: cached_bytes(tmp_path / "blocks") >= len(data),
                   message="the first mount's cache writer")
        assert (two.mountpoint / "shared.bin").read_bytes() == data
        assert proxy.count("forward", get_shared) <= sent + 2, \
            "the second mount's lookup (64 KiB) and open check (a 304), no block"
