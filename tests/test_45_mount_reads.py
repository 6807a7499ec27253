"""Reads through the kernel (issue #11): what a cold read costs in requests, and
close-to-open consistency with other clients and another qarnotfs mount, driven by
ordinary tools (``cat``, ``stat``) on a real mount. Requests are counted by a proxy in
front of the server, not timed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from mounting import mounted

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]


def cat(*paths: Path) -> bytes:
    return subprocess.run(["cat", *map(os.fspath, paths)], check=True,
                          capture_output=True).stdout


def drop_kernel_caches() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@pytest.mark.parametrize("lookups", ["exact", "listed"])
def test_cold_small_files_cost_one_get_each(tmp_path: Path, bucket_name: str,
                                            s3_env: dict[str, str], s3_client: Any,
                                            proxy: FaultProxy, lookups: str) -> None:
    bodies = {f"data/f{index:02d}": os.urandom(4096) for index in range(20)}
    for key, data in bodies.items():
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=data)
    env = {**s3_env, "QARNOT_STORAGE_URL": proxy.url}
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "w",
                 "-o", f"lookups={lookups}") as mount:
        drop_kernel_caches()
        before = len(proxy.seen)
        for key, data in bodies.items():
            assert cat(mount.mountpoint / key) == data
        sent = [f"{seen.method} {seen.target}" for seen in proxy.seen[before:]]
        gets = [line for line in sent if line.startswith(f"GET /{bucket_name}/data/")]
        lists = [line for line in sent if "list-type" in line]
        heads = [line for line in sent if line.startswith(f"HEAD /{bucket_name}/data/")]
        assert (len(gets), heads) == (20, []), f"one GET per file (as boto3): {sent}"
        # listed: the folder's listing; exact: the folder rule for "data", whose GET missed,
        # and its names, listed to fetch the files ahead as they are read in order.
        assert len(lists) == (2 if lookups == "exact" else 1), f"LISTs: {sent}"


def test_a_file_replaced_elsewhere_is_read_whole_at_the_next_open(
        tmp_path: Path, bucket_name: str, s3_env: dict[str, str], s3_client: Any) -> None:
    """Within the cache's 60 s the mount knows the old size; an open must still read all
    of the new object, longer or shorter, never the new bytes cut at the old size."""
    s3_client.put_object(Bucket=bucket_name, Key="doc", Body=b"short\n")
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        doc = mount.mountpoint / "doc"
        assert cat(doc) == b"short\n"
        assert doc.stat().st_size == 6
        longer = os.urandom(200_000)
        s3_client.put_object(Bucket=bucket_name, Key="doc", Body=longer)
        assert cat(doc) == longer
        with doc.open("rb") as source:  # a second reader of the same version
            assert source.read() == longer
        s3_client.put_object(Bucket=bucket_name, Key="doc", Body=b"tiny")
        assert cat(doc) == b"tiny"
        s3_client.delete_object(Bucket=bucket_name, Key="doc")
        result = subprocess.run(["cat", os.fspath(doc)], check=False, capture_output=True)
        assert result.returncode != 0 and b"No such file" in result.stderr
        mount.assert_clean_log()


def test_two_mounts_see_each_others_closes(tmp_path: Path, bucket_name: str,
                                           s3_env: dict[str, str], s3_client: Any) -> None:
    with mounted(bucket_name, tmp_path / "a", s3_env, tmp_path / "wa") as first, \
            mounted(bucket_name, tmp_path / "b", s3_env, tmp_path / "wb") as second:
        (first.mountpoint / "shared").write_bytes(b"v1")
        assert cat(second.mountpoint / "shared") == b"v1"
        for version in (b"version two, longer", b"3"):
            (first.mountpoint / "shared").write_bytes(version)
            assert cat(second.mountpoint / "shared") == version, \
                "a close in one mount is seen by the next open in the other"
        drop_kernel_caches()
        second.remount()
        assert cat(second.mountpoint / "shared") == b"3"
        assert s3_client.get_object(Bucket=bucket_name, Key="shared")["Body"].read() == b"3"


def test_a_big_file_is_read_in_requests_of_a_mib(tmp_path: Path, bucket_name: str,
                                                  s3_env: dict[str, str],
                                                  s3_client: Any) -> None:
    """The mount raises its read-ahead (readahead.py; the tests run as root), so the
    kernel asks 1 MiB per read request instead of 128 KiB: 8 requests for 8 MiB, not 64.
    The mountpoint's name has a space, which /proc/self/mountinfo escapes."""
    data = os.urandom(8 << 20)
    s3_client.put_object(Bucket=bucket_name, Key="big.bin", Body=data)
    with mounted(bucket_name, tmp_path / "mount point", s3_env, tmp_path / "w",
                 "--log-level", "debug") as mount:
        device = os.stat(mount.mountpoint).st_dev
        setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        assert setting.read_text().strip() == "1024"
        drop_kernel_caches()
        assert cat(mount.mountpoint / "big.bin") == data
        reads = [line for line in mount.log_text().splitlines()
                 if "fuse_ops: read('/big.bin'" in line]
    assert 8 <= len(reads) <= 12, f"{len(reads)} read requests for 8 MiB"


@pytest.mark.parametrize("listed_first", [False, True], ids=["by name", "after ls"])
def test_files_read_in_order_are_fetched_ahead_each_once(
        tmp_path: Path, bucket_name: str, s3_env: dict[str, str], s3_client: Any,
        proxy: FaultProxy, listed_first: bool) -> None:
    """``cat`` of a folder's files one after the other (siblings.py): the next files are
    fetched before their ``cat`` starts, and each file is still one GET (a lookup of a
    file being fetched ahead waits for that GET instead of sending its own)."""
    bodies = {f"set/x{index:02d}": os.urandom(3000 + index) for index in range(30)}
    for key, data in bodies.items():
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=data)
    env = {**s3_env, "QARNOTFS_STORAGE_URL": proxy.url, "QARNOT_STORAGE_URL": proxy.url}
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "w") as mount:
        if listed_first:
            assert sorted(os.listdir(mount.mountpoint / "set")) == [k[4:] for k in bodies]
        drop_kernel_caches()
        before = len(proxy.seen)
        early = 0
        for key, data in bodies.items():
            target = f"GET /{bucket_name}/{key}"
            early += any(s.target.startswith(target[4:]) and s.method == "GET"
                         for s in proxy.seen[before:])
            assert cat(mount.mountpoint / key) == data
        sent = [f"{seen.method} {seen.target}" for seen in proxy.seen[before:]]
    gets = [line.split("?")[0] for line in sent if line.startswith(f"GET /{bucket_name}/set/")]
    assert sorted(gets) == sorted(f"GET /{bucket_name}/{key}" for key in bodies), sent
    assert early >= 10, f"only {early} of 30 files were fetched before their cat"
