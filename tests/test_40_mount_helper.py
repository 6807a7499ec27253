"""``mount -t fuse.qarnotfs`` and /etc/fstab, through the real mount(8) (needs root).

mount(8) finds a helper only in /sbin (``mount.fuse.qarnotfs``), else uses fuse3's
``mount.fuse3``, which runs ``qarnotfs SOURCE DIR -o OPTIONS`` with a standard PATH. The
tests link the installed scripts there for their duration (and remove the links after),
give credentials only through ``-o config=FILE``, and use a temporary fstab
(``LIBMOUNT_FSTAB``) for the fstab line.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import bucket_bytes, is_mounted, run

from qarnotfs.fs import status

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) with a helper needs root"),
]

SCRIPTS = Path(sys.executable).parent
HELPER_LINK = Path("/usr/sbin/mount.fuse.qarnotfs")
COMMAND_LINK = Path("/usr/local/bin/qarnotfs")


@pytest.fixture
def link() -> Iterator[Any]:
    """Install symbolic links in system folders for one test, removed afterwards."""
    made: list[Path] = []

    def install(path: Path, target: Path) -> None:
        if os.path.lexists(path):
            if path.is_symlink() and Path(os.readlink(path)) == target:
                return
            pytest.skip(f"{path} exists and is not this checkout's")
        path.symlink_to(target)
        made.append(path)

    yield install
    for path in made:
        path.unlink()


@pytest.fixture
def config_file(tmp_path: Path, s3_server: Any) -> Path:
    path = tmp_path / "qarnotfs.conf"
    path.write_text(f"[storage]\nurl = {s3_server.endpoint_url}\n"
                    f"access_key = {s3_server.access_key}\n"
                    f"secret_key = {s3_server.secret_key}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """No storage variables at all: the credentials must come from the config file."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if is_mounted(path):
        record = status.read_record(os.fspath(path))
        run(["fusermount3", "-u", path], check=False)
        if is_mounted(path):
            run(["fusermount3", "-uz", path], check=False)
        if record is not None:
            status.wait_for_exit(record.pid, 30)


def options(config: Path, tmp_path: Path) -> str:
    return (f"config={config},log_file={tmp_path / 'mount.log'},"
            f"staging_dir={tmp_path / 'staging'},cache_ttl=1")


def unmount_and_wait(path: Path) -> None:
    record = status.read_record(os.fspath(path))
    assert record is not None
    run(["umount", path])
    assert status.wait_for_exit(record.pid, 60)
    assert not is_mounted(path)


def test_mount_t_and_fstab_with_the_helper(link: Any, config_file: Path, clean_env: dict,
                                           mountpoint: Path, bucket_name: str,
                                           s3_client: Any, tmp_path: Path) -> None:
    link(HELPER_LINK, SCRIPTS / "mount.fuse.qarnotfs")
    run(["mount", "-t", "fuse.qarnotfs", bucket_name, mountpoint,
         "-o", options(config_file, tmp_path)], env=clean_env)
    assert status.is_qarnotfs_mount(os.fspath(mountpoint))
    (mountpoint / "via-helper.txt").write_text("helper\n")
    record = status.read_record(os.fspath(mountpoint))
    assert record is not None
    with open(f"/proc/{record.pid}/cmdline", "rb") as cmdline:
        assert b"secret" not in cmdline.read().lower()
    unmount_and_wait(mountpoint)
    assert bucket_bytes(s3_client, bucket_name, "via-helper.txt") == b"helper\n"

    fstab = tmp_path / "fstab"
    fstab.write_text(f"{bucket_name}  {mountpoint}  fuse.qarnotfs  "
                     f"{options(config_file, tmp_path)},noauto,_netdev  0  0\n")
    run(["mount", mountpoint], env={**clean_env, "LIBMOUNT_FSTAB": os.fspath(fstab)})
    assert (mountpoint / "via-helper.txt").read_text() == "helper\n"
    unmount_and_wait(mountpoint)


def test_mount_t_through_mount_fuse3(link: Any, config_file: Path, clean_env: dict,
                                     mountpoint: Path, bucket_name: str, s3_client: Any,
                                     tmp_path: Path) -> None:
    if os.path.lexists(HELPER_LINK):
        pytest.skip(f"{HELPER_LINK} exists, so mount(8) would not use mount.fuse3")
    assert shutil.which("mount.fuse3", path="/usr/sbin:/sbin"), "fuse3 is not installed"
    link(COMMAND_LINK, SCRIPTS / "qarnotfs")
    run(["mount", "-t", "fuse.qarnotfs", f"{bucket_name}/sub", mountpoint,
         "-o", options(config_file, tmp_path)], env=clean_env)
    assert status.is_qarnotfs_mount(os.fspath(mountpoint))
    (mountpoint / "via-fuse3.txt").write_text("fuse3\n")
    unmount_and_wait(mountpoint)
    assert bucket_bytes(s3_client, bucket_name, "sub/via-fuse3.txt") == b"fuse3\n"


def test_helper_reports_errors(link: Any, config_file: Path, clean_env: dict,
                               mountpoint: Path, missing_bucket_name: str,
                               tmp_path: Path) -> None:
    link(HELPER_LINK, SCRIPTS / "mount.fuse.qarnotfs")
    result = run(["mount", "-t", "fuse.qarnotfs", missing_bucket_name, mountpoint,
                  "-o", options(config_file, tmp_path)], env=clean_env, check=False)
    assert result.returncode != 0
    assert f"qarnotfs: error: bucket '{missing_bucket_name}' does not exist" in result.stderr
    result = run(["mount", "-t", "fuse.qarnotfs", missing_bucket_name, mountpoint,
                  "-o", "config=/nonexistent/qarnotfs.conf"], env=clean_env, check=False)
    assert result.returncode != 0
    assert "configuration file not found: /nonexistent/qarnotfs.conf" in result.stderr
    assert not is_mounted(mountpoint)
