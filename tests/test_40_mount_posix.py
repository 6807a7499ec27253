"""POSIX fidelity through a live mount: stable inode numbers (across the kernel forgetting
inodes, renames of files and of folders), folder times that follow their entries, and
the ctime of a renamed entry. Driven with real tools (stat, find, cp, tar, mv); the bucket
is checked directly and after a remount.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mounting import Mount, mounted, sh, storage_environment

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@pytest.fixture
def mount(s3_server: Any, bucket_name: str, tmp_path: Path) -> Iterator[Mount]:
    with mounted(bucket_name, tmp_path / "mnt", storage_environment(s3_server),
                 tmp_path / "work") as live:
        yield live
        live.assert_clean_log()


@pytest.fixture
def folder(mount: Mount, request: pytest.FixtureRequest) -> Path:
    path = mount.mountpoint / request.node.name.replace("[", "_").replace("]", "_")
    path.mkdir()
    return path


def forget_inodes() -> None:
    """Make the kernel forget every inode it can (what memory pressure does)."""
    if not os.access(DROP_CACHES, os.W_OK):
        pytest.fail("the test needs root and a writable /proc/sys/vm/drop_caches")
    sh(f"sync; echo 2 > {DROP_CACHES}")


def inode(path: Path) -> int:
    return int(sh(f"stat -c %i '{path}'").stdout)


def times(path: Path) -> tuple[float, float]:
    """(mtime, ctime) as the stat tool prints them, to the nanosecond."""
    mtime, ctime = sh(f"stat -c '%.9Y %.9Z' '{path}'").stdout.split()
    return float(mtime), float(ctime)


def ls_inodes(folder: Path) -> dict[str, int]:
    """{name: inode} as `ls -i` shows them (from the folder listing)."""
    found = {}
    for line in sh(f"ls -1ai '{folder}'").stdout.splitlines():
        number, name = line.split(maxsplit=1)
        found[name] = int(number)
    return found


# -- inode numbers --------------------------------------------------------------------------


def test_inode_numbers_survive_the_kernel_forgetting_them(folder: Path) -> None:
    sh("mkdir sub && touch f sub/g && ln -s f link", cwd=folder)
    paths = [folder, folder / "f", folder / "sub", folder / "sub" / "g", folder / "link"]
    before = [inode(path) for path in paths]
    assert len(set(before)) == len(before), "distinct objects have distinct numbers"
    forget_inodes()
    assert [inode(path) for path in paths] == before
    listed = ls_inodes(folder)
    assert (listed["."], listed["f"], listed["sub"], listed["link"]) == \
        (before[0], before[1], before[2], before[4]), "ls -i agrees with stat"


def test_inode_numbers_follow_renames_of_files_and_folders(folder: Path) -> None:
    sh("mkdir -p a/b && echo x > a/b/deep && echo y > file", cwd=folder)
    deep, file, a, b = (inode(folder / p) for p in ("a/b/deep", "file", "a", "a/b"))
    sh("mv file moved && mv a renamed", cwd=folder)
    forget_inodes()
    assert inode(folder / "moved") == file
    assert inode(folder / "renamed") == a
    assert inode(folder / "renamed/b") == b
    assert inode(folder / "renamed/b/deep") == deep
    assert int(sh("find . -samefile renamed/b/deep -printf '%i\\n'", cwd=folder).stdout) == deep
    # New objects at the old names are other files: new numbers.
    sh("mkdir -p a/b && echo new > a/b/deep && echo new > file", cwd=folder)
    assert inode(folder / "a/b/deep") != deep and inode(folder / "file") != file
    assert sh("find . -samefile renamed/b/deep", cwd=folder).stdout.split() == \
        ["./renamed/b/deep"]
    # A file moved into another folder, then that folder moved: still the same number.
    sh("mv moved a/b/ && mv a again", cwd=folder)
    forget_inodes()
    assert inode(folder / "again/b/moved") == file


def test_distinct_files_are_never_the_same_file_for_tools(folder: Path, tmp_path: Path
                                                          ) -> None:
    sh("mkdir -p t/x t/y && for i in $(seq 1 150); do echo $i > t/x/f$i; echo $i > t/y/f$i;"
       " done", cwd=folder)
    numbers = sh("find t -printf '%i\\n'", cwd=folder).stdout.split()
    assert len(numbers) == 303 and len(set(numbers)) == 303
    # cp refuses to copy a file onto itself: it must not think two files are one.
    sh("cp t/x/f1 t/y/f2 && cp t/y/f2 t/x/f3", cwd=folder)
    refused = sh("cp t/x/f1 t/x/f1", cwd=folder, check=False)
    assert refused.returncode != 0 and "same file" in refused.stderr
    # tar records no hard link between distinct files.
    sh(f"tar -cvvf '{tmp_path}/t.tar' t >/dev/null", cwd=folder)
    assert " link to " not in sh(f"tar -tvf '{tmp_path}/t.tar'").stdout


# -- folder times and the ctime of a renamed entry ------------------------------------------


def test_folder_times_follow_its_entries_in_the_mount_view(
        folder: Path, mount: Mount, s3_client: Any, bucket_name: str) -> None:
    prefix = f"{folder.name}/"

    def marker_mtime() -> str:
        head = s3_client.head_object(Bucket=bucket_name, Key=prefix)
        return str(head["Metadata"].get("mtime"))

    stored = marker_mtime()
    steps = ["touch f", "mkdir d", "ln -s f link", "mv f g", "rm g", "rmdir d",
             "mv link ../moved-out-link", f"mv ../moved-out-link '{folder}/back'",
             "echo data > new"]
    last = times(folder)
    for step in steps:
        sh(step, cwd=folder)
        now = times(folder)
        assert now[0] > last[0] and now[1] > last[1], f"{step}: {last} -> {now}"
        last = now
    assert marker_mtime() == stored, "the folder's marker is not rewritten per entry"
    # A write into an existing file changes the file, not its folder.
    sh("echo more >> new", cwd=folder)
    assert times(folder) == last
    # When the marker is rewritten anyway (chmod), it stores the times the mount showed.
    sh(f"chmod 700 '{folder}'")
    assert float(marker_mtime()) == pytest.approx(last[0], abs=1e-6)
    mount.remount()
    assert times(folder)[0] == pytest.approx(last[0], abs=1e-6)


def test_a_folder_rename_changes_both_parents_and_the_moved_entry_ctime(folder: Path) -> None:
    sh("mkdir -p src dst && echo x > src/file && mkdir src/sub", cwd=folder)
    src, dst = times(folder / "src"), times(folder / "dst")
    file_times, sub_times = times(folder / "src/file"), times(folder / "src/sub")
    sh("mv src/file dst/file && mv src/sub dst/sub", cwd=folder)
    for before, path in ((src, "src"), (dst, "dst")):
        after = times(folder / path)
        assert after[0] > before[0] and after[1] > before[1], path
    for before, path in ((file_times, "dst/file"), (sub_times, "dst/sub")):
        after = times(folder / path)
        assert after[0] == before[0], f"{path}: a rename keeps the mtime"
        assert after[1] > before[1], f"{path}: a rename changes the ctime"


# -- a folder's link count --------------------------------------------------------------------


def links(path: Path) -> int:
    return int(sh(f"stat -c %h '{path}'").stdout)


def test_a_folder_link_count_follows_its_subfolders_and_find_sees_every_entry(
        folder: Path, mount: Mount, s3_client: Any, bucket_name: str) -> None:
    sh("mkdir -p src dst && mkdir src/a src/b && touch src/file && ln -s file src/link",
       cwd=folder)
    assert (links(folder / "src"), links(folder / "dst")) == (4, 2)
    sh("mv src/a dst/a && mkdir dst/a/deeper", cwd=folder)
    assert (links(folder / "src"), links(folder / "dst"), links(folder / "dst/a")) == (3, 3, 3)
    sh("rmdir src/b && mv dst/a src/c", cwd=folder)
    assert (links(folder / "src"), links(folder / "dst")) == (3, 2)
    # A tree written behind the mount's back: ten folders, files at every level.
    prefix = f"{folder.name}/tree/"
    expected = {"tree"}
    for top in range(5):
        for sub in range(2):
            key = f"{prefix}t{top}/s{sub}/file"
            s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"x")
            expected |= {f"tree/t{top}", f"tree/t{top}/s{sub}", f"tree/t{top}/s{sub}/file"}
    mount.remount()  # nothing listed: find starts from link counts of 1 ("unknown")
    assert links(folder / "tree") == 1
    for phase in ("cold", "listed"):
        # find trusts a folder's link count to stop looking for sub-folders: a count too
        # small would hide some; whatever the mount knows, it finds every entry.
        found = sh("find tree", cwd=folder).stdout.split()
        assert set(found) == expected and len(found) == len(expected), phase
        found_dirs = sh("find tree -type d", cwd=folder).stdout.split()
        assert len(found_dirs) == 1 + 5 + 10, phase
    assert (links(folder / "tree"), links(folder / "tree/t0")) == (7, 4), "2 + sub-folders"
    assert links(folder / "tree/t0/s0") == 2
