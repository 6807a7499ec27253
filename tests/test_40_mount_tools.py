"""Real tools on a live mount: cp, cat, ls, stat, mkdir, touch, echo >>, truncate, dd, mv,
rm -r, ln -s, chmod, tar, rsync, sqlite3 and git, through the kernel's FUSE.

One mount (its own process, a short cache TTL) serves the whole module; each test works in
its own folder. Each test checks the mount, the bucket directly, and then what a new
mount process sees: a fresh read-only mount of the test's folder (``BUCKET/PREFIX``), which
knows only what reached the storage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mounting import (
    Mount,
    bucket_bytes,
    bucket_keys,
    mounted,
    run,
    sh,
    storage_environment,
)
from servers import empty_and_delete_bucket

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def shared_bucket(s3_client: Any) -> Iterator[str]:
    name = f"t-mount-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_and_delete_bucket(s3_client, name)


@pytest.fixture(scope="module")
def shared_mount(s3_server: Any, shared_bucket: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    base = tmp_path_factory.mktemp("shared-mount")
    with mounted(shared_bucket, base / "mnt", storage_environment(s3_server), base / "work",
                 "--cache-ttl", "1", "--negative-ttl", "0.5") as mount:
        yield mount
        mount.assert_clean_log()


@dataclass
class Workspace:
    """A test's own folder in the shared mount, and how to look at it from elsewhere."""

    path: Path
    prefix: str
    bucket: str
    mount: Mount
    client: Any
    scratch: Path

    def bucket_keys(self) -> set[str]:
        """The file keys of this folder in the bucket, relative to it (no folder markers)."""
        keys = bucket_keys(self.client, self.bucket, self.prefix)
        return {k[len(self.prefix):] for k in keys if not k.endswith("/")}

    def object(self, relative: str) -> bytes:
        return bucket_bytes(self.client, self.bucket, self.prefix + relative)

    def head(self, relative: str) -> dict[str, Any]:
        return dict(self.client.head_object(Bucket=self.bucket, Key=self.prefix + relative))

    @contextlib.contextmanager
    def fresh_view(self) -> Iterator[Path]:
        """This folder through a new mount process (read-only), for 'after remount' checks."""
        name = f"view-{uuid.uuid4().hex[:8]}"
        with mounted(f"{self.bucket}/{self.prefix}", self.scratch / name,
                     self.mount.env, self.scratch / f"{name}-work", "-o", "ro") as view:
            yield view.mountpoint
            view.assert_clean_log()


@pytest.fixture
def ws(shared_mount: Mount, shared_bucket: str, s3_client: Any, tmp_path: Path,
       request: pytest.FixtureRequest) -> Workspace:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    path = shared_mount.mountpoint / name
    path.mkdir()
    return Workspace(path, f"{name}/", shared_bucket, shared_mount, s3_client, tmp_path)


