"""The serving process's memory while a large file goes in and out through a live mount,
and while 32 threads read one large file at random offsets.

Its peak resident size (VmHWM) must stay under 200 MB whatever the size of the files and
however many readers: parts in flight are bounded by the uploads' pool, reads by the
mount's read budget (shared by every handle). The files here are larger than that bound,
so memory growing with the file, or with the readers, would show.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mounting import mounted, run, storage_environment

pytestmark = [pytest.mark.mount, pytest.mark.timeout(300)]

MIB = 1 << 20
FILE_SIZE = 512 * MIB
RANDOM_FILE_SIZE = 64 * MIB
MEMORY_BOUND = 200 * 1000 * 1000


def peak_memory(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def write_source(path: Path, size: int) -> None:
    """``size`` bytes that do not repeat within a part (cheap to make: a hash chain)."""
    block = hashlib.sha512(b"qarnotfs").digest() * (MIB // 64)
    with open(path, "wb") as out:
        for number in range(size // MIB):
            out.write(hashlib.sha512(number.to_bytes(8, "big")).digest() + block[64:])


def test_peak_memory_stays_bounded_while_a_large_file_is_copied_in_and_out(
        s3_server: Any, bucket_name: str, s3_client: Any, tmp_path: Path) -> None:
    source, copy_back = tmp_path / "source.bin", tmp_path / "back.bin"
    write_source(source, FILE_SIZE)
    with mounted(bucket_name, tmp_path / "mnt", storage_environment(s3_server),
                 tmp_path / "work") as mount:
        run(["cp", source, mount.mountpoint / "big.bin"])
        assert mount.pid is not None
        writing = peak_memory(mount.pid)
        head = s3_client.head_object(Bucket=bucket_name, Key="big.bin")
        assert head["ContentLength"] == FILE_SIZE

        mount.remount()  # a new process: nothing of the file in the kernel's cache either
        run(["cp", mount.mountpoint / "big.bin", copy_back])
        assert mount.pid is not None
        reading = peak_memory(mount.pid)
    assert filecmp.cmp(source, copy_back, shallow=False)
    assert writing < MEMORY_BOUND, f"{writing / MIB:.0f} MiB while writing {FILE_SIZE // MIB} MiB"
    assert reading < MEMORY_BOUND, f"{reading / MIB:.0f} MiB while reading {FILE_SIZE // MIB} MiB"


RANDOM_READERS = """
import os, random, sys, threading
path, threads, reads, separate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
shared = os.open(path, os.O_RDONLY)
size = os.fstat(shared).st_size
def reader(seed):
    fd = os.open(path, os.O_RDONLY) if separate == "1" else shared
    chance = random.Random(seed)
    for _ in range(reads):
        offset = chance.randrange(0, size - (1 << 20))
        assert len(os.pread(fd, 1 << 20, offset)) == 1 << 20
    if fd != shared:
        os.close(fd)
workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
"""


@pytest.mark.parametrize("handles", ["one handle", "32 handles"])
def test_peak_memory_stays_bounded_while_32_threads_read_at_random(
        s3_server: Any, bucket_name: str, s3_client: Any, tmp_path: Path,
        handles: str) -> None:
    source = tmp_path / "source.bin"
    write_source(source, RANDOM_FILE_SIZE)
    s3_client.upload_file(os.fspath(source), bucket_name, "big.bin")
    with mounted(bucket_name, tmp_path / "mnt", storage_environment(s3_server),
                 tmp_path / "work", "--read-cache-size", "0") as mount:
        run([sys.executable, "-c", RANDOM_READERS, mount.mountpoint / "big.bin", "32", "4",
             "1" if handles == "32 handles" else "0"], timeout=240)
        assert mount.pid is not None
        reading = peak_memory(mount.pid)
    assert reading < MEMORY_BOUND, f"{reading / MIB:.0f} MiB with 32 threads ({handles})"


def minor_faults(pid: int) -> int:
    """Page faults the process took that needed no disk (fresh memory touched)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt, field 10 of stat(5)


def read_uncached(path: Path) -> bytes:
    """Read ``path`` whole after dropping its pages from the kernel's cache."""
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return handle.read()


def test_a_big_read_reuses_the_memory_of_the_last_one(
        s3_server: Any, bucket_name: str, s3_client: Any, tmp_path: Path) -> None:
    """The buffers of a sequential read come from memory the process already has (a
    piece's chunks, the replies to the kernel: reader.py, allocator.py); when pieces were
    one buffer each, or buffers of 256 KiB had their own mapping, every 4 KiB read was at
    least one page fault."""
    source = tmp_path / "source.bin"
    write_source(source, RANDOM_FILE_SIZE)
    s3_client.upload_file(os.fspath(source), bucket_name, "big.bin")
    expected = source.read_bytes()
    with mounted(bucket_name, tmp_path / "mnt", storage_environment(s3_server),
                 tmp_path / "work", "--read-cache-size", "0") as mount:
        assert mount.pid is not None
        assert read_uncached(mount.mountpoint / "big.bin") == expected  # the heap grows
        before = minor_faults(mount.pid)
        assert read_uncached(mount.mountpoint / "big.bin") == expected
        faults = minor_faults(mount.pid) - before
    pages = RANDOM_FILE_SIZE // os.sysconf("SC_PAGE_SIZE")
    assert faults < pages // 2, f"{faults} page faults to read {pages} pages a second time"
