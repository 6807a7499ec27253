"""Write-back through the kernel (issue #10): an editor's atomic save racing a reader, and a
hung upload that must not stall anything else, on a real mount driven by ordinary calls.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from mounting import Mount, bucket_bytes, mounted, wait_until

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

SAVES = 60
HELD = 30.0
"""Seconds the proxy holds the hung upload's PUT."""
UNRELATED_DEADLINE = 10.0
"""What the unrelated operations get (they take well under a second)."""


@pytest.fixture
def mount(tmp_path: Path, bucket_name: str, s3_env: dict[str, str]) -> Iterator[Mount]:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w",
                 *os.environ.get("QARNOTFS_TEST_MOUNT_OPTIONS", "").split()) as started:
        yield started


def test_atomic_saves_never_make_a_reader_see_enoent(mount: Mount, bucket_name: str,
                                                      s3_client: Any) -> None:
    """Write a temporary file, rename it over ``doc`` (what editors do), while another
    thread opens and reads ``doc`` in a loop: on a local folder the reader always opens
    one whole version; so must it here."""
    doc = mount.mountpoint / "doc"
    doc.write_bytes(b"version -1\n")
    versions = {f"version {n}\n".encode() for n in range(-1, SAVES)}
    done = threading.Event()
    problems: list[str] = []
    opened = [0]

    def reader() -> None:
        while not done.is_set():
            try:
                with open(doc, "rb") as source:
                    seen = source.read()
            except OSError as error:
                problems.append(f"open/read: {errno.errorcode.get(error.errno or 0)}")
                continue
            opened[0] += 1
            if seen not in versions:
                problems.append(f"read a mix: {seen!r}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for number in range(SAVES):
            temporary = mount.mountpoint / f".doc.tmp{number}"
            temporary.write_bytes(f"version {number}\n".encode())
            os.rename(temporary, doc)
    finally:
        done.set()
        thread.join(60)
    assert opened[0] > 0
    assert problems == [], f"{len(problems)} failures in {opened[0]} reads: {problems[:5]}"
    assert doc.read_bytes() == f"version {SAVES - 1}\n".encode()
    assert bucket_bytes(s3_client, bucket_name, "doc") == f"version {SAVES - 1}\n".encode()
    mount.remount()
    assert doc.read_bytes() == f"version {SAVES - 1}\n".encode()
    assert sorted(os.listdir(mount.mountpoint)) == ["doc"]


def test_a_hung_upload_stalls_only_its_own_file(
        tmp_path: Path, bucket_name: str, s3_env: dict[str, str], s3_client: Any,
        proxy: FaultProxy) -> None:
    env = {**s3_env, "QARNOT_STORAGE_URL": proxy.url}
    with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "w",
                 "--read-timeout", "60") as mount:
        root = mount.mountpoint
        (root / "cached").write_bytes(b"cached")
        assert (root / "cached").read_bytes() == b"cached"
        rule = proxy.inject("delay", match=rf"^PUT /{bucket_name}/stuck", seconds=HELD)
        writer_errors: list[BaseException] = []

        def write_stuck() -> None:
            try:
                (root / "stuck").write_bytes(b"waits for the storage")
            except OSError as error:
                writer_errors.append(error)

        writer = threading.Thread(target=write_stuck, daemon=True)
        writer.start()
        wait_until(lambda: rule.hits > 0, timeout=30, message="the PUT of 'stuck' held")
        # What stalled the whole mount before: a utime of the stuck file itself.
        toucher = threading.Thread(target=os.utime, args=(root / "stuck",), daemon=True)

        def unrelated() -> None:
            assert (root / "cached").read_bytes() == b"cached"
            (root / "other").mkdir()
            (root / "other" / "new").write_bytes(b"new")
            os.chmod(root / "cached", 0o600)
            os.rename(root / "other" / "new", root / "other" / "renamed")
            assert sorted(os.listdir(root / "other")) == ["renamed"]

        worker = threading.Thread(target=unrelated, daemon=True)
        worker.start()
        toucher.start()
        worker.join(UNRELATED_DEADLINE)
        assert not worker.is_alive(), "operations on other files waited for the hung upload"
        assert writer.is_alive(), "the upload is still held by the proxy"
        proxy.clear()
        writer.join(HELD + 60)
        toucher.join(60)
        assert not writer.is_alive() and not toucher.is_alive() and writer_errors == []
        assert bucket_bytes(s3_client, bucket_name, "other/renamed") == b"new"
        assert bucket_bytes(s3_client, bucket_name, "stuck") == b"waits for the storage"
