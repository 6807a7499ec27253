"""scripts/install.sh and the shipped systemd unit, for real.

install.sh runs as a user would run it (root, this checkout), with the links and the unit
pointed at a temporary folder; then ``qarnotfs`` and ``mount.fuse.qarnotfs`` must run
with nothing but a standard PATH (as mount(8), mount.fuse3 and systemd run them), and the
installed unit must pass ``systemd-analyze verify`` without a word.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "qarnotfs" / "resources" / "qarnotfs@.service"

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh installs Debian packages as root"),
]


def verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of an instance of the template in ``unit_dir``."""
    assert shutil.which("systemd-analyze"), "systemd is not installed (scripts/install.sh)"
    return subprocess.run(["systemd-analyze", "verify",
                           os.fspath(unit_dir / "qarnotfs@mnt-data.service")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})


def test_install_puts_the_commands_on_the_path_and_installs_a_valid_unit(
        tmp_path: Path) -> None:
    bin_dir, sbin_dir, unit_dir = tmp_path / "bin", tmp_path / "sbin", tmp_path / "units"
    share_dir = tmp_path / "share"
    env = {**os.environ, "QARNOTFS_BIN_DIR": os.fspath(bin_dir),
           "QARNOTFS_SBIN_DIR": os.fspath(sbin_dir), "QARNOTFS_UNIT_DIR": os.fspath(unit_dir),
           "QARNOTFS_SHARE_DIR": os.fspath(share_dir)}
    result = subprocess.run(["bash", "scripts/install.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=540, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "warning" not in result.stderr.lower(), result.stderr  # no setuptools wall
    assert len(result.stderr.splitlines()) <= 3, result.stderr

    standard = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.fspath(tmp_path)}
    version = subprocess.run(["qarnotfs", "--version"], env=standard, capture_output=True,
                             text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.startswith("qarnotfs "), version.stderr
    helper = subprocess.run([os.fspath(sbin_dir / "mount.fuse.qarnotfs")], env=standard,
                            capture_output=True, text=True, timeout=60, check=False)
    assert helper.returncode == 2 and "usage: mount.fuse.qarnotfs" in helper.stderr
    assert (bin_dir / "mount.fuse.qarnotfs").resolve() == (sbin_dir /
                                                          "mount.fuse.qarnotfs").resolve()

    page = subprocess.run(["man", "-M", os.fspath(share_dir / "man"), "qarnotfs"],
                          env={**standard, "MANWIDTH": "100"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert page.returncode == 0 and "qarnotfs sync" in page.stdout, page.stderr
    assert (share_dir / "zsh" / "site-functions" / "_qarnotfs").read_text().startswith(
        "#compdef qarnotfs")
    assert "complete -F _qarnotfs qarnotfs" in (
        share_dir / "bash-completion" / "completions" / "qarnotfs").read_text()

    installed = (unit_dir / "qarnotfs@.service").read_text()
    assert f"ExecStart={bin_dir}/qarnotfs mount --foreground" in installed
    checked = verify(unit_dir)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


def test_the_shipped_unit_is_a_notify_service_with_system_paths(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "After=network-online.target", "StateDirectory=qarnotfs",
                 "LogsDirectory=qarnotfs",
                 "ExecStart=/usr/local/bin/qarnotfs mount --foreground",
                 "ExecStop=/usr/local/bin/qarnotfs unmount"):
        assert line in text, line
    broken = tmp_path / "qarnotfs@.service"
    broken.write_text(text.replace("Type=notify", "Type=bogus"))
    assert "bogus" in verify(tmp_path).stderr  # the check does catch a bad unit
