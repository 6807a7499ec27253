"""Concurrency through the kernel mount: threads and processes reading, writing, appending,
renaming, deleting and listing at once, on their own files and on shared ones.

Bounded stress: ``WORKERS`` workers (half threads of this process, half separate processes)
run random operations for ``SECONDS`` seconds each, then everything is checked: no worker
saw corrupt data or an unexpected error, no call hung (every process has a timeout), the
mount process is alive, the unmount is clean (nothing logged as an error), and the bucket
holds exactly what the workers wrote.

Shared files and what may be asserted about them:

* ``hot/shared``: every writer fills whole 4 KiB blocks with its own byte (no truncation).
  Concurrent writes may interleave block by block (as on any filesystem), so a reader may
  see any mix of writers' bytes but nothing else; once all writers are done, every block
  is uniform and the bucket holds the same bytes as the mount.
* ``contest/*``: one file that every worker renames to a name of its own; exactly one name
  exists at the end, with the original content (renames never copy it twice or lose it).

Run as a script (``python test_70_concurrency.py ROOT ID SECONDS``) it is one worker
process, printing its report as JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BLOCK = 4096
HOT_BLOCKS = 64
WORKERS = 8
SECONDS = 8.0
TOKEN = b"the one and only token\n" * 1000
OWN_NAME = re.compile(r"^w\d+-\d+(\.r)?$")
CONTEST_NAME = re.compile(r"^(token|held-\d+-\d+)$")


def content(worker: int, slot: int, version: int, size: int) -> bytes:
    seed = hashlib.sha256(f"{worker}/{slot}/{version}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def hot_byte(worker: int) -> int:
    return 0x41 + worker  # 'A', 'B', ...: never 0, never a byte of another worker


class Worker:
    """One worker's random operations and its record of what its own files must hold."""

    def __init__(self, root: Path, worker: int, seconds: float) -> None:
        self.root = root
        self.id = worker
        self.deadline = time.monotonic() + seconds
        self.random = random.Random(worker * 7919)
        self.expected: dict[str, bytes] = {}  # own relative path -> content
        self.errors: list[str] = []
        self.ops = 0
        self.versions = 0
        self.renames = 0

    def run(self) -> dict[str, Any]:
        operations = [self.write, self.append, self.verify, self.rename, self.delete,
                      self.listing, self.hot_write, self.hot_read, self.contest]
        weights = [4, 2, 4, 2, 1, 2, 2, 3, 2]
        while time.monotonic() < self.deadline and len(self.errors) < 20:
            operation = self.random.choices(operations, weights)[0]
            try:
                operation()
            except OSError as error:
                self.errors.append(f"{operation.__name__}: {error!r}")
            self.ops += 1
        for relative, data in self.expected.items():  # a last full check
            self.check(relative, data)
        return {"errors": self.errors, "ops": self.ops, "renames": self.renames,
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in self.expected.items()}}

    # -- own files ----------------------------------------------------------------------

    def own(self) -> str | None:
        return self.random.choice(sorted(self.expected)) if self.expected else None

    def check(self, relative: str, data: bytes) -> None:
        got = (self.root / relative).read_bytes()
        if got != data:
            self.errors.append(f"{relative}: {len(got)} bytes read, {len(data)} expected, "
                               f"equal={got == data}")

    def write(self) -> None:
        slot = self.random.randrange(3)
        relative = f"own/w{self.id}-{slot}"
        for old in (relative, relative + ".r"):
            self.expected.pop(old, None)
            if (self.root / old).exists():
                os.unlink(self.root / old)
        self.versions += 1
        data = content(self.id, slot, self.versions, self.random.randrange(1, 300_000))
        (self.root / relative).write_bytes(data)
        self.expected[relative] = data
        self.check(relative, data)

    def append(self) -> None:
        relative = self.own()
        if relative is None:
            return
        extra = content(self.id, 99, self.random.randrange(10**6), self.random.randrange(1, 9000))
        with open(self.root / relative, "ab") as handle:
            handle.write(extra)
        self.expected[relative] += extra
        self.check(relative, self.expected[relative])

    def verify(self) -> None:
        relative = self.own()
        if relative is not None:
            self.check(relative, self.expected[relative])

    def rename(self) -> None:
        relative = self.own()
        if relative is None:
            return
        target = relative[:-2] if relative.endswith(".r") else relative + ".r"
        os.rename(self.root / relative, self.root / target)
        self.expected[target] = self.expected.pop(relative)
        self.renames += 1
        self.check(target, self.expected[target])
        if (self.root / relative).exists():
            self.errors.append(f"{relative} still exists after its rename")

    def delete(self) -> None:
        relative = self.own()
        if relative is None:
            return
        os.unlink(self.root / relative)
        del self.expected[relative]
        if (self.root / relative).exists():
            self.errors.append(f"{relative} still exists after unlink")

    def listing(self) -> None:
        names = os.listdir(self.root / "own")
        strange = [n for n in names if not OWN_NAME.match(n)]
        if strange:
            self.errors.append(f"strange names listed: {strange}")
        mine = {Path(r).name for r in self.expected}
        missing = mine - set(names)
        if missing:
            self.errors.append(f"listing misses own files {sorted(missing)}")

    # -- shared files -------------------------------------------------------------------

    def hot_write(self) -> None:
        block = bytes([hot_byte(self.id)]) * BLOCK
        order = list(range(HOT_BLOCKS))
        self.random.shuffle(order)
        fd = os.open(self.root / "hot" / "shared", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for index in order:
                os.pwrite(fd, block, index * BLOCK)
        finally:
            os.close(fd)

    def hot_read(self) -> None:
        try:
            data = (self.root / "hot" / "shared").read_bytes()
        except FileNotFoundError:
            return  # nobody has written it yet
        allowed = {0, *(hot_byte(w) for w in range(WORKERS))}
        if len(data) > HOT_BLOCKS * BLOCK or not set(data) <= allowed:
            self.errors.append(f"hot/shared corrupt: {len(data)} bytes, "
                               f"bytes {sorted(set(data) - allowed)[:5]}")

    def contest(self) -> None:
        folder = self.root / "contest"
        names = os.listdir(folder)
        if not names or any(not CONTEST_NAME.match(n) for n in names):
            self.errors.append(f"contest holds {names}")
            return
        self.renames += 1
        mine = folder / f"held-{self.id}-{self.renames}"
        try:
            os.rename(folder / names[0], mine)
            data = mine.read_bytes()
        except OSError as error:
            if error.errno == errno.ENOENT:
                return  # another worker took it first: expected
            raise
        if data != TOKEN:
            self.errors.append(f"the token has {len(data)} bytes after a rename")


def run_workers(root: Path, first_process: int, seconds: float = SECONDS
                ) -> list[dict[str, Any]]:
    """Half the workers as threads here, half as processes; every report."""
    reports: list[dict[str, Any]] = [{} for _ in range(WORKERS)]

    def in_thread(worker: int) -> None:
        try:
            reports[worker] = Worker(root, worker, seconds).run()
        except Exception as error:  # reported, so the test fails with it
            reports[worker] = {"errors": [f"crashed: {error!r}"], "files": {}, "ops": 0}

    threads = [threading.Thread(target=in_thread, args=(w,)) for w in range(first_process)]
    processes = {w: subprocess.Popen([sys.executable, __file__, os.fspath(root), str(w),
                                      str(seconds)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
                 for w in range(first_process, WORKERS)}
    for thread in threads:
        thread.start()
    for worker, process in processes.items():
        try:
            out, err = process.communicate(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            reports[worker] = {"errors": ["hung"], "files": {}, "ops": 0}
            continue
        reports[worker] = json.loads(out) if process.returncode == 0 else \
            {"errors": [f"exit {process.returncode}: {err[-2000:]}"], "files": {}, "ops": 0}
    for thread in threads:
        thread.join(timeout=seconds + 90)
        if thread.is_alive():
            raise AssertionError("a worker thread hung")
    return reports


if __name__ == "__main__":
    report = Worker(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])).run()
    print(json.dumps(report))
    sys.exit(0)


# == the test ==============================================================================

import pytest  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from mounting import Mount, bucket_bytes, bucket_keys, mounted  # noqa: E402

from qarnotfs.fs import status  # noqa: E402


def check_outcome(reports: list[dict[str, Any]], hot: bytes, contest: list[str],
                  client: Any, bucket: str) -> int:
    """Assert the final state (see the module docstring); the number of operations run."""
    ops = sum(r["ops"] for r in reports)
    assert all(r["ops"] > 0 for r in reports)
    # hot/shared: complete, every block from a single writer, same bytes in the bucket.
    assert len(hot) == HOT_BLOCKS * BLOCK
    blocks = [hot[i:i + BLOCK] for i in range(0, len(hot), BLOCK)]
    assert all(len(set(block)) == 1 and block[0] != 0 for block in blocks)
    assert bucket_bytes(client, bucket, "hot/shared") == hot
    # contest: exactly one name, with the token.
    assert len(contest) == 1
    assert bucket_bytes(client, bucket, f"contest/{contest[0]}") == TOKEN
    # own files: the bucket holds exactly what each worker last wrote.
    expected = {k: v for r in reports for k, v in r["files"].items()}
    keys = {k for k in bucket_keys(client, bucket, "own/") if k != "own/"}
    assert keys == set(expected)
    for key, digest in expected.items():
        assert hashlib.sha256(bucket_bytes(client, bucket, key)).hexdigest() == digest
    return ops


def stress(mount: Mount, seconds: float) -> tuple[list[dict[str, Any]], bytes, list[str]]:
    """Run the workers on a fresh mount; their reports, hot/shared and contest/ at the end."""
    root = mount.mountpoint
    for folder in ("own", "hot", "contest"):
        (root / folder).mkdir()
    (root / "contest" / "token").write_bytes(TOKEN)
    reports = run_workers(root, first_process=WORKERS // 2, seconds=seconds)
    errors = {w: r["errors"] for w, r in enumerate(reports) if r.get("errors")}
    assert errors == {}, f"{errors}\nlog:\n{mount.log_text()[-4000:]}"
    assert mount.pid is not None and status.process_alive(mount.pid)
    return reports, (root / "hot" / "shared").read_bytes(), os.listdir(root / "contest")


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_many_workers_at_once_corrupt_nothing(s3_env: dict[str, str], bucket_name: str,
                                              s3_client: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        reports, hot, contest = stress(mount, SECONDS)
        mount.stop()  # waits for pending uploads; asserts a log without errors
    ops = check_outcome(reports, hot, contest, s3_client, bucket_name)
    print(f"\n{WORKERS} workers, {ops} operations in {time.monotonic() - started:.1f} s")
    assert ops > 20 * WORKERS, "too few operations to call this a stress test"


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_many_workers_with_transient_storage_errors_corrupt_nothing(
        s3_server: Any, s3_env: dict[str, str], bucket_name: str, s3_client: Any,
        tmp_path: Path) -> None:
    """The same stress while one request in five gets a 500 or is cut: retried, unseen."""
    env = {**s3_env, "QARNOTFS_RETRY_COUNT": "8"}
    with FaultProxy(s3_server.endpoint_url, lifetime=200) as proxy:
        env["QARNOT_STORAGE_URL"] = proxy.url
        with mounted(bucket_name, tmp_path / "mnt", env, tmp_path / "w") as mount:
            proxy.inject("status", every=5, times=60, status=500, code="InternalError")
            proxy.inject("cut", match=r"^PUT ", every=7, times=10, after_bytes=1000)
            reports, hot, contest = stress(mount, SECONDS / 2)
            mount.stop()
        injected = proxy.count("status") + proxy.count("cut")
    check_outcome(reports, hot, contest, s3_client, bucket_name)
    assert injected >= 20, f"only {injected} faults were injected"
