"""Ctrl-C during transfers: SIGINT to a real ``qarnotfs put``/``get`` (the console script).

The command must stop promptly (the part being sent stops at its next read), abort the
multipart uploads it started, say what completed, exit 130, and leave nothing half
written: no object for the interrupted file, no unfinished upload, no partial download.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SCRIPT = Path(sys.executable).parent / "qarnotfs"
BIG = 400 * 1024 * 1024
RATE = "40M"
"""``--bwlimit`` for the interrupted transfers: BIG takes 10 s at this rate, so the signal
always comes while the transfer runs (unthrottled, a fast machine finished a download between
the test seeing it start and the signal)."""
PROMPT = 3.0
"""How soon the command must be gone after SIGINT (rclone and aws: 0.5 s; a loaded CI
machine gets some slack)."""

pytestmark = pytest.mark.timeout(240)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def unfinished(s3_client: S3Client, bucket: str) -> list[str]:
    answer = s3_client.list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def keys_in(s3_client: S3Client, bucket: str) -> set[str]:
    answer = s3_client.list_objects_v2(Bucket=bucket)
    return {entry["Key"] for entry in answer.get("Contents", [])}


def interrupt_when(process: subprocess.Popen[str], ready: object) -> tuple[str, str, float]:
    """SIGINT ``process`` once ``ready()``; (stdout, stderr, seconds it took to exit)."""
    wait_until(ready, 60, "the transfer to start")
    assert process.poll() is None, "the transfer ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    return out, err, time.monotonic() - sent


def test_ctrl_c_stops_put_at_once_and_aborts_its_upload(
        s3_env: dict[str, str], tmp_path: Path, bucket_name: str,
        s3_client: S3Client) -> None:
    big = sparse_file(tmp_path / "big.bin", BIG)
    process = subprocess.Popen([os.fspath(SCRIPT), "put", "--bwlimit", RATE, os.fspath(big),
                                bucket_name],
                               env=s3_env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err, took = interrupt_when(
        process, lambda: bool(unfinished(s3_client, bucket_name)))
    assert process.returncode == 130, err
    assert took < PROMPT, f"took {took:.1f} s to stop"
    assert err.strip() == ("qarnotfs: error: interrupted: 0 of 1 file(s) uploaded; the "
                           "others were not, and nothing partial was left (unfinished "
                           "multipart uploads aborted)"), err
    assert out == ""
    assert unfinished(s3_client, bucket_name) == []
    assert keys_in(s3_client, bucket_name) == set()


def test_ctrl_c_during_put_r_reports_the_files_that_went_up(
        s3_env: dict[str, str], tmp_path: Path, bucket_name: str,
        s3_client: S3Client) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for number in range(3):
        (tree / f"small-{number}.txt").write_text(f"small {number}")
    sparse_file(tree / "z-big.bin", BIG)
    process = subprocess.Popen([os.fspath(SCRIPT), "put", "--bwlimit", RATE, "-r", "tree",
                                bucket_name],
                               env=s3_env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    smalls = {f"tree/small-{number}.txt" for number in range(3)}
    out, err, took = interrupt_when(
        process, lambda: smalls <= keys_in(s3_client, bucket_name)
        and bool(unfinished(s3_client, bucket_name)))
    assert process.returncode == 130, err
    assert took < PROMPT, f"took {took:.1f} s to stop"
    assert "interrupted: 3 of 4 file(s) uploaded" in err
    for key in sorted(smalls):
        assert f"upload: tree/{key.split('/')[1]} -> {bucket_name}/{key}" in out
    assert "z-big.bin" not in out
    assert unfinished(s3_client, bucket_name) == []
    assert keys_in(s3_client, bucket_name) == smalls


def test_ctrl_c_during_get_leaves_no_partial_file(
        s3_env: dict[str, str], tmp_path: Path, bucket_name: str,
        s3_client: S3Client) -> None:
    source = sparse_file(tmp_path / "source.bin", BIG // 2)
    s3_client.upload_file(os.fspath(source), bucket_name, "big.bin")
    target = tmp_path / "down"
    target.mkdir()
    process = subprocess.Popen([os.fspath(SCRIPT), "get", "--bwlimit", RATE,
                                f"{bucket_name}/big.bin", "down/"],
                               env=s3_env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _out, err, took = interrupt_when(process, lambda: any(target.iterdir()))
    assert process.returncode == 130, err
    assert took < PROMPT, f"took {took:.1f} s to stop"
    assert "interrupted: 0 of 1 file(s) downloaded" in err
    assert list(target.iterdir()) == []
