"""Special files and extended attributes on a live mount, with the real tools (mkfifo,
mknod, tar, rsync, setfattr/getfattr from the ``attr`` package, cp --preserve=xattr):
checked through the mount, in the bucket, through a fresh mount process, and through a
real s3fs-fuse mount of the same folder, both ways."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_40_mount_tools as tools
from mounting import is_mounted, mounted, run, sh, wait_until
from test_30_core_posix_meta import S3FS_XATTR
from test_40_mount_tools import Workspace

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

# One mount for the module, each test in its own folder, as in test_40_mount_tools.
shared_bucket, shared_mount, ws = tools.shared_bucket, tools.shared_mount, tools.ws


def special_tree(root: Path) -> Path:
    """A local tree with a FIFO, a character device and a socket beside a file."""
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("file\n")
    os.mkfifo(root / "sub" / "pipe", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    return root


def file_types(root: Path) -> dict[str, str]:
    out = run(["find", root, "-mindepth", "1", "-printf", "%P %y %m\\n"]).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device needs root")
def test_tar_x_and_rsync_a_of_a_tree_with_a_fifo_and_a_device(ws: Workspace,
                                                                tmp_path: Path) -> None:
    source = special_tree(tmp_path / "src")
    archive = tmp_path / "tree.tar"
    run(["tar", "cf", archive, "-C", source, "."])
    (ws.path / "untarred").mkdir()
    run(["tar", "xf", archive, "-C", ws.path / "untarred"])
    run(["rsync", "-a", f"{source}/", f"{ws.path / 'synced'}/"])

    expected = file_types(source)
    assert expected["sub/pipe"] == "p 640" and expected["null"] == "c 600"
    for copy in ("untarred", "synced"):
        assert file_types(ws.path / copy) == expected, copy
        assert os.stat(ws.path / copy / "null").st_rdev == os.makedev(1, 3)
        meta = ws.head(f"{copy}/sub/pipe")
        assert meta["ContentLength"] == 0 and int(meta["Metadata"]["mode"]) == \
            stat.S_IFIFO | 0o640
        assert ws.head(f"{copy}/null")["Metadata"]["rdev"] == str(os.makedev(1, 3))
    # rsync again finds nothing to do: types, modes and times all match.
    again = run(["rsync", "-ai", f"{source}/", f"{ws.path / 'synced'}/"]).stdout
    assert again.strip() == "", again
    with ws.fresh_view() as view:
        for copy in ("untarred", "synced"):
            assert file_types(view / copy) == expected, copy
            assert os.stat(view / copy / "null").st_rdev == os.makedev(1, 3)


def test_mkfifo_through_the_mount_works_as_a_pipe(ws: Workspace) -> None:
    pipe = ws.path / "pipe"
    run(["mkfifo", "-m", "600", pipe])
    reader = subprocess.Popen(["cat", pipe], stdout=subprocess.PIPE)
    with open(pipe, "w") as writer:  # the kernel makes the pipe: nothing reaches S3
        writer.write("through the pipe\n")
    out, _ = reader.communicate(timeout=30)
    assert out == b"through the pipe\n"
    assert stat.S_ISFIFO(pipe.stat().st_mode) and ws.object("pipe") == b""


def test_setfattr_getfattr_and_cp_preserve_xattr(ws: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "with-xattrs.txt"
    source.write_text("copied\n")
    os.setxattr(source, "user.origin", b"local \x00 binary")
    (ws.path / "dir").mkdir()
    sh("echo hi > f && setfattr -n user.a -v 0x00ff f && setfattr -n user.text -v hello f"
       " && setfattr -n user.tag -v folder dir", cwd=ws.path)
    run(["cp", "--preserve=xattr", source, ws.path / "copied.txt"])
    run(["cp", "-a", source, ws.path / "cp-a.txt"])
    run(["rsync", "-aX", source, ws.path / "rsynced.txt"])
    for copy in ("cp-a.txt", "rsynced.txt"):
        assert os.getxattr(ws.path / copy, "user.origin") == b"local \x00 binary", copy

    dump = run(["getfattr", "-d", "-e", "hex", ws.path / "f"]).stdout
    assert "user.a=0x00ff" in dump and "user.text=0x68656c6c6f" in dump, dump
    assert os.getxattr(ws.path / "copied.txt", "user.origin") == b"local \x00 binary"
    assert ws.head("f")["Metadata"]["xattr"] == S3FS_XATTR  # byte for byte s3fs's format
    assert "xattr" in ws.head("dir/")["Metadata"] and "xattr" in ws.head("copied.txt")["Metadata"]
    refused = subprocess.run(["setfattr", "-n", "user.big", "-v", "x" * 2100, ws.path / "f"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "No space left on device" in refused.stderr
    run(["setfattr", "-x", "user.text", ws.path / "f"])
    for call, args in ((os.getxattr, ("security.selinux",)),
                       (os.setxattr, ("security.label", b"x"))):
        with pytest.raises(OSError) as caught:
            call(ws.path / "f", *args)
        assert caught.value.errno == errno.EOPNOTSUPP, args
    with ws.fresh_view() as view:
        assert os.listxattr(view / "f") == ["user.a"]
        assert os.getxattr(view / "f", "user.a") == b"\x00\xff"
        assert os.getxattr(view / "dir", "user.tag") == b"folder"
        assert os.getxattr(view / "copied.txt", "user.origin") == b"local \x00 binary"
        assert (view / "copied.txt").read_text() == "copied\n"


@contextlib.contextmanager
def s3fs_mounted(server: Any, source: str, mountpoint: Path, workdir: Path) -> Iterator[Path]:
    """``source`` (BUCKET:/PREFIX) mounted by s3fs-fuse, unmounted at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True)
    secrets = workdir / "passwd-s3fs"
    secrets.touch(mode=0o600)
    secrets.write_text(f"{server.access_key}:{server.secret_key}\n")
    run(["s3fs", source, mountpoint, "-o", f"url={server.endpoint_url}", "-o",
         "use_path_request_style", "-o", f"passwd_file={secrets}", "-o", "use_xattr",
         "-o", "stat_cache_expire=1", "-o", "dbglevel=warn"])
    try:
        wait_until(lambda: is_mounted(mountpoint), message="the s3fs mount")
        yield mountpoint
    finally:
        run(["fusermount", "-u", mountpoint], check=False)
        if is_mounted(mountpoint):
            run(["fusermount", "-uz", mountpoint], check=False)


