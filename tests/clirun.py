"""Running the ``qarnotfs`` console script in the command-line tests (tier 25).

Owns: the fixtures ``cli_env`` (the test server's credentials only, with HOME pointing at
an empty folder, so no configuration file of the machine is read) and ``work`` (the
current folder of the commands), and the helpers that run the installed console script
and check its outcome (``ok``: status 0; ``fails``: the status and ONE error line). A
test module imports ``cli_env_fixture`` and ``work_fixture`` to use the fixtures.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
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


def on_terminal(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run a command that must succeed with stderr on a pseudo-terminal (100 columns);
    return what the terminal received."""
    controller, terminal = pty.openpty()
    # A new pty is 0x0, and tqdm draws nothing in a zero-width terminal.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # read while the command runs, so it never blocks on a full tty
        try:
            while chunk := os.read(controller, 65536):
                chunks.append(chunk)
        except OSError:  # EIO once the command has exited and closed the terminal
            pass

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        result = qarnotfs(env, cwd, *args, stderr=terminal)
    finally:
        os.close(terminal)
        reader.join(timeout=TIMEOUT)
        os.close(controller)
    assert result.returncode == 0
    return b"".join(chunks).decode(errors="replace")
