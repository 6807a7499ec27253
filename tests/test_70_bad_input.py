"""Bad input: keys that cannot be file names, odd and long names, bad configuration and
options, a bucket that is missing at mount time or deleted while mounted.

Every case must end in a clear answer (an errno, or one ``qarnotfs: error:`` line and a
non-zero exit) with nothing lost and the mount still serving; never a traceback or a crash.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mounting import Mount, bucket_bytes, bucket_keys, is_mounted, mounted, qarnotfs, run
from servers import empty_and_delete_bucket

from qarnotfs.fs import status

pytestmark = pytest.mark.timeout(120)

LONG = "L" * 300
UNNAMEABLE = ("a//b", "./x", "../y", "./", "//lead", f"{LONG}", f"dir/{LONG}",
              f"dir/{LONG}/inside", "trail/./end", "dots/../up")
ODD_NAMES = ("with space", " leading space", "trailing space ", "tab\there", "cr\rhere",
             "ünïcödé", "日本語のファイル", "emoji 🎉", "quote'\"", "back\\slash",
             "percent%20sign", "plus+sign", "question?", "hash#", "amp&", "star*",
             "semi;colon", "<angle>", "-dash", "~tilde", "x" * 255, "é" * 127)


def assert_alive(mount: Mount) -> None:
    assert mount.pid is not None and status.process_alive(mount.pid), mount.log_text()[-3000:]
    assert is_mounted(mount.mountpoint)


def errno_of(call: Any, *args: Any) -> int:
    """The errno ``call(*args)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as caught:
        call(*args)
    return caught.value.errno or 0


# -- keys that cannot be names ---------------------------------------------------------------


@pytest.mark.mount
def test_unnameable_keys_are_hidden_listed_around_and_logged(
        s3_env: dict[str, str], bucket_name: str, s3_client: Any, tmp_path: Path) -> None:
    for key in UNNAMEABLE:
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"odd")
    s3_client.put_object(Bucket=bucket_name, Key="x", Body=b"file x")
    s3_client.put_object(Bucket=bucket_name, Key="x/y", Body=b"file y")
    s3_client.put_object(Bucket=bucket_name, Key="normal", Body=b"normal")
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        listing = run(["ls", "-laR", mount.mountpoint])  # a real tool, exit 0
        assert "normal" in listing.stdout
        found = run(["find", mount.mountpoint, "-mindepth", "1", "-printf", "%P\n"])
        seen = set(found.stdout.splitlines())
        # "x" is both a file and a folder: the folder wins. "a//b", "trail/./end" and
        # "dots/../up" leave their first folder visible but empty.
        assert seen == {"normal", "x", "x/y", "a", "dir", "trail", "dots"}, seen
        assert (mount.mountpoint / "x").is_dir()
        assert (mount.mountpoint / "x" / "y").read_bytes() == b"file y"
        assert (mount.mountpoint / "normal").read_bytes() == b"normal"
        # A folder holding only hidden keys is not empty: they must not be lost by rmdir.
        assert errno_of(os.rmdir, mount.mountpoint / "a") == errno.ENOTEMPTY
        assert_alive(mount)
        log = mount.log_text()
        # One warning per hidden key or folder (the level where the listing met it).
        for key in ("../", "./", "/", LONG, "x", "a//", f"dir/{LONG}/", f"dir/{LONG}",
                    "dots/../", "trail/./"):
            assert f"WARNING qarnotfs.fs.keys: key {key!r} is hidden" in log, key
        assert "Traceback" not in log
    # Nothing was deleted or rewritten in the bucket.
    assert set(UNNAMEABLE) | {"x", "x/y", "normal"} <= bucket_keys(s3_client, bucket_name)
    assert bucket_bytes(s3_client, bucket_name, "x") == b"file x"


# -- odd names --------------------------------------------------------------------------------


@pytest.mark.mount
@pytest.mark.parametrize("names", [
    pytest.param(ODD_NAMES, id="odd"),
    # moto's server cannot route a key with a newline (404); RGW stores it.
    pytest.param(("new\nline", "two\nnew\nlines\n"), id="newline",
                 marks=pytest.mark.rgw_only),
])
def test_odd_names_round_trip(s3_env: dict[str, str], bucket_name: str, s3_client: Any,
                              tmp_path: Path, names: tuple[str, ...]) -> None:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        folder = mount.mountpoint / "odd dir ✓"
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(name.encode())
        assert sorted(os.listdir(folder)) == sorted(names)
    keys = bucket_keys(s3_client, bucket_name, "odd dir ✓/")
    assert keys == {"odd dir ✓/"} | {f"odd dir ✓/{name}" for name in names}
    for name in names:  # the key is the name, byte for byte (UTF-8)
        assert bucket_bytes(s3_client, bucket_name, f"odd dir ✓/{name}") == name.encode()
    # A new mount process, knowing only the bucket, shows the same names.
    with mounted(bucket_name, tmp_path / "mnt2", s3_env, tmp_path / "w2") as mount:
        folder = mount.mountpoint / "odd dir ✓"
        assert sorted(os.listdir(folder)) == sorted(names)
        for name in names:
            assert (folder / name).read_bytes() == name.encode()


