"""The ``qarnotfs`` command line, run as a subprocess against the test S3 server.

The environment comes from ``s3_env`` (credentials only there, never in argv) with HOME
pointing at an empty folder, so no configuration file of the machine is read; commands
run through the installed console script (``clirun``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import (  # noqa: F401 (the fixtures)
    cli_env_fixture,
    fails,
    keys_in,
    ok,
    on_terminal,
    qarnotfs,
    work_fixture,
)
from strict_s3 import strict_endpoint

from qarnotfs.demo import why_no_mount

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from servers import S3Server

TIMEOUT = 120


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def fill(s3_client: S3Client, bucket: str, objects: dict[str, str]) -> None:
    for key, text in objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=text.encode())


# -- usage --------------------------------------------------------------------------------


def test_version_and_help(cli_env: dict[str, str], work: Path) -> None:
    assert ok(cli_env, work, "--version").strip() == "qarnotfs 0.1.0"
    text = ok(cli_env, work, "--help")
    for word in ("buckets", "ls", "get", "put", "sync", "rm", "mb", "rb", "demo", "qarnot://",
                 "exit status"):
        assert word in text
    assert "--delete" in ok(cli_env, work, "sync", "--help")


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["ls"], ["ls", "--nope", "b"], ["sync", "a", "b"],
    ["sync", "qarnot://a", "qarnot://b"], ["put", "only-one"], ["get", "bucket-only"],
    ["rm", "bucket-only"], ["ls", "/no-bucket"], ["demo", "--port", "x"],
])
def test_usage_errors_exit_2_with_one_line(cli_env: dict[str, str], work: Path,
                                           argv: list[str]) -> None:
    line = fails(cli_env, work, *argv, status=2)
    assert "Traceback" not in line


def test_put_a_folder_needs_r(cli_env: dict[str, str], work: Path, bucket_name: str) -> None:
    (work / "dir").mkdir()
    assert "use put -r" in fails(cli_env, work, "put", "dir", bucket_name, status=2)


# -- buckets ------------------------------------------------------------------------------


def test_mb_buckets_rb(cli_env: dict[str, str], work: Path, bucket_name: str,
                       s3_client: S3Client) -> None:
    name = f"{bucket_name}-cli"
    try:
        assert ok(cli_env, work, "mb", name).strip() == f"make_bucket: {name}"
        ok(cli_env, work, "mb", name)  # already ours: fine
        assert name in ok(cli_env, work, "buckets").split()
        fill(s3_client, name, {"a/b": "x"})
        assert "not empty" in fails(cli_env, work, "rb", name)
        assert keys_in(s3_client, name) == {"a/b"}
        ok(cli_env, work, "rb", "--force", name)
        assert name not in ok(cli_env, work, "buckets").split()
        assert "does not exist" in fails(cli_env, work, "rb", name)
    finally:
        if name in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}:
            for key in keys_in(s3_client, name):
                s3_client.delete_object(Bucket=name, Key=key)
            s3_client.delete_bucket(Bucket=name)


def test_rb_empty_bucket(cli_env: dict[str, str], work: Path, bucket_name: str,
                         s3_client: S3Client) -> None:
    name = f"{bucket_name}-e"
    s3_client.create_bucket(Bucket=name)
    assert ok(cli_env, work, "rb", f"qarnot://{name}").strip() == f"remove_bucket: {name}"
    assert name not in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}


# -- put, ls, get -------------------------------------------------------------------------


def test_put_files_and_folders_then_ls(cli_env: dict[str, str], work: Path, bucket_name: str,
                                       s3_client: S3Client) -> None:
    make_tree(work, {"a.txt": "alpha", "b.csv": "1,2\n", "tree/x.txt": "x",
                     "tree/deep/y.txt": "yy"})
    out = ok(cli_env, work, "put", "a.txt", "b.csv", bucket_name)
    assert f"upload: a.txt -> {bucket_name}/a.txt" in out
    ok(cli_env, work, "put", "-r", "tree", f"{bucket_name}/data/")
    ok(cli_env, work, "put", "a.txt", f"{bucket_name}/renamed.txt")  # new key: stored as is
    ok(cli_env, work, "put", "b.csv", f"{bucket_name}/data")  # existing folder: goes inside
    assert keys_in(s3_client, bucket_name) == {
        "a.txt", "b.csv", "renamed.txt", "data/tree/x.txt", "data/tree/deep/y.txt",
        "data/b.csv"}

    assert ok(cli_env, work, "ls", bucket_name).splitlines() == [
        "data/", "a.txt", "b.csv", "renamed.txt"]
    assert ok(cli_env, work, "ls", f"{bucket_name}/data").splitlines() == ["tree/", "b.csv"]
    long = ok(cli_env, work, "ls", "-l", bucket_name).splitlines()
    assert long[0].split() == ["PRE", "data/"]
    size, date, time, name = long[1].split()
    assert (size, name) == ("5", "a.txt") and len(date) == 10 and len(time) == 8
    assert ok(cli_env, work, "ls", "-r", f"qarnot://{bucket_name}/data/tree").splitlines() \
        == ["data/tree/deep/y.txt", "data/tree/x.txt"]
    assert ok(cli_env, work, "ls", f"{bucket_name}/a.txt").strip() == "a.txt"
    assert "no such object" in fails(cli_env, work, "ls", f"{bucket_name}/nothing")


def test_put_missing_local_file_uploads_nothing(cli_env: dict[str, str], work: Path,
                                                bucket_name: str, s3_client: S3Client) -> None:
    make_tree(work, {"real.txt": "r"})
    line = fails(cli_env, work, "put", "real.txt", "ghost.txt", bucket_name)
    assert "ghost.txt" in line
    assert keys_in(s3_client, bucket_name) == set()


def test_get_file_folder_and_recursive(cli_env: dict[str, str], work: Path, bucket_name: str,
                                       s3_client: S3Client) -> None:
    fill(s3_client, bucket_name, {"docs/readme.txt": "read me", "docs/sub/deep.txt": "deep",
                                  "docs2/not-me.txt": "no", "docs/empty/": ""})
    ok(cli_env, work, "get", f"{bucket_name}/docs/readme.txt")
    assert (work / "readme.txt").read_text() == "read me"
    ok(cli_env, work, "get", f"{bucket_name}/docs/sub/deep.txt", "renamed.txt")
    assert (work / "renamed.txt").read_text() == "deep"
    ok(cli_env, work, "get", "-r", f"{bucket_name}/docs", "out")
    got = {p.relative_to(work / "out").as_posix() for p in (work / "out").rglob("*")}
    assert got == {"readme.txt", "sub", "sub/deep.txt", "empty"}
    before = set(work.iterdir())
    assert "no such file" in fails(cli_env, work, "get", f"{bucket_name}/docs/missing.txt")
    assert set(work.iterdir()) == before


def test_get_r_never_writes_outside_the_folder(cli_env: dict[str, str], work: Path,
                                               bucket_name: str, s3_client: S3Client) -> None:
    fill(s3_client, bucket_name, {"p/ok.txt": "fine", "p/../../evil.txt": "evil",
                                  "p/a/../../../evil2.txt": "evil"})
    result = qarnotfs(cli_env, work, "get", "-r", f"{bucket_name}/p", "out/inner")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("skipping key") == 2
    written = {p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()}
    assert written == {"out/inner/ok.txt"}


# -- sync ---------------------------------------------------------------------------------


def test_sync_up_delete_is_explicit_and_dry_run_changes_nothing(
        cli_env: dict[str, str], work: Path, bucket_name: str, s3_client: S3Client) -> None:
    make_tree(work / "src", {"one.txt": "1", "sub/two.txt": "2"})
    fill(s3_client, bucket_name, {"pre/stale.txt": "s", "pre2/keep.txt": "k"})
    remote = f"qarnot://{bucket_name}/pre"
    out = ok(cli_env, work, "sync", "src", remote)
    assert f"upload: src/sub/two.txt -> {bucket_name}/pre/sub/two.txt" in out
    assert keys_in(s3_client, bucket_name) == {
        "pre/one.txt", "pre/sub/two.txt", "pre/stale.txt", "pre2/keep.txt"}
    assert "upload" not in ok(cli_env, work, "sync", "src", remote)  # nothing changed

    plan = ok(cli_env, work, "sync", "--dry-run", "--delete", "src", remote)
    assert plan.splitlines() == [f"(dry run) delete: {bucket_name}/pre/stale.txt"]
    assert "pre/stale.txt" in keys_in(s3_client, bucket_name)
    ok(cli_env, work, "sync", "--delete", "src", remote)
    assert keys_in(s3_client, bucket_name) == {"pre/one.txt", "pre/sub/two.txt",
                                               "pre2/keep.txt"}


def test_sync_down(cli_env: dict[str, str], work: Path, bucket_name: str,
                   s3_client: S3Client) -> None:
    fill(s3_client, bucket_name, {"d/a.txt": "a", "d/e/b.txt": "b", "d2/no.txt": "n"})
    make_tree(work / "dst", {"a.txt": "a", "extra.txt": "local only"})
    remote = f"qarnot://{bucket_name}/d"
    plan = ok(cli_env, work, "sync", "-n", remote, "dst")
    assert plan.splitlines() == [f"(dry run) download: {bucket_name}/d/e/b.txt -> dst/e/b.txt"]
    assert not (work / "dst" / "e").exists()
    ok(cli_env, work, "sync", remote, "dst")
    assert (work / "dst" / "e" / "b.txt").read_text() == "b"
    assert (work / "dst" / "extra.txt").exists()
    ok(cli_env, work, "sync", "--delete", remote, "dst")
    files = {p.relative_to(work / "dst").as_posix() for p in (work / "dst").rglob("*.txt")}
    assert files == {"a.txt", "e/b.txt"}


# -- rm -----------------------------------------------------------------------------------


def test_rm_keys_and_prefixes(cli_env: dict[str, str], work: Path, bucket_name: str,
                              s3_client: S3Client) -> None:
    fill(s3_client, bucket_name, {"k1": "1", "k2": "2", "p/a": "a", "p/b/c": "c", "p2/x": "x"})
    line = fails(cli_env, work, "rm", f"{bucket_name}/k1", f"{bucket_name}/nope")
    assert "nope" in line and "nothing was deleted" in line
    assert "k1" in keys_in(s3_client, bucket_name)
    assert ok(cli_env, work, "rm", f"{bucket_name}/k1").strip() == f"delete: {bucket_name}/k1"
    ok(cli_env, work, "rm", "-r", f"{bucket_name}/p")
    assert keys_in(s3_client, bucket_name) == {"k2", "p2/x"}
    assert "no objects" in fails(cli_env, work, "rm", "-r", f"{bucket_name}/p")


# -- runtime errors -----------------------------------------------------------------------


def test_missing_bucket(cli_env: dict[str, str], work: Path, missing_bucket_name: str) -> None:
    for argv in (["ls", missing_bucket_name], ["get", f"{missing_bucket_name}/k"],
                 ["rm", f"{missing_bucket_name}/k"]):
        assert missing_bucket_name in fails(cli_env, work, *argv)


def test_bad_credentials(cli_env: dict[str, str], work: Path, s3_server: S3Server) -> None:
    with strict_endpoint(s3_server.backend, s3_server.endpoint_url) as url:
        env = {**cli_env, "QARNOT_STORAGE_URL": url, "AWS_ACCESS_KEY_ID": "no-such-key",
               "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
        line = fails(env, work, "buckets")
    assert "InvalidAccessKeyId" in line or "SignatureDoesNotMatch" in line or "403" in line
    assert "wrong-secret-value" not in line


def test_unreachable_endpoint(cli_env: dict[str, str], work: Path) -> None:
    with socket.socket() as placeholder:  # bound, never listening: refused at once
        placeholder.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
        line = fails({**cli_env, "QARNOT_STORAGE_URL": url}, work, "ls", "any-bucket")
    assert "unreachable" in line


def test_configuration_problems(cli_env: dict[str, str], work: Path) -> None:
    bad = work / "bad.conf"
    bad.write_text("[cluster]\nurl = x\nmystery = 1\n")
    assert "unknown option 'mystery'" in fails(cli_env, work, "--config", "bad.conf", "buckets")
    assert "not found" in fails(cli_env, work, "--config", "missing.conf", "buckets")
    bare = {k: v for k, v in cli_env.items()
            if k not in ("QARNOT_STORAGE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert "no credentials" in fails(bare, work, "buckets")


def test_config_file_is_used(cli_env: dict[str, str], work: Path, s3_server: S3Server,
                             bucket_name: str) -> None:
    conf = work / "direct.conf"
    conf.write_text(f"[storage]\nurl = {s3_server.endpoint_url}\n"
                    f"access_key = {s3_server.access_key}\nsecret_key = {s3_server.secret_key}\n")
    bare = {k: v for k, v in cli_env.items()
            if k not in ("QARNOT_STORAGE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert bucket_name in ok(bare, work, "--config", str(conf), "buckets").split()


def test_debug_shows_requests_but_never_secrets(cli_env: dict[str, str], work: Path,
                                                s3_server: S3Server, bucket_name: str) -> None:
    env = dict(cli_env)
    if s3_server.backend == "moto":  # moto takes any secret: use one that cannot be mistaken
        env["AWS_SECRET_ACCESS_KEY"] = "Sup3r-Secret-Value-42"
    secret = env["AWS_SECRET_ACCESS_KEY"]
    result = qarnotfs(env, work, "--debug", "ls", "-r", bucket_name)
    assert result.returncode == 0, result.stderr
    assert "Authorization" in result.stderr and "***" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert "Signature=" not in result.stderr.replace("Signature=***", "")
    failed = qarnotfs(env, work, "--debug", "ls", f"{bucket_name}-missing")
    assert failed.returncode == 1 and "Traceback" in failed.stderr
    assert secret not in failed.stderr


# -- progress -----------------------------------------------------------------------------


def test_progress_bars_only_on_a_terminal(cli_env: dict[str, str], work: Path,
                                          bucket_name: str) -> None:
    (work / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    piped = qarnotfs(cli_env, work, "put", "big.bin", bucket_name)
    assert piped.returncode == 0 and piped.stderr == ""

    drawn = on_terminal(cli_env, work, "put", "big.bin", f"{bucket_name}/again.bin")
    assert "again.bin" in drawn and "2.00M" in drawn
    assert on_terminal(cli_env, work, "--quiet", "put", "big.bin",
                       f"{bucket_name}/third.bin") == ""


# -- the demo -----------------------------------------------------------------------------


def test_demo(cli_env: dict[str, str], work: Path) -> None:
    out = ok(cli_env, work, "demo")
    for expected in ("$ qarnotfs mb demo", "$ qarnotfs ls -l -r demo", " 9437184 ",
                     "big-input.bin", "(dry run) upload: results/summary.txt",
                     "Hello from qarnotfs!", "delete: demo/results/run-2/output.txt"):
        assert expected in out, expected
    assert list(work.iterdir()) == []  # the demo cleans up after itself
    reason = why_no_mount()
    if reason is None:  # the mount step ran for real: ls, cat, mkdir, cp, the new object
        for expected in ("$ qarnotfs mount demo mnt", "$ cp measurements.csv mnt/new-folder/",
                         "      71 ", "new-folder/copy.csv", "$ qarnotfs unmount mnt"):
            assert expected in out, expected
    else:
        assert f"(skipped: {reason})" in out


def test_mount_helper_convention_reaches_the_mount_code(cli_env: dict[str, str],
                                                        work: Path) -> None:
    """``qarnotfs BUCKET /DIR -o OPTS`` (how mount.fuse3 calls us) is not a usage error."""
    result = qarnotfs(cli_env, work, "some-bucket", str(work / "no-such-dir"), "-o", "ro")
    assert result.returncode == 1, result.stderr
    assert "no-such-dir" in result.stderr and "invalid choice" not in result.stderr


def test_demo_keep_serves_until_interrupted(cli_env: dict[str, str], work: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "qarnotfs", "--quiet", "demo", "--keep"],
                            env=cli_env, cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        exports: dict[str, str] = {}
        for line in demo.stdout:  # ends at EOF if the demo dies: then the assert fails
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                exports[name] = value
            if line.startswith("Press Ctrl-C"):
                break
        assert set(exports) == {"QARNOT_STORAGE_URL", "AWS_ACCESS_KEY_ID",
                                "AWS_SECRET_ACCESS_KEY"}
        listing = ok({**cli_env, **exports}, work, "ls", "-r", "demo")
        assert "big-input.bin" in listing.split()
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=30)
        assert demo.returncode == 0, err
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_port_in_use_is_a_clear_error(cli_env: dict[str, str], work: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        line = fails(cli_env, work, "demo", "--port", port)
    assert f"127.0.0.1:{port}" in line


def test_demo_without_moto_says_what_to_install(cli_env: dict[str, str], work: Path) -> None:
    code = ("import sys; sys.modules['moto'] = None; sys.modules['moto.server'] = None; "
            "from qarnotfs.cli import main; sys.exit(main(['demo']))")
    result = subprocess.run([sys.executable, "-c", code], env=cli_env, cwd=work,
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == ("qarnotfs: error: the demo needs moto, an optional "
                                     "dependency: pip install 'qarnotfs[demo]'")
