"""Unit tests of the foundation (no server): configuration, paths, checksums, sync plans,
progress, log redaction, and the CLI's pure parts (remote paths, exit statuses)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from qarnotfs import logs
from qarnotfs.checksums import SHA1_METADATA_KEY, fingerprint, normalize_etag
from qarnotfs.cli import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Remote,
    UsageError,
    build_parser,
    exit_status,
    parse_remote,
)
from qarnotfs.config import DEFAULT_CLUSTER_URL, Settings, load_settings
from qarnotfs.connection import PART_SIZE
from qarnotfs.exceptions import ConfigurationException, MissingBucketException
from qarnotfs.objects import ObjectInfo
from qarnotfs.paths import as_prefix, local_path_for_key, sanitize_key
from qarnotfs.progress import Progress
from qarnotfs.sync import plan_download, plan_upload

NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


# -- configuration ------------------------------------------------------------------------


def write_conf(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_explicit_over_env_over_file(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "q.conf", "[cluster]\nurl = https://file\ntimeout = 7\n"
                      "[client]\ntoken = file-token\n[storage]\nurl = https://file-storage\n")
    env = {"QARNOT_CLUSTER_URL": "https://env", "QARNOT_CLIENT_TOKEN": "env-token"}
    settings = load_settings(conf, environ=env, cluster_url="https://explicit")
    assert settings.cluster_url == "https://explicit"
    assert settings.client_token == "env-token"
    assert settings.storage_url == "https://file-storage"
    assert settings.cluster_timeout == 7.0
    assert settings.config_file == str(conf)


def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("QARNOTFS_CONFIG", raising=False)
    settings = load_settings(environ={})
    assert settings.cluster_url == DEFAULT_CLUSTER_URL
    assert settings.client_token is None and not settings.direct
    assert settings.config_file is None


def test_qarnotfs_config_variable_names_the_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write_conf(tmp_path / "c.conf", "[client]\ntoken = from-variable\n")
    monkeypatch.setenv("QARNOTFS_CONFIG", str(conf))
    assert load_settings(environ={}).client_token == "from-variable"


def test_direct_mode_and_booleans(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "q.conf", "[storage]\nurl = http://s3\naccess_key = ak\n"
                      "secret_key = sk\nunsafe = yes\n[cluster]\nunsafe = off\n")
    settings = load_settings(conf, environ={})
    assert settings.direct
    assert settings.storage_unsafe is True and settings.cluster_unsafe is False


def test_fileconf_mapping_accepts_sdk_alias() -> None:
    settings = load_settings({"client_auth": "tok", "cluster_url": "https://c"}, environ={})
    assert settings.client_token == "tok" and settings.cluster_url == "https://c"


def test_repr_hides_secrets() -> None:
    text = repr(Settings(client_token="token-value", secret_key="secret-value"))
    assert "token-value" not in text and "secret-value" not in text and "***" in text


@pytest.mark.parametrize(("content", "message"), [
    ("[cluster]\nurl = x\nbogus = 1\n", "unknown option 'bogus'"),
    ("this is not ini\n", "cannot read configuration file"),
    ("[cluster]\ntimeout = soon\n", "timeout must be a number"),
    ("[storage]\nunsafe = maybe\n", "must be true or false"),
    ("[cluster]\nurl = a\nurl = b\n", "cannot read configuration file"),
])
def test_bad_config_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    conf = write_conf(tmp_path / "bad.conf", content)
    with pytest.raises(ConfigurationException, match=message):
        load_settings(conf, environ={})


def test_named_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationException, match="not found"):
        load_settings(tmp_path / "nope.conf", environ={})
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigurationException, match="cannot read"):
        load_settings(binary, environ={})


def test_unknown_keyword_in_mapping_is_refused() -> None:
    with pytest.raises(ConfigurationException, match="unknown setting"):
        load_settings({"clusterurl": "x"}, environ={})


# -- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(("remote", "key"), [
    ("a//b///c", "a/b/c"), ("/lead", "lead"), ("///x//", "x/"), ("plain", "plain"),
])
def test_sanitize_key(remote: str, key: str) -> None:
    assert sanitize_key(remote, warn=False) == key


def test_sanitize_key_warns_only_on_change(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sanitize_key("ok/key")
        assert not caplog.records
        sanitize_key("//bad")
    assert "sanitized" in caplog.text


@pytest.mark.parametrize(("remote", "prefix"), [
    (None, ""), ("", ""), ("/", ""), ("pre", "pre/"), ("pre/", "pre/"), ("/a//b/", "a/b/"),
])
def test_as_prefix_ends_at_a_slash(remote: str | None, prefix: str) -> None:
    assert as_prefix(remote) == prefix


def test_local_path_for_key_stays_inside(tmp_path: Path) -> None:
    assert local_path_for_key(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    assert local_path_for_key(tmp_path, "./a//./b") == tmp_path / "a" / "b"
    assert local_path_for_key(tmp_path, "/abs/x") == tmp_path / "abs" / "x"
    for bad in ("../x", "../../x", "a/../../x", "a/..", "..", "", "/", ".", "a\0b"):
        assert local_path_for_key(tmp_path, bad) is None, bad


# -- checksums ----------------------------------------------------------------------------


def multipart_etag(data: bytes, part: int) -> str:
    digests = b"".join(hashlib.md5(data[i:i + part]).digest()
                       for i in range(0, len(data), part))
    return f"{hashlib.md5(digests).hexdigest()}-{-(-len(data) // part)}"


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 2000, 2500])
def test_etag_rule_with_small_parts(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    result = fingerprint(path, part_size=1000)
    assert result.size == size
    assert result.sha1 == hashlib.sha1(data).hexdigest()
    expected = hashlib.md5(data).hexdigest() if size < 1000 else multipart_etag(data, 1000)
    assert result.etag == expected


def test_etag_rule_at_the_real_8_mib_boundary(tmp_path: Path) -> None:
    below, exact = tmp_path / "below", tmp_path / "exact"
    data = os.urandom(PART_SIZE)
    below.write_bytes(data[:-1])
    exact.write_bytes(data)
    assert fingerprint(below).etag == hashlib.md5(data[:-1]).hexdigest()
    assert fingerprint(exact).etag == multipart_etag(data, PART_SIZE)
    assert fingerprint(exact).etag.endswith("-1")


def test_normalize_etag() -> None:
    assert normalize_etag('"abc-2"') == "abc-2"
    assert ObjectInfo("k", 1, '"e"', NOW).etag == "e"


# -- sync planning ------------------------------------------------------------------------


def local_files(root: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    paths = {}
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def remote_object(key: str, data: bytes, sha1_meta: str | None = None,
                  etag: str | None = None) -> ObjectInfo:
    metadata = {SHA1_METADATA_KEY: sha1_meta} if sha1_meta is not None else None
    return ObjectInfo(key, len(data), f'"{etag or hashlib.md5(data).hexdigest()}"', NOW,
                      metadata)


def no_stat(key: str) -> ObjectInfo | None:
    raise AssertionError(f"unexpected HEAD of {key}")


def test_plan_upload_decisions(tmp_path: Path) -> None:
    files = local_files(tmp_path, {
        "same": b"same", "grown": b"longer now", "changed": b"AAAA", "new": b"brand new",
        "renamed": b"moved content",
    })
    existing = {
        "same": remote_object("same", b"same"),
        "grown": remote_object("grown", b"short"),
        "changed": remote_object("changed", b"BBBB"),
        "old-name": remote_object("old-name", b"moved content"),
        "gone": remote_object("gone", b"x"),
    }
    stats: list[str] = []

    def stat(key: str) -> ObjectInfo | None:
        stats.append(key)
        return remote_object(key, b"BBBB", sha1_meta=hashlib.sha1(b"BBBB").hexdigest())

    plan = plan_upload(files, existing, stat)
    assert plan.unchanged == ["same"]
    assert sorted(k for k, _ in plan.uploads) == ["changed", "grown", "new"]
    assert plan.copies == [("old-name", "renamed")]
    assert plan.deletes == ["gone", "old-name"]
    assert stats == ["changed"]  # only a same-size, different-ETag object costs a HEAD
    lines = list(plan.describe("b"))
    assert lines[0] == "copy: b/old-name -> b/renamed"
    assert "delete: b/gone" in lines
    assert sum(line.startswith("upload: ") for line in lines) == 3


def test_plan_upload_trusts_sha1_metadata_when_etags_differ(tmp_path: Path) -> None:
    data = b"content"
    files = local_files(tmp_path, {"k": data})
    remote = remote_object("k", data, etag="0" * 32 + "-1",
                           sha1_meta=hashlib.sha1(data).hexdigest())
    plan = plan_upload(files, {"k": remote}, no_stat)
    assert plan.unchanged == ["k"] and not plan.uploads


def test_plan_download_decisions(tmp_path: Path) -> None:
    root = tmp_path / "out"
    local_files(root, {"same": b"same", "changed": b"old!", "extra": b"x"})
    existing = {
        "p/same": remote_object("p/same", b"same"),
        "p/changed": remote_object("p/changed", b"new!"),
        "p/new/deep": remote_object("p/new/deep", b"deep"),
        "p/folder/": remote_object("p/folder/", b""),
        "p/../../escape": remote_object("p/../../escape", b"evil"),
    }
    plan = plan_download(existing, "p/", root, lambda key: None, delete=False)
    assert plan.unchanged == [root / "same"]
    assert sorted(p for _, p in plan.downloads) == [root / "changed", root / "new" / "deep"]
    assert plan.skipped == ["p/../../escape"]
    assert plan.deletes == []
    with_delete = plan_download(existing, "p/", root, lambda key: None, delete=True)
    assert with_delete.deletes == [root / "extra"]


# -- progress -----------------------------------------------------------------------------


def test_progress_callback_from_many_threads() -> None:
    calls: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def callback(done: int, total: int, name: str) -> None:
        with lock:
            calls.append((done, total, name))

    def add_thousand() -> None:
        for _ in range(1000):
            counter(1)

    with Progress(callback, 4000, "obj") as counter:
        threads = [threading.Thread(target=add_thousand) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert counter.done == 4000
    assert len(calls) == 4000 and max(done for done, _, _ in calls) == 4000
    assert {(total, name) for _, total, name in calls} == {(4000, "obj")}


def test_progress_true_draws_a_bar_and_none_draws_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(None, 10, "quiet") as counter:
        counter(10)
    assert capsys.readouterr().err == ""
    with Progress(True, 10, "shown") as counter:
        counter(10)
    assert "shown" in capsys.readouterr().err


# -- log redaction ------------------------------------------------------------------------


def redacting_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger("qarnotfs.test.redaction")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_redaction_of_registered_secrets_and_headers() -> None:
    logs.add_secrets(["s3cr3t-value-123", "tok-abcdef", None, ""])
    logger, stream = redacting_logger()
    logger.debug("headers %s", {"Authorization": b"AWS4-HMAC-SHA256 Credential=AK/2024/"
                                b"us-east-1/s3/aws4_request, Signature=deadbeef"})
    logger.debug("url https://h/b/k?X-Amz-Credential=AK%2F2024&X-Amz-Signature=cafe&x=1")
    logger.debug("secret %s and token %s", "s3cr3t-value-123", "tok-abcdef")
    logger.debug("Authorization: raw-token-in-header")
    try:
        raise RuntimeError("failed with s3cr3t-value-123")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    for leaked in ("s3cr3t-value-123", "tok-abcdef", "deadbeef", "cafe", "AK/2024",
                   "AK%2F2024", "raw-token-in-header"):
        assert leaked not in text, leaked
    assert "x=1" in text and "RuntimeError" in text and "***" in text


def test_setup_registers_secret_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-xyz")
    handler = logs.setup(debug=True)
    try:
        assert logs.redact("value env-secret-xyz here") == "value *** here"
        assert logging.getLogger().level == logging.DEBUG
    finally:
        logging.getLogger().removeHandler(handler)


# -- CLI pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "remote"), [
    ("b", Remote("b", "")), ("b/", Remote("b", "")), ("b/k/x", Remote("b", "k/x")),
    ("qarnot://b/p", Remote("b", "p")), ("qarnot://b", Remote("b", "")),
    ("b//k", Remote("b", "k")),
])
def test_parse_remote(text: str, remote: Remote) -> None:
    assert parse_remote(text) == remote


@pytest.mark.parametrize("text", ["", "/k", "qarnot://", "qarnot:///k"])
def test_parse_remote_refuses_no_bucket(text: str) -> None:
    with pytest.raises(UsageError):
        parse_remote(text)


def test_exit_status_mapping() -> None:
    assert exit_status(UsageError("x")) == EXIT_USAGE
    assert exit_status(MissingBucketException("x")) == EXIT_FAILURE
    assert exit_status(OSError("x")) == EXIT_FAILURE
    assert exit_status(KeyboardInterrupt()) == 130


def test_every_command_sets_func() -> None:
    parser = build_parser()
    for argv in (["buckets"], ["ls", "b"], ["get", "b/k"], ["put", "f", "b"],
                 ["sync", "a", "qarnot://b"], ["rm", "b/k"], ["mb", "b"], ["rb", "b"],
                 ["demo"]):
        assert callable(parser.parse_args(argv).func), argv
    with pytest.raises(UsageError, match="invalid choice"):
        parser.parse_args(["frobnicate"])


@pytest.mark.parametrize("value", [
    "2026-12-01T11:15:07.000Z", "2026-12-01T11:15:07+02:00", "2026-12-01T11:15:07Z",
    "Tue, 01 Dec 2026 11:15:07 GMT", "Sun, 06 Nov 1994 08:49:37 GMT",
    "Tue, 01 Dec 2026 11:15:07 +0100", "1764587707", "Tue, 41 Dec 2026 11:15:07 GMT",
])
def test_fast_timestamps_are_botocores(value: str) -> None:
    from botocore.utils import parse_timestamp

    from qarnotfs.timestamps import fast_timestamp

    try:
        expected = parse_timestamp(value)
    except ValueError:
        with pytest.raises(ValueError):
            fast_timestamp(value)
        return
    parsed = fast_timestamp(value)
    assert parsed == expected and parsed.tzinfo is not None  # the same instant, aware
