"""The command line's habits, through the installed ``qarnotfs`` console script.

What rclone and aws-cli users expect: bucket names checked before any request, ``get``
into folders, ``rm`` of a folder, ``ls -lh``, options after the command, ``-V``, JSON
listings, the AWS credential chain, a quiet end when the reader goes away, empty folders
kept by ``put -r``, and the unfinished multipart uploads listed and aborted.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import (  # noqa: F401 (the fixtures)
    SCRIPT,
    TIMEOUT,
    cli_env_fixture,
    fails,
    keys_in,
    ok,
    qarnotfs,
    work_fixture,
)
from strict_s3 import strict_endpoint

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from servers import S3Server

# -- names and usage ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["ls", "bad name!"], ["ls", "qarnot:/data"], ["get", "a|b/key"], ["put", "x", "no*pe"],
    ["mount", "qarnot:/data/proj", "/tmp"], ["rm", "a b/c"],
])
def test_invalid_bucket_names_are_one_line(cli_env: dict[str, str], work: Path,
                                           argv: list[str]) -> None:
    (work / "x").write_text("x")
    line = fails(cli_env, work, *argv, status=2)
    assert "is not a valid bucket name: a bucket name is made of letters, digits" in line


def test_version_short_flag_and_options_after_the_command(
        cli_env: dict[str, str], work: Path, bucket_name: str, s3_client: S3Client) -> None:
    assert ok(cli_env, work, "-V").strip() == "qarnotfs 0.1.0"
    (work / "f.txt").write_text("quiet")
    assert ok(cli_env, work, "put", "f.txt", bucket_name, "-q") == ""
    assert keys_in(s3_client, bucket_name) == {"f.txt"}
    debug = qarnotfs(cli_env, work, "ls", bucket_name, "--debug")
    assert "DEBUG" in debug.stderr and debug.stdout.strip() == "f.txt"
    quiet_log = qarnotfs(cli_env, work, "ls", bucket_name, "--log-level", "error")
    assert quiet_log.returncode == 0 and quiet_log.stderr == ""
    assert "invalid choice" in fails(cli_env, work, "ls", bucket_name, "--log-level", "loud",
                                     status=2)


def test_ls_human_readable_and_json(cli_env: dict[str, str], work: Path, bucket_name: str,
                                    s3_client: S3Client) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="big.bin", Body=b"\0" * (3 * 1024 * 1024 // 2))
    s3_client.put_object(Bucket=bucket_name, Key="dir/small.txt", Body=b"12345")
    lines = ok(cli_env, work, "ls", "-lh", bucket_name).splitlines()
    assert lines[0].split() == ["PRE", "dir/"]
    size, _date, _time, name = lines[1].split()
    assert (size, name) == ("1.5MiB", "big.bin")
    assert "usage" in ok(cli_env, work, "ls", "--help")
    rows = [json.loads(line) for line in
            ok(cli_env, work, "ls", "--json", "-r", bucket_name).splitlines()]
    assert [(r["key"], r["size"]) for r in rows] == [("big.bin", 1572864), ("dir/small.txt", 5)]
    assert all(r["type"] == "object" and r["last_modified"] and r["etag"] for r in rows)


# -- get and rm ---------------------------------------------------------------------------


def test_get_into_a_folder(cli_env: dict[str, str], work: Path, bucket_name: str,
                           s3_client: S3Client) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="docs/readme.txt", Body=b"read me")
    out = ok(cli_env, work, "get", f"{bucket_name}/docs/readme.txt", "new/")
    assert (work / "new" / "readme.txt").read_bytes() == b"read me"
    assert out.strip() == f"download: {bucket_name}/docs/readme.txt -> new/readme.txt"
    (work / "existing").mkdir()
    ok(cli_env, work, "get", f"{bucket_name}/docs/readme.txt", "existing")
    assert (work / "existing" / "readme.txt").read_bytes() == b"read me"
    ok(cli_env, work, "get", f"{bucket_name}/docs/readme.txt", "plain")
    assert (work / "plain").read_bytes() == b"read me"
    line = fails(cli_env, work, "get", f"{bucket_name}/docs", status=2)
    assert "is a folder: use get -r" in line


def test_rm_of_a_folder_needs_r(cli_env: dict[str, str], work: Path, bucket_name: str,
                                s3_client: S3Client) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="dir/a", Body=b"a")
    line = fails(cli_env, work, "rm", f"{bucket_name}/dir", status=2)
    assert "is a folder: use rm -r" in line and "nothing was deleted" in line
    assert keys_in(s3_client, bucket_name) == {"dir/a"}
    assert "no such object" in fails(cli_env, work, "rm", f"{bucket_name}/nothing")


# -- put ----------------------------------------------------------------------------------


def test_put_r_keeps_empty_folders_and_says_each_file(
        cli_env: dict[str, str], work: Path, bucket_name: str, s3_client: S3Client) -> None:
    (work / "tree" / "empty" / "deeper").mkdir(parents=True)
    (work / "tree" / "full").mkdir()
    (work / "tree" / "full" / "f.txt").write_text("f")
    out = ok(cli_env, work, "put", "-r", "tree", bucket_name)
    assert keys_in(s3_client, bucket_name) == {"tree/full/f.txt", "tree/empty/deeper/"}
    assert f"upload: tree/full/f.txt -> {bucket_name}/tree/full/f.txt" in out
    assert f"{bucket_name}/tree/empty/deeper/" in out
    ok(cli_env, work, "get", "-r", bucket_name, "back")
    assert (work / "back" / "tree" / "empty" / "deeper").is_dir()


# -- scripts and pipes --------------------------------------------------------------------


def test_broken_pipe_ends_quietly(cli_env: dict[str, str], work: Path, bucket_name: str,
                                  s3_client: S3Client) -> None:
    for number in range(200):  # 200 KB: well over a pipe's 64 KiB buffer
        s3_client.put_object(Bucket=bucket_name, Key=f"{number:03d}-{'x' * 990}", Body=b"")
    with subprocess.Popen([os.fspath(SCRIPT), "ls", "-r", bucket_name], env=cli_env, cwd=work,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as reader:
        assert reader.stdout is not None and reader.stderr is not None
        assert reader.stdout.readline().startswith(b"000-x")
        reader.stdout.close()  # as head -1 does
        errors = reader.stderr.read()
        assert reader.wait(timeout=TIMEOUT) == 141  # 128 + SIGPIPE, as a shell reports it
    assert errors == b"", errors


def test_uploads_lists_and_aborts_unfinished_multipart_uploads(
        cli_env: dict[str, str], work: Path, bucket_name: str, s3_client: S3Client) -> None:
    started = s3_client.create_multipart_upload(Bucket=bucket_name, Key="logs/half.bin")
    upload_id = started["UploadId"]
    listed = ok(cli_env, work, "uploads", bucket_name).splitlines()
    assert len(listed) == 1 and listed[0].endswith(f"{upload_id} logs/half.bin")
    assert "no unfinished" in ok(cli_env, work, "uploads", f"{bucket_name}/other")
    aborted = ok(cli_env, work, "uploads", f"{bucket_name}/logs", "--abort")
    assert f"abort: {bucket_name}/logs/half.bin" in aborted
    assert s3_client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []


# -- credentials --------------------------------------------------------------------------


def _without_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if not k.startswith(("AWS_", "QARNOT_"))}


def test_aws_default_profile_and_its_endpoint(cli_env: dict[str, str], work: Path,
                                              s3_server: S3Server, bucket_name: str) -> None:
    aws = Path(cli_env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n")
    (aws / "config").write_text(f"[default]\nendpoint_url = {s3_server.endpoint_url}\n")
    env = _without_credentials(cli_env)
    assert bucket_name in ok(env, work, "buckets").split()
    (aws / "config").write_text("[default]\n")
    with_variable = {**env, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    assert bucket_name in ok(with_variable, work, "buckets").split()


def test_wrong_secret_says_check_the_secret_key_for_every_command(
        cli_env: dict[str, str], work: Path, s3_server: S3Server) -> None:
    with strict_endpoint(s3_server.backend, s3_server.endpoint_url) as url:
        env = {**cli_env, "QARNOT_STORAGE_URL": url, "AWS_ACCESS_KEY_ID": "no-such-key",
               "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
        for argv in (["buckets"], ["ls", "somebucket"], ["get", "somebucket/key"],
                     ["uploads", "somebucket"]):
            line = fails(env, work, *argv)
            assert "check the access key and the secret key" in line, argv
            assert "wrong-secret-value" not in line


def test_config_file_readable_by_others_is_warned_about(
        cli_env: dict[str, str], work: Path, s3_server: S3Server, bucket_name: str) -> None:
    conf = _readable_config(work, s3_server)
    env = _without_credentials(cli_env)
    result = qarnotfs(env, work, "--config", str(conf), "buckets")
    assert result.returncode == 0
    assert f"{conf} holds a secret and other users may read it: run chmod 600" in result.stderr
    conf.chmod(0o600)
    assert qarnotfs(env, work, "--config", str(conf), "buckets").stderr == ""


def test_help_topics_and_bash_completion(cli_env: dict[str, str], work: Path) -> None:
    assert "LOCAL... BUCKET[/PREFIX]" in ok(cli_env, work, "help", "put")
    assert "no command 'frob'" in fails(cli_env, work, "help", "frob", status=2)
    script = work / "completion.bash"
    script.write_text(ok(cli_env, work, "completion", "bash"))
    completed = subprocess.run(
        ["bash", "-c", f'source "{script}"; '
         'COMP_WORDS=(qarnotfs up); COMP_CWORD=1; _qarnotfs; echo "${COMPREPLY[@]}"; '
         'COMP_WORDS=(qarnotfs mount --stag); COMP_CWORD=2; _qarnotfs; '
         'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert completed.stdout.splitlines() == ["uploads", "--staging-dir"]


def test_zsh_completes_commands_and_options(cli_env: dict[str, str], work: Path) -> None:
    """A real interactive zsh on a pseudo-terminal, the completion in its $fpath: TAB
    completes a command, then lists a command's option."""
    functions = work / "zsh"
    functions.mkdir()
    (functions / "_qarnotfs").write_text(ok(cli_env, work, "completion", "zsh"))
    pid, terminal = pty.fork()
    if pid == 0:  # the child: zsh without any user configuration
        os.execvpe("zsh", ["zsh", "-f", "-i"], {"PATH": os.environ["PATH"], "TERM": "dumb",
                                                "HOME": os.fspath(work), "PS1": "%% "})
    try:
        os.write(terminal, f"fpath=({functions} $fpath); autoload -U compinit; "
                           "compinit -u -D; echo READY\n".encode())
        _read_until(terminal, "READY\r")
        os.write(terminal, b"qarnotfs up\t")
        assert "qarnotfs uploads " in _read_until(terminal, "uploads")
        os.write(terminal, b"\x15qarnotfs sync --chec\t")  # ^U: a new line
        assert "--checksum" in _read_until(terminal, "--checksum")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(terminal)