@pytest.mark.skipif(shutil.which("s3fs") is None, reason="s3fs-fuse is not installed "
                    "(scripts/install.sh --test installs it)")
def test_s3fs_reads_what_the_mount_writes_and_back(ws: Workspace, tmp_path: Path,
                                                    s3_server: Any) -> None:
    sh("mkfifo -m 640 pipe && echo ours > ours.txt && setfattr -n user.a -v 0x00ff ours.txt"
       " && mkdir dir && setfattr -n user.tag -v folder dir", cwd=ws.path)
    with s3fs_mounted(s3_server, f"{ws.bucket}:/{ws.prefix.rstrip('/')}",
                      tmp_path / "s3fs", tmp_path / "s3fs-work") as theirs:
        assert stat.S_IFMT(os.lstat(theirs / "pipe").st_mode) == stat.S_IFIFO
        assert stat.S_IMODE(os.lstat(theirs / "pipe").st_mode) == 0o640
        assert os.getxattr(theirs / "ours.txt", "user.a") == b"\x00\xff"
        assert os.getxattr(theirs / "dir", "user.tag") == b"folder"
        assert (theirs / "ours.txt").read_text() == "ours\n"
        sh("mkfifo -m 600 theirs-pipe && echo theirs > theirs.txt"
           " && setfattr -n user.from -v s3fs theirs.txt", cwd=theirs)
    assert "xattr" in ws.head("theirs.txt")["Metadata"]
    with mounted(f"{ws.bucket}/{ws.prefix}", tmp_path / "small", ws.mount.env,
                 tmp_path / "small-work", "-o", "ro", "--symlink-scan", "small") as view:
        pipe = os.lstat(view.mountpoint / "theirs-pipe")
        assert (stat.S_IFMT(pipe.st_mode), stat.S_IMODE(pipe.st_mode)) == (stat.S_IFIFO, 0o600)
        assert os.getxattr(view.mountpoint / "theirs.txt", "user.from") == b"s3fs"
        assert (view.mountpoint / "theirs.txt").read_text() == "theirs\n"
        view.assert_clean_log()
    with ws.fresh_view() as view:  # the default scan: s3fs's FIFO is a plain PUT
        assert stat.S_ISREG(os.lstat(view / "theirs-pipe").st_mode)
        assert stat.S_ISFIFO(os.lstat(view / "pipe").st_mode)
        assert os.getxattr(view / "theirs.txt", "user.from") == b"s3fs"


def test_pathconf_says_what_a_file_system_can(ws: Workspace) -> None:
    """NAME_MAX comes from the mount's statfs; PATH_MAX is glibc's constant, asked of no
    file system, so it stays 4096 though keys stop at 1,024 bytes (SEMANTICS.md)."""
    assert os.pathconf(ws.path, "PC_NAME_MAX") == 255
    assert os.pathconf(ws.path, "PC_PATH_MAX") == 4096
    deep = ws.path
    for level in range(4):  # the workspace's prefix plus four 201-byte levels: under 1,024
        deep = deep / f"{level}{'d' * 199}"
        deep.mkdir()
    with pytest.raises(OSError) as caught:
        (deep / ("e" * 200)).mkdir()
    assert caught.value.errno == errno.ENAMETOOLONG
