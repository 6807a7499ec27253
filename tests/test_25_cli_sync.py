"""``qarnotfs sync`` as rclone and aws-cli users expect it, through the console script.

Size and modification time decide by default (nothing is read for a no-op sync: checked
by watching every file the process opens), uploads keep the file's time in the object and
downloads give it back, ``--checksum`` compares content, ``--size-only`` sizes, and
``--transfers``/``--bwlimit`` bound how many files move at once and how fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import (  # noqa: F401 (the fixtures)
    TIMEOUT,
    cli_env_fixture,
    fails,
    keys_in,
    ok,
    on_terminal,
    qarnotfs,
    work_fixture,
)

from qarnotfs.connection import Connection
from qarnotfs.fs.attrs import Attributes, encode_metadata, parse_time
from qarnotfs.transfers import Job, Transfers

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

OLD = 978_307_200  # 2001-01-01T00:00:00Z
MANY = 120

# Runs qarnotfs.cli.main (the console script's entry) in a process that records every file
# it opens (a Python audit hook sees each open(), os.open() included): prints them as JSON
# after the command's own output.
_WATCHED = """
import json, os, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(os.fspath(args[0]))
                 if event == "open" and isinstance(args[0], (str, bytes, os.PathLike))
                 else None)
from qarnotfs.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "opened": [str(p) for p in opened]}))
"""


def watched(env: dict[str, str], cwd: Path, *args: str) -> tuple[str, list[str]]:
    """Run a command that must succeed; (its output, the files it opened)."""
    result = subprocess.run([sys.executable, "-c", _WATCHED, *args], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    *lines, last = result.stdout.splitlines()
    report = json.loads(last)
    assert report["status"] == 0, result.stderr
    return "\n".join(lines), report["opened"]


def inside(opened: list[str], folder: Path) -> list[str]:
    """The opened paths (absolute, or relative to the commands' folder, its parent) that
    lie in ``folder``."""
    return [os.fspath(folder.parent / path) for path in opened
            if (folder.parent / path).resolve().is_relative_to(folder.resolve())]


def stored_mtime(s3_client: S3Client, bucket: str, key: str) -> str:
    return s3_client.head_object(Bucket=bucket, Key=key)["Metadata"].get("mtime", "")


def make_many(tree: Path) -> None:
    for number in range(MANY):
        folder = tree / f"d{number % 6}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number}.txt").write_text(f"file {number}\n")
    (tree / "old.txt").write_text("from 2001")
    os.utime(tree / "old.txt", (OLD, OLD))


def test_noop_sync_reads_no_file_and_times_travel(cli_env: dict[str, str], work: Path,
                                                  bucket_name: str,
                                                  s3_client: S3Client) -> None:
    tree = work / "tree"
    make_many(tree)
    remote = f"qarnot://{bucket_name}/p"
    out, opened = watched(cli_env, work, "sync", "tree", remote)
    assert out.count("upload: ") == MANY + 1
    assert os.fspath(tree / "old.txt") in inside(opened, tree)  # the watch sees reads
    assert stored_mtime(s3_client, bucket_name, "p/old.txt") == str(OLD)

    out, opened = watched(cli_env, work, "sync", "tree", remote)
    assert out == "" and inside(opened, tree) == []

    down = work / "down"
    assert ok(cli_env, work, "sync", remote, "down").count("download: ") == MANY + 1
    assert (down / "old.txt").stat().st_mtime == OLD
    assert ((down / "d1" / "f1.txt").stat().st_mtime_ns
            == (tree / "d1" / "f1.txt").stat().st_mtime_ns)
    out, opened = watched(cli_env, work, "sync", remote, "down")
    assert out == "" and inside(opened, down) == []

    # Touched, same content: nothing moves; the object's stored time follows, and the
    # next sync reads nothing again.
    os.utime(tree / "old.txt", (OLD + 60, OLD + 60))
    assert ok(cli_env, work, "sync", "tree", remote) == ""
    assert stored_mtime(s3_client, bucket_name, "p/old.txt") == str(OLD + 60)
    out, opened = watched(cli_env, work, "sync", "tree", remote)
    assert out == "" and inside(opened, tree) == []

    # Same size, new content: uploaded; then downloaded, with its time.
    (tree / "d2" / "f2.txt").write_text("FILE 2\n")
    assert ok(cli_env, work, "sync", "tree", remote).splitlines() == [
        f"upload: tree/d2/f2.txt -> {bucket_name}/p/d2/f2.txt"]
    assert ok(cli_env, work, "sync", remote, "down").splitlines() == [
        f"download: {bucket_name}/p/d2/f2.txt -> down/d2/f2.txt"]
    assert (down / "d2" / "f2.txt").read_text() == "FILE 2\n"
    assert ((down / "d2" / "f2.txt").stat().st_mtime_ns
            == (tree / "d2" / "f2.txt").stat().st_mtime_ns)


def test_objects_of_the_mount_and_of_other_tools(cli_env: dict[str, str], work: Path,
                                                 bucket_name: str,
                                                 s3_client: S3Client) -> None:
    """What the mount wrote (its metadata, as it encodes it) is matched by time; what
    another tool wrote (no stored time) is compared by content once, then by time."""
    tree = work / "tree"
    tree.mkdir()
    (tree / "mounted.txt").write_text("written through the mount")
    (tree / "foreign.txt").write_text("uploaded by aws-cli")
    mtime_ns = (tree / "mounted.txt").stat().st_mtime_ns
    attrs = Attributes(mode=0o100644, uid=0, gid=0, size=25, atime_ns=mtime_ns,
                       mtime_ns=mtime_ns, ctime_ns=mtime_ns)
    s3_client.put_object(Bucket=bucket_name, Key="mounted.txt",
                         Body=b"written through the mount", Metadata=encode_metadata(attrs))
    s3_client.put_object(Bucket=bucket_name, Key="foreign.txt", Body=b"uploaded by aws-cli")
    os.utime(tree / "foreign.txt", (OLD, OLD))
    remote = f"qarnot://{bucket_name}"

    out, opened = watched(cli_env, work, "sync", "tree", remote)
    assert out == ""
    assert inside(opened, tree) == [os.fspath(tree / "foreign.txt")]  # hashed, once
    assert stored_mtime(s3_client, bucket_name, "foreign.txt") == str(OLD)
    out, opened = watched(cli_env, work, "sync", "tree", remote)
    assert out == "" and inside(opened, tree) == []


def test_checksum_compares_content_and_size_only_sizes(cli_env: dict[str, str], work: Path,
                                                       bucket_name: str,
                                                       s3_client: S3Client) -> None:
    tree = work / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("aaaa")
    remote = f"qarnot://{bucket_name}"
    ok(cli_env, work, "sync", "tree", remote)
    (tree / "a.txt").write_text("bbbb")  # same size, and the time put back: only content
    stored_ns = parse_time(stored_mtime(s3_client, bucket_name, "a.txt"))
    assert stored_ns is not None
    os.utime(tree / "a.txt", ns=(stored_ns, stored_ns))
    assert ok(cli_env, work, "sync", "tree", remote) == ""
    assert ok(cli_env, work, "sync", "tree", remote, "--size-only") == ""
    assert ok(cli_env, work, "sync", "--checksum", "tree", remote).splitlines() == [
        f"upload: tree/a.txt -> {bucket_name}/a.txt"]
    assert s3_client.get_object(Bucket=bucket_name, Key="a.txt")["Body"].read() == b"bbbb"
    assert "not allowed with argument" in fails(
        cli_env, work, "sync", "--checksum", "--size-only", "tree", remote, status=2)


def test_planning_shows_its_steps_on_a_terminal(cli_env: dict[str, str], work: Path,
                                                 bucket_name: str) -> None:
    tree = work / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    remote = f"qarnot://{bucket_name}"
    ok(cli_env, work, "sync", "tree", remote)
    drawn = on_terminal(cli_env, work, "sync", "--checksum", "tree", remote)
    assert "listing" in drawn and "hashing" in drawn
    drawn = on_terminal(cli_env, work, "sync", "tree", remote)
    assert "listing" in drawn and "hashing" not in drawn


def test_bwlimit_and_transfers(cli_env: dict[str, str], work: Path, bucket_name: str,
                               s3_client: S3Client) -> None:
    tree = work / "tree"
    tree.mkdir()
    for number in range(3):
        (tree / f"{number}.bin").write_bytes(os.urandom(512 * 1024))
    started = time.monotonic()
    ok(cli_env, work, "put", "-r", "tree", bucket_name, "--bwlimit", "512K")
    # 1.5 MiB at 512 KiB/s: 3 s, less what the limiter lets through at once.
    assert time.monotonic() - started >= 2.0
    assert len(keys_in(s3_client, bucket_name)) == 3
    for bad in (["--bwlimit", "fast"], ["--bwlimit", "0"], ["--transfers", "0"]):
        assert "invalid" in fails(cli_env, work, "put", "-r", "tree", bucket_name, *bad,
                                  status=2)


@pytest.mark.usefixtures("storage_env")
def test_transfers_bounds_the_files_in_flight(work: Path, bucket_name: str) -> None:
    files = []
    for number in range(8):
        path = work / f"{number}.bin"
        path.write_bytes(os.urandom(64 * 1024))
        files.append(path)
    connection = Connection()
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def before(**kwargs: object) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

    def after(**kwargs: object) -> None:
        with lock:
            in_flight[0] -= 1

    events = connection.s3.meta.events
    events.register("before-call.s3.PutObject", before)
    events.register("after-call.s3.PutObject", after)
    try:
        bucket = connection.retrieve_bucket(bucket_name)
        Transfers(bucket, False, lambda line: None, files_at_once=2).upload(
            [Job(path.name, path, 64 * 1024, "") for path in files])
    finally:
        connection.close()
    assert 1 <= most[0] <= 2