@pytest.mark.mount
def test_non_utf8_names_are_refused_clearly(s3_env: dict[str, str], bucket_name: str,
                                            s3_client: Any, tmp_path: Path) -> None:
    """Bucket keys are UTF-8: a name that is not (b'caf\\xe9', a surrogate-escaped str in
    Python) is refused with EINVAL rather than stored under a mangled key."""
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        raw = os.fsencode(mount.mountpoint) + b"/caf\xe9"
        assert errno_of(os.open, raw, os.O_WRONLY | os.O_CREAT, 0o644) == errno.EINVAL
        assert errno_of(os.mkdir, raw) == errno.EINVAL
        assert errno_of(os.open, os.fsdecode(raw), os.O_RDONLY) in (errno.EINVAL,
                                                                    errno.ENOENT)
        (mount.mountpoint / "fine").write_bytes(b"ok")
        assert os.listdir(mount.mountpoint) == ["fine"]
        assert_alive(mount)
        mount.stop()
    assert bucket_keys(s3_client, bucket_name) == {"fine"}


# -- long names and keys ----------------------------------------------------------------------


@pytest.mark.mount
def test_long_names_and_keys_give_enametoolong(s3_env: dict[str, str], bucket_name: str,
                                               s3_client: Any, tmp_path: Path) -> None:
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w") as mount:
        mnt = mount.mountpoint
        (mnt / ("n" * 255)).write_bytes(b"255 bytes is fine")
        (mnt / ("é" * 127)).write_bytes(b"254 bytes of UTF-8 is fine")
        for name in ("n" * 256, "é" * 128, "n" * 1000):
            assert errno_of((mnt / name).write_bytes, b"x") == errno.ENAMETOOLONG
            assert errno_of(os.mkdir, mnt / name) == errno.ENAMETOOLONG
        # Folders of 200-byte names: the key grows by 201 bytes a level.
        deep = mnt
        for level in range(5):
            deep = deep / (str(level) * 200)
            deep.mkdir()  # 5 levels: a 1005-byte folder key
        (deep / ("f" * 19)).write_bytes(b"a 1024-byte key")
        (deep / ("d" * 18)).mkdir()  # a 1024-byte folder key
        assert errno_of((deep / ("f" * 20)).write_bytes, b"x") == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, deep / ("d" * 19)) == errno.ENAMETOOLONG
        assert errno_of(os.rename, deep / ("f" * 19), deep / ("g" * 20)) == errno.ENAMETOOLONG
        # Renaming the top folder would push the deepest keys over 1024 bytes.
        assert errno_of(os.rename, mnt / ("0" * 200), mnt / ("9" * 210)) == errno.ENAMETOOLONG
        assert (deep / ("f" * 19)).read_bytes() == b"a 1024-byte key"  # rename lost nothing
        assert_alive(mount)
        mount.stop()
    keys = bucket_keys(s3_client, bucket_name)
    assert max(len(k.encode()) for k in keys) == 1024
    assert "n" * 255 in keys and "é" * 127 in keys


# -- configuration and options ----------------------------------------------------------------


BAD_CONFIGS = {
    "not-ini": "this is not an ini file\n[[[\n",
    "bad-bool": "[storage]\nurl = http://127.0.0.1:1\nunsafe = maybe\n",
    "bad-number": "[cluster]\ntimeout = soon\n",
    "binary": "\udcff\udcfe[storage]\n",
}


def write_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.conf"
    path.write_bytes(BAD_CONFIGS[name].encode("utf-8", "surrogateescape"))
    return path