def make_tree(root: Path) -> Path:
    """A small but varied local tree: nested folders, empty and larger files, a link."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "readme.txt").write_text("hello from qarnotfs\n")
    (root / "docs" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "docs" / "deep" / "deeper" / "empty").write_bytes(b"")
    (root / "name with spaces & ünïcode.txt").write_text("spaces\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "link-to-readme").symlink_to("docs/readme.txt")
    return root


def test_cp_cat_ls_stat(ws: Workspace, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    small = tmp_path / "small.txt"
    small.write_text("small file\n")

    run(["cp", big, small, ws.path])
    assert run(["cat", ws.path / "small.txt"]).stdout == "small file\n"
    run(["cmp", big, ws.path / "big.bin"])
    listing = run(["ls", "-l", ws.path]).stdout
    assert re.search(rf"\s{big.stat().st_size}\s.*big\.bin", listing), listing
    stat_line = run(["stat", "-c", "%s %F", ws.path / "big.bin"]).stdout.strip()
    assert stat_line == f"{big.stat().st_size} regular file"

    assert ws.bucket_keys() == {"big.bin", "small.txt"}
    assert ws.object("big.bin") == big.read_bytes()
    with ws.fresh_view() as view:
        run(["cmp", big, view / "big.bin"])
        assert (view / "small.txt").read_text() == "small file\n"


def test_cp_of_large_files_keeps_what_it_should_after_a_remount(
        ws: Workspace, tmp_path: Path) -> None:
    """Large files send their parts while cp writes them (SEMANTICS.md, "Times of a file
    whose parts went early"): cp -p keeps its times exactly, plain cp gets the time the
    upload completed."""
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(20 * 1024 * 1024 + 5))
    os.utime(source, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    source.chmod(0o640)
    before = int(time.time())
    run(["cp", "-p", source, ws.path / "kept.bin"])
    run(["cp", source, ws.path / "plain.bin"])
    after = int(time.time()) + 1

    assert ws.object("kept.bin") == ws.object("plain.bin") == source.read_bytes()
    assert float(ws.head("kept.bin")["Metadata"]["mtime"]) == 1_600_000_000.987654321
    with ws.fresh_view() as view:
        kept, plain = (view / "kept.bin").stat(), (view / "plain.bin").stat()
        run(["cmp", source, view / "kept.bin"])
    assert kept.st_mtime_ns == 1_600_000_000_987_654_321
    assert stat.S_IMODE(kept.st_mode) == 0o640
    assert before <= plain.st_mtime <= after, (before, plain.st_mtime, after)


def test_mkdir_touch_append_truncate_dd(ws: Workspace) -> None:
    sh("mkdir -p a/b/c && touch a/b/c/empty && echo one > a/log && echo two >> a/log"
       " && printf 0123456789 > digits && truncate -s 4 digits"
       " && printf abcdefgh > grow && truncate -s 12 grow"
       " && printf 0123456789 > patched"
       " && printf XY | dd of=patched bs=1 seek=3 conv=notrunc status=none", cwd=ws.path)

    expected = {"a/b/c/empty": b"", "a/log": b"one\ntwo\n", "digits": b"0123",
                "grow": b"abcdefgh\0\0\0\0", "patched": b"012XY56789"}
    for relative, content in expected.items():
        assert (ws.path / relative).read_bytes() == content, relative
        assert ws.object(relative) == content, relative
    assert (ws.path / "a" / "b" / "c").is_dir()
    with ws.fresh_view() as view:
        for relative, content in expected.items():
            assert (view / relative).read_bytes() == content, relative
        assert (view / "a" / "b").is_dir()


def test_mv_file_and_folder(ws: Workspace) -> None:
    sh("mkdir -p src/inner && echo 1 > src/one && echo 2 > src/inner/two && echo f > file"
       " && mv file renamed && mv src dst", cwd=ws.path)

    assert not (ws.path / "file").exists() and not (ws.path / "src").exists()
    assert (ws.path / "renamed").read_text() == "f\n"
    assert (ws.path / "dst" / "inner" / "two").read_text() == "2\n"
    keys = ws.bucket_keys()
    assert not any(k == "file" or k.startswith("src/") for k in keys), keys
    assert {"renamed", "dst/one", "dst/inner/two"} <= keys
    with ws.fresh_view() as view:
        assert sorted(os.listdir(view)) == ["dst", "renamed"]
        assert (view / "dst" / "one").read_text() == "1\n"


def test_rm_r(ws: Workspace) -> None:
    sh("mkdir -p tree/x/y && touch tree/x/y/z tree/a && echo keep > kept", cwd=ws.path)
    assert any(k.startswith("tree/") for k in ws.bucket_keys())

    run(["rm", "-r", ws.path / "tree"])

    assert os.listdir(ws.path) == ["kept"]
    assert ws.bucket_keys() == {"kept"}
    with ws.fresh_view() as view:
        assert os.listdir(view) == ["kept"]


def test_symlink(ws: Workspace) -> None:
    (ws.path / "target.txt").write_text("pointed at\n")
    run(["ln", "-s", "target.txt", ws.path / "link"])
    run(["ln", "-s", "../elsewhere/missing", ws.path / "dangling"])

    assert os.readlink(ws.path / "link") == "target.txt"
    assert run(["cat", ws.path / "link"]).stdout == "pointed at\n"
    assert stat.S_ISLNK(os.lstat(ws.path / "dangling").st_mode)
    assert {"link", "dangling", "target.txt"} <= ws.bucket_keys()
    with ws.fresh_view() as view:
        assert os.readlink(view / "link") == "target.txt"
        assert os.readlink(view / "dangling") == "../elsewhere/missing"
        assert (view / "link").read_text() == "pointed at\n"


def test_chmod(ws: Workspace) -> None:
    (ws.path / "private").write_text("secret-ish\n")
    (ws.path / "tool").write_text("#!/bin/sh\necho ran\n")
    run(["chmod", "640", ws.path / "private"])
    run(["chmod", "+x", ws.path / "tool"])

    assert run(["stat", "-c", "%a", ws.path / "private"]).stdout.strip() == "640"
    assert run([ws.path / "tool"]).stdout == "ran\n"
    mode = int(ws.head("private")["Metadata"]["mode"])
    assert stat.S_IMODE(mode) == 0o640
    with ws.fresh_view() as view:
        assert stat.S_IMODE(os.stat(view / "private").st_mode) == 0o640
        assert os.stat(view / "tool").st_mode & stat.S_IXUSR


def test_tar_extract_and_create(ws: Workspace, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar"
    run(["tar", "-cf", archive, "-C", tmp_path, "tree"])

    run(["tar", "-xf", archive, "-C", ws.path])
    run(["diff", "-r", "--no-dereference", tree, ws.path / "tree"])
    run(["tar", "-cf", tmp_path / "again.tar", "-C", ws.path, "tree"])
    (tmp_path / "out").mkdir()
    run(["tar", "-xf", tmp_path / "again.tar", "-C", tmp_path / "out"])
    run(["diff", "-r", "--no-dereference", tree, tmp_path / "out" / "tree"])

    assert "tree/docs/deep/data.bin" in ws.bucket_keys()
    with ws.fresh_view() as view:
        run(["diff", "-r", "--no-dereference", tree, view / "tree"])


def test_rsync_archive(ws: Workspace, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    run(["rsync", "-a", f"{tree}/", ws.path / "copy"])
    run(["diff", "-r", "--no-dereference", tree, ws.path / "copy"])
    local = os.stat(tree / "docs" / "readme.txt")
    remote = os.stat(ws.path / "copy" / "docs" / "readme.txt")
    assert int(remote.st_mtime) == int(local.st_mtime)
    assert stat.S_IMODE(os.stat(ws.path / "copy" / "script.sh").st_mode) == 0o755

    # Times and sizes were kept, so a second run has nothing to transfer.
    again = run(["rsync", "-ai", f"{tree}/", ws.path / "copy"]).stdout
    assert not [line for line in again.splitlines() if line.startswith(">f")], again
    with ws.fresh_view() as view:
        run(["diff", "-r", "--no-dereference", tree, view / "copy"])


def test_sqlite3_database(ws: Workspace) -> None:
    database = ws.path / "app.db"
    rows = "\n".join(f"INSERT INTO t(v) VALUES ('row {i}');" for i in range(500))
    run(["sqlite3", database], input=f"CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n"
                                     f"BEGIN;\n{rows}\nCOMMIT;\n")
    run(["sqlite3", database], input="UPDATE t SET v = 'changed' WHERE id <= 100;\n"
                                     "DELETE FROM t WHERE id > 400;\n")
    query = "SELECT count(*), sum(v = 'changed') FROM t; PRAGMA integrity_check;"
    assert run(["sqlite3", database, query]).stdout.split() == ["400|100", "ok"]

    assert "app.db" in ws.bucket_keys()
    assert not any("journal" in k for k in ws.bucket_keys()), ws.bucket_keys()
    local = ws.scratch / "copy.db"
    local.write_bytes(ws.object("app.db"))
    assert run(["sqlite3", local, query]).stdout.split() == ["400|100", "ok"]
    with ws.fresh_view() as view:
        uri = f"file:{view / 'app.db'}?immutable=1"
        assert run(["sqlite3", uri, query]).stdout.split() == ["400|100", "ok"]


def test_git_repository(ws: Workspace) -> None:
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com",
               "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(ws.scratch)}
    repo = ws.path / "repo"
    sh("git init -q repo && cd repo && printf 'one\\n' > a.txt && mkdir sub"
       " && printf 'two\\n' > sub/b.txt && git add . && git commit -q -m first"
       " && printf 'more\\n' >> a.txt && git mv sub/b.txt c.txt && git commit -q -am second"
       " && git gc -q && git fsck --full --strict", cwd=ws.path, env=git_env)

    log = run(["git", "-C", repo, "log", "--format=%s"], env=git_env).stdout.split()
    assert log == ["second", "first"]
    assert run(["git", "-C", repo, "status", "--porcelain"], env=git_env).stdout == ""
    assert "repo/.git/HEAD" in ws.bucket_keys()
    with ws.fresh_view() as view:
        clone = ws.scratch / "clone"
        run(["git", "clone", "-q", view / "repo", clone], env=git_env)
        assert (clone / "a.txt").read_text() == "one\nmore\n"
        assert (clone / "c.txt").read_text() == "two\n"
        run(["git", "-C", clone, "fsck", "--full"], env=git_env)
    shutil.rmtree(ws.scratch / "clone")


def test_unlink_while_open(ws: Workspace) -> None:
    """An open file that is unlinked stays usable and leaves nothing in the bucket."""
    code = ("import os, sys\n"
            "path = sys.argv[1]\n"
            "with open(path, 'w+b') as f:\n"
            "    f.write(b'before')\n"
            "    f.flush()\n"
            "    os.unlink(path)\n"
            "    assert not os.path.exists(path)\n"
            "    f.write(b' after')\n"
            "    f.flush()\n"
            "    f.seek(0)\n"
            "    assert f.read() == b'before after', 'content lost'\n"
            "    info = os.fstat(f.fileno())\n"
            "    assert (info.st_size, info.st_nlink) == (12, 0), info\n")
    run([sys.executable, "-c", code, ws.path / "scratch.tmp"])
    assert os.listdir(ws.path) == []
    assert ws.bucket_keys() == set(), "an unlinked open file reached the bucket"


RENAMEAT2 = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_NOREPLACE = -100, 1
result = libc.renameat2(AT_FDCWD, sys.argv[1].encode(), AT_FDCWD, sys.argv[2].encode(),
                        RENAME_NOREPLACE)
print(0 if result == 0 else ctypes.get_errno())
"""


def test_rename_noreplace(ws: Workspace) -> None:
    (ws.path / "a").write_text("a")
    (ws.path / "b").write_text("b")
    outcome = run([sys.executable, "-c", RENAMEAT2, ws.path / "a", ws.path / "b"]).stdout
    assert int(outcome) == errno.EEXIST
    assert (ws.path / "b").read_text() == "b" and (ws.path / "a").read_text() == "a"
    outcome = run([sys.executable, "-c", RENAMEAT2, ws.path / "a", ws.path / "c"]).stdout
    assert int(outcome) == 0
    assert sorted(os.listdir(ws.path)) == ["b", "c"]
    assert ws.bucket_keys() == {"b", "c"}