def _read_until(terminal: int, text: str) -> str:
    """What the terminal shows until ``text`` appears (or TIMEOUT passes)."""
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    while text.encode() not in seen and time.monotonic() < deadline:
        if select.select([terminal], [], [], 0.5)[0]:
            seen += os.read(terminal, 65536)
    return seen.decode(errors="replace")


def test_man_page_names_every_command(cli_env: dict[str, str], work: Path) -> None:
    page = work / "qarnotfs.1"
    page.write_text(ok(cli_env, work, "help", "--man"))
    shown = subprocess.run(["man", "-l", os.fspath(page)], env={**cli_env, "MANWIDTH": "100"},
                           capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert shown.lstrip().startswith("QARNOTFS(1)")
    commands = re.findall(r"^ {7}qarnotfs (\w+)$", shown, re.MULTILINE)
    assert set(commands) >= {"buckets", "ls", "get", "put", "sync", "rm", "mb", "rb",
                             "uploads", "demo", "help", "completion", "mount", "unmount",
                             "status"}  # (umount is unmount's alias, shown with it)
    assert "--checksum" in shown and "--log-syslog" in shown


def _readable_config(work: Path, s3_server: S3Server) -> Path:
    """A configuration file with the secret, readable by others: warned about (a log
    record at warning level, what the logging tests look for)."""
    conf = work / "shared.conf"
    conf.write_text(f"[storage]\nurl = {s3_server.endpoint_url}\n"
                    f"access_key = {s3_server.access_key}\nsecret_key = {s3_server.secret_key}\n")
    conf.chmod(0o644)
    return conf


def test_log_lines_carry_their_priority_for_journald(
        cli_env: dict[str, str], work: Path, s3_server: S3Server) -> None:
    conf = _readable_config(work, s3_server)
    journal = work / "journal"
    with open(journal, "w") as stderr:
        info = os.fstat(stderr.fileno())
        env = {**_without_credentials(cli_env),
               "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        subprocess.run([os.fspath(SCRIPT), "--config", os.fspath(conf), "buckets"], env=env,
                       cwd=work, stdout=subprocess.DEVNULL, stderr=stderr, timeout=TIMEOUT,
                       check=True)
    assert journal.read_text().startswith(f"<4>qarnotfs.config: {conf} holds a secret")


def test_log_syslog_sends_records_to_the_syslog_socket(
        cli_env: dict[str, str], work: Path, s3_server: S3Server) -> None:
    """A unix datagram socket bound in a temporary folder stands in for /dev/log."""
    conf = _readable_config(work, s3_server)
    address = os.fspath(work / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(address)
        syslog.settimeout(TIMEOUT)
        result = qarnotfs(_without_credentials(cli_env), work, "--config", os.fspath(conf),
                          "buckets", "--log-syslog", address)
        assert result.returncode == 0 and result.stderr == ""
        record = syslog.recv(65536).decode()
    # <12>: facility user (1), priority warning (4); then the ident with the pid.
    assert re.fullmatch(rf"<12>qarnotfs\[\d+\]: qarnotfs\.config: {re.escape(str(conf))} "
                        r"holds a secret.*\x00?", record, re.DOTALL), record
    assert s3_server.secret_key not in record
    missing = fails(cli_env, work, "buckets", "--log-syslog", os.fspath(work / "none.sock"))
    assert "cannot log to syslog at" in missing


def test_sync_filters_and_size_only(cli_env: dict[str, str], work: Path, bucket_name: str,
                                    s3_client: S3Client) -> None:
    tree = work / "tree"
    (tree / "sub").mkdir(parents=True)
    for name, text in {"a.txt": "aaaa", "junk.tmp": "j", "keep.tmp": "k",
                       "sub/b.txt": "bb"}.items():
        (tree / name).write_text(text)
    s3_client.put_object(Bucket=bucket_name, Key="p/old.tmp", Body=b"excluded: kept")
    remote = f"qarnot://{bucket_name}/p"
    out = ok(cli_env, work, "sync", "tree", remote, "--delete", "--exclude", "*.tmp",
             "--include", "keep.tmp")
    assert keys_in(s3_client, bucket_name) == {"p/a.txt", "p/keep.tmp", "p/sub/b.txt",
                                               "p/old.tmp"}
    assert "junk.tmp" not in out and "old.tmp" not in out
    (tree / "a.txt").write_text("AAAA")  # same size, other content
    assert ok(cli_env, work, "sync", "tree", remote, "--size-only", "--exclude", "*.tmp") == ""
    assert s3_client.get_object(Bucket=bucket_name, Key="p/a.txt")["Body"].read() == b"aaaa"
    assert "upload: tree/a.txt" in ok(cli_env, work, "sync", "tree", remote,
                                      "--exclude", "*.tmp")

    down = work / "down"
    down.mkdir()
    (down / "local-only.tmp").write_text("stays: excluded")
    (down / "a.txt").write_text("zzzz")  # same size as the object
    out = ok(cli_env, work, "sync", remote, "down", "--delete", "--size-only",
             "--exclude", "*.tmp")
    assert (down / "a.txt").read_text() == "zzzz" and (down / "sub" / "b.txt").exists()
    assert (down / "local-only.tmp").exists() and not (down / "keep.tmp").exists()
    assert "delete" not in out