def assert_clear_failure(result: subprocess.CompletedProcess[str], code: int = 1,
                         mentions: str = "") -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("qarnotfs: error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert mentions in result.stderr, (mentions, result.stderr)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_file_is_a_clear_error(s3_env: dict[str, str], tmp_path: Path,
                                          name: str) -> None:
    config = write_config(tmp_path, name)
    assert_clear_failure(qarnotfs("--config", config, "buckets", env=s3_env))
    (tmp_path / "mnt").mkdir()
    result = qarnotfs("mount", "any-bucket", tmp_path / "mnt", "-o", f"config={config}",
                      env=s3_env)
    assert_clear_failure(result)
    assert not is_mounted(tmp_path / "mnt")


def test_missing_config_file_is_a_clear_error(s3_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.conf"
    assert_clear_failure(qarnotfs("--config", missing, "buckets", env=s3_env),
                         mentions=str(missing))


@pytest.mark.parametrize(("options", "mentions"), [
    (["-o", "bogus"], "unknown mount option: bogus"),
    (["-o", "cache_ttl=-1"], "cache_ttl"),
    (["--cache-ttl", "soon"], "cache_ttl"),
    (["--umask", "999"], "umask"),
    (["--uid", "no-such-user-here"], "uid"),
    (["-o", "secret_key=abc"], "cannot be a mount option"),
    (["-o", "staging_dir="], "staging"),
])
def test_bad_mount_options_are_usage_errors(s3_env: dict[str, str], bucket_name: str,
                                            tmp_path: Path, options: list[str],
                                            mentions: str) -> None:
    (tmp_path / "mnt").mkdir()
    result = qarnotfs("mount", bucket_name, tmp_path / "mnt", *options, env=s3_env)
    assert_clear_failure(result, code=2, mentions=mentions)
    assert "abc" not in result.stderr or "secret_key" not in options[-1]
    assert not is_mounted(tmp_path / "mnt")


def test_bad_mount_points_are_clear_errors(s3_env: dict[str, str], bucket_name: str,
                                           tmp_path: Path) -> None:
    assert_clear_failure(qarnotfs("mount", bucket_name, tmp_path / "absent", env=s3_env),
                         mentions="does not exist")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("mine")
    assert_clear_failure(qarnotfs("mount", bucket_name, tmp_path / "full", env=s3_env),
                         mentions="not empty")
    assert (tmp_path / "full" / "something").read_text() == "mine"
    (tmp_path / "file").write_text("a file")
    assert_clear_failure(qarnotfs("mount", bucket_name, tmp_path / "file", env=s3_env),
                         mentions="not a folder")


def test_missing_bucket_at_mount_time(s3_env: dict[str, str], missing_bucket_name: str,
                                      tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    result = qarnotfs("mount", missing_bucket_name, tmp_path / "mnt", env=s3_env)
    assert_clear_failure(result, mentions="does not exist")
    assert missing_bucket_name in result.stderr
    assert not is_mounted(tmp_path / "mnt")
    assert os.listdir(tmp_path / "mnt") == []


# -- the bucket deleted while mounted -------------------------------------------------------


@pytest.mark.mount
def test_bucket_deleted_while_mounted(s3_env: dict[str, str], bucket_name: str,
                                      s3_client: Any, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="there", Body=b"before")
    with mounted(bucket_name, tmp_path / "mnt", s3_env, tmp_path / "w", "--cache-ttl", "0",
                 "--negative-ttl", "0", "--attr-timeout", "0", "--entry-timeout", "0"
                 ) as mount:
        mnt = mount.mountpoint
        assert (mnt / "there").read_bytes() == b"before"
        assert empty_and_delete_bucket(s3_client, bucket_name)
        probe = ("import errno, os, sys\n"
                 "for op in (lambda: os.listdir(sys.argv[1]),\n"
                 "           lambda: open(sys.argv[1] + '/there', 'rb').read(),\n"
                 "           lambda: open(sys.argv[1] + '/new', 'wb').close()):\n"
                 "    try:\n        op()\n        print('ok')\n"
                 "    except OSError as e:\n        print(errno.errorcode[e.errno])\n")
        result = subprocess.run([sys.executable, "-c", probe, os.fspath(mnt)], text=True,
                                capture_output=True, timeout=60, check=True)
        outcomes = result.stdout.split()
        assert outcomes[:2] == ["EIO", "EIO"], outcomes
        assert outcomes[2] in ("EIO", "ENOENT"), outcomes
        assert_alive(mount)
        log = mount.log_text()
        assert "bucket is gone" in log or "NoSuchBucket" in log, log[-3000:]
        assert "Traceback" not in log
        unmounted = qarnotfs("unmount", mnt, "--timeout", "30", env=s3_env)
        assert unmounted.returncode == 0, unmounted.stderr
        assert not is_mounted(mnt)
