"""The benchmark script (scripts/bench.py) runs end to end at a tiny scale.

No timing is asserted: the point is that every workload is measured through a real mount
and through boto3, that the results are printed and saved, and that nothing is left behind
(mounts, buckets, scratch files). The figures themselves come from full-size runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
WORKLOADS = ("big-write", "big-read", "big-reread", "big-read-warm", "small-read",
             "small-read-warm", "small-files", "ls-l", "walk", "rename", "rm-r")
RUN_TIMEOUT = 240


def run_bench(env: dict[str, str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--workdir", str(tmp_path), *args],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


def ratio_row(name: str) -> re.Pattern[str]:
    """workload, boto3 seconds, mount seconds, ratio, target, met/NOT MET, peak RSS."""
    return re.compile(
        rf"^{re.escape(name)}\s+\d+\.\d{{3}}\s+\d+\.\d{{3}}\s+\d+\.\d\dx\s+<=[\d.]+x\s+"
        r"(met|NOT MET)\s+\d+ MiB",
        re.MULTILINE,
    )


def bench_buckets(s3_client: S3Client) -> list[str]:
    names = [bucket["Name"] for bucket in s3_client.list_buckets().get("Buckets", [])]
    return [name for name in names if name.startswith("qarnotfs-bench-")]


def assert_nothing_left(tmp_path: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts, "the benchmark left a mount behind"
    assert not list(tmp_path.iterdir()), "the benchmark left its scratch folder behind"


@pytest.mark.mount
@pytest.mark.slow
def test_every_workload_gets_a_ratio_row_and_json(
    s3_env: dict[str, str], s3_client: S3Client, tmp_path: Path
) -> None:
    results = tmp_path.parent / f"{tmp_path.name}-results.json"
    before = set(bench_buckets(s3_client))

    done = run_bench(s3_env, "--endpoint-from-env", "--scale", "0.01", "--json", str(results),
                     tmp_path=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    for name in WORKLOADS:
        assert ratio_row(name).search(done.stdout), f"no ratio row for {name}:\n{done.stdout}"
    assert f"command: {Path(sys.executable).name} {BENCH}" in done.stdout
    for fact in ("cpus:", "ram:", "kernel:", "python:", "backend: given endpoint"):
        assert fact in done.stdout
    saved = json.loads(results.read_text())
    assert [row["workload"] for row in saved["summary"]] == list(WORKLOADS)
    for row in saved["summary"]:
        assert row["seconds"]["boto3"] > 0 and row["seconds"]["qarnotfs"] > 0
        assert row["ratios"]["qarnotfs"] > 0 and row["met"] in (True, False)
        assert row["peak_rss"] > 1024 * 1024  # VmHWM of the mount daemon was found and read
    assert len(saved["samples"]) == 2 * len(WORKLOADS)
    assert all(sample["error"] is None for sample in saved["samples"])
    assert set(bench_buckets(s3_client)) == before, "the benchmark left buckets behind"
    assert_nothing_left(tmp_path)


@pytest.mark.mount
@pytest.mark.moto_only
def test_own_moto_server_counts_requests_and_names_missing_peers(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    done = run_bench(s3_env, "--backend", "moto", "--scale", "0.01", "--only", "ls-l",
                     "--repeat", "2", "--peers", tmp_path=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert ratio_row("ls-l").search(done.stdout), done.stdout
    assert "backend: moto" in done.stdout
    # boto3 lists the folder once; the mount lists it too (it may also HEAD each file).
    requests = re.search(r"^ls-l\s+1 LIST\s+.*\bLIST\b", done.stdout, re.MULTILINE)
    assert requests, done.stdout
    for peer in ("s3fs", "rclone"):
        assert f"{peer} ratio" in done.stdout or f"peer {peer} missing" in done.stdout
    assert_nothing_left(tmp_path)


def test_unknown_workload_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = run_bench(dict(os.environ), "--only", "ls-l,nope", tmp_path=tmp_path)

    assert done.returncode == 2
    assert "unknown workload nope" in done.stderr
    assert not list(tmp_path.iterdir())


def test_endpoint_from_env_without_variables_says_which_are_missing(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    done = run_bench(env, "--endpoint-from-env", "--scale", "0.01", tmp_path=tmp_path)

    assert done.returncode == 1
    assert "needs QARNOT_STORAGE_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in done.stderr
    assert_nothing_left(tmp_path)
