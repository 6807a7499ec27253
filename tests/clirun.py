"""Running the ``qarnotfs`` console script in the command-line tests (tier 25).

Owns: the fixtures ``cli_env`` (the test server's credentials only, with HOME pointing at
an empty folder, so no configuration file of the machine is read) and ``work`` (the
current folder of the commands), and the helpers that run the installed console script
and check its outcome (``ok``: status 0; ``fails``: the status and ONE error line). A
test module imports ``cli_env_fixture`` and ``work_fixture`` to use the fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SCRIPT = Path(sys.executable).parent / "qarnotfs"
"""The console script pip installed, as users run it."""
TIMEOUT = 120


@pytest.fixture(name="cli_env")
def cli_env_fixture(s3_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**s3_env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


@pytest.fixture(name="work")
def work_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def qarnotfs(env: dict[str, str], cwd: Path, *args: str,
             stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(SCRIPT), *args], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                          text=True, timeout=TIMEOUT, check=False)


def ok(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run a command that must succeed; its stdout."""
    result = qarnotfs(env, cwd, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(env: dict[str, str], cwd: Path, *args: str, status: int = 1) -> str:
    """Run a command that must fail with ``status`` and ONE error line; return that line."""
    result = qarnotfs(env, cwd, *args)
    assert result.returncode == status, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qarnotfs: error: "), result.stderr
    return lines[0]


def keys_in(s3_client: S3Client, bucket: str) -> set[str]:
    paginator = s3_client.get_paginator("list_objects_v2")
    return {entry["Key"] for page in paginator.paginate(Bucket=bucket)
            for entry in page.get("Contents", [])}
