"""Connection: Qarnot mode against a local server playing the Qarnot REST API, direct mode,
every source of settings, TLS options, the bucket-level calls and the boto3 client setup.

The fake API answers ``GET /settings`` with the test S3 server's URL and ``GET /info`` with
its access key as the email, and accepts only ``Authorization: <token>`` where the token is
the S3 secret key, as on Qarnot.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from qarnot_api import FakeQarnotApi, serve

from qarnotfs import Connection
from qarnotfs.api import DEFAULT_STORAGE_URL
from qarnotfs.exceptions import (
    BucketStorageUnavailableException,
    ConfigurationException,
    MissingBucketException,
    StorageUnreachableException,
    UnauthorizedException,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from servers import S3Server

UNSET = ("QARNOT_CLIENT_TOKEN", "QARNOT_CLUSTER_URL", "QARNOT_STORAGE_URL", "AWS_ACCESS_KEY_ID",
         "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "QARNOTFS_CONFIG")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the environment or a configuration file in the home folder."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


@pytest.fixture
def qarnot_api(s3_server: S3Server, clean_env: None) -> Iterator[FakeQarnotApi]:
    yield from serve(FakeQarnotApi(token=s3_server.secret_key,
                                   settings={"storage": s3_server.endpoint_url},
                                   email=s3_server.access_key))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def assert_works(conn: Connection, s3_client: S3Client, bucket_name: str) -> None:
    """The connection can write to the test bucket, and the write is really there."""
    bucket = conn.retrieve_bucket(bucket_name)
    bucket.put("probe", b"works")
    assert s3_client.get_object(Bucket=bucket_name, Key="probe")["Body"].read() == b"works"


# -- Qarnot mode --------------------------------------------------------------------------


def test_qarnot_mode_asks_the_api_with_the_raw_token(qarnot_api: FakeQarnotApi,
                                                    s3_server: S3Server, s3_client: S3Client,
                                                    bucket_name: str) -> None:
    with Connection(client_token=qarnot_api.token, cluster_url=qarnot_api.url) as conn:
        assert conn.storage_url == s3_server.endpoint_url
        assert conn.access_key == s3_server.access_key
        assert_works(conn, s3_client, bucket_name)
    assert sorted(path for path, _ in qarnot_api.requests) == ["/info", "/settings"]
    assert {header for _, header in qarnot_api.requests} == {qarnot_api.token}  # no "Bearer"


def test_user_info_asks_the_api_each_time(qarnot_api: FakeQarnotApi,
                                          s3_server: S3Server) -> None:
    with Connection(client_token=qarnot_api.token, cluster_url=qarnot_api.url) as conn:
        qarnot_api.requests.clear()
        info = conn.user_info
        assert (info.email, info.quota_bytes_bucket, info.bucket_count, info.max_bucket) \
            == (s3_server.access_key, 1, 2, 100)
        assert info.used_quota_bytes_bucket is None and info.raw["email"] == info.email
        assert conn.user_info == info
        assert [path for path, _ in qarnot_api.requests] == ["/info", "/info"]


def test_bad_token_is_unauthorized_and_not_shown(qarnot_api: FakeQarnotApi) -> None:
    with pytest.raises(UnauthorizedException, match="401") as info:
        Connection(client_token="wrong-token-value", cluster_url=qarnot_api.url)
    assert "wrong-token-value" not in str(info.value)


def test_explicit_storage_url_skips_settings(qarnot_api: FakeQarnotApi, s3_server: S3Server,
                                             s3_client: S3Client, bucket_name: str) -> None:
    with Connection(client_token=qarnot_api.token, cluster_url=qarnot_api.url,
                    storage_url=s3_server.endpoint_url) as conn:
        assert_works(conn, s3_client, bucket_name)
    assert [path for path, _ in qarnot_api.requests] == ["/info"]


def test_cluster_without_storage(qarnot_api: FakeQarnotApi) -> None:
    qarnot_api.settings = {"storage": None}
    with pytest.raises(BucketStorageUnavailableException):
        Connection(client_token=qarnot_api.token, cluster_url=qarnot_api.url)
    qarnot_api.settings = {}
    with Connection(client_token=qarnot_api.token, cluster_url=qarnot_api.url) as conn:
        assert conn.storage_url == DEFAULT_STORAGE_URL


def test_unreachable_cluster(clean_env: None) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(StorageUnreachableException, match="cannot reach the Qarnot API"):
            Connection(client_token="t", cluster_url=f"http://127.0.0.1:{port}")


def test_no_credentials_at_all(clean_env: None) -> None:
    with pytest.raises(ConfigurationException, match="no credentials"):
        Connection()
    with pytest.raises(ConfigurationException, match="no storage URL"):
        Connection(access_key="a", secret_key="b")


# -- where the settings come from ---------------------------------------------------------


def test_settings_from_configuration_file(qarnot_api: FakeQarnotApi, s3_client: S3Client,
                                          bucket_name: str, tmp_path: Path) -> None:
    conf = tmp_path / "qarnot.conf"
    conf.write_text(f"[cluster]\nurl = {qarnot_api.url}\ntimeout = 5\n"
                    f"[client]\ntoken = {qarnot_api.token}\n")
    with Connection(conf) as conn:
        assert conn.settings.cluster_timeout == 5.0
        assert_works(conn, s3_client, bucket_name)
    assert len(qarnot_api.requests) == 2


def test_direct_mode_from_configuration_file(qarnot_api: FakeQarnotApi, s3_server: S3Server,
                                             s3_client: S3Client, bucket_name: str,
                                             tmp_path: Path) -> None:
    conf = tmp_path / "direct.conf"
    conf.write_text(f"[cluster]\nurl = {qarnot_api.url}\n[storage]\n"
                    f"url = {s3_server.endpoint_url}\naccess_key = {s3_server.access_key}\n"
                    f"secret_key = {s3_server.secret_key}\n")
    with Connection(str(conf)) as conn:
        assert conn.settings.direct
        assert_works(conn, s3_client, bucket_name)
    assert qarnot_api.requests == []  # direct mode never asks the Qarnot API


def test_settings_from_environment(qarnot_api: FakeQarnotApi, s3_client: S3Client,
                                   bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QARNOT_CLUSTER_URL", qarnot_api.url)
    monkeypatch.setenv("QARNOT_CLIENT_TOKEN", qarnot_api.token)
    with Connection() as conn:
        assert_works(conn, s3_client, bucket_name)


def test_direct_mode_from_environment(storage_env: dict[str, str], s3_client: S3Client,
                                      bucket_name: str) -> None:
    with Connection() as conn:
        assert conn.storage_url == storage_env["QARNOT_STORAGE_URL"]
        assert_works(conn, s3_client, bucket_name)


def test_fileconf_dict(qarnot_api: FakeQarnotApi, s3_client: S3Client,
                       bucket_name: str) -> None:
    with Connection({"client_auth": qarnot_api.token, "cluster_url": qarnot_api.url}) as conn:
        assert_works(conn, s3_client, bucket_name)


def test_secrets_stay_out_of_repr(s3_server: S3Server, clean_env: None) -> None:
    with Connection(storage_url=s3_server.endpoint_url, access_key="ak",
                    secret_key="do-not-print-me") as conn:
        assert "do-not-print-me" not in repr(conn) + repr(conn.settings)


# -- TLS options --------------------------------------------------------------------------


def test_cluster_tls_unsafe_and_custom_ca(s3_server: S3Server, clean_env: None,
                                          certificate: tuple[Path, Path]) -> None:
    api = FakeQarnotApi(token=s3_server.secret_key, settings={"storage": s3_server.endpoint_url},
                        email=s3_server.access_key)
    for running in serve(api, tls=certificate):
        with pytest.raises(StorageUnreachableException, match=r"(?i)certificate"):
            Connection(client_token=running.token, cluster_url=running.url)
        with Connection(client_token=running.token, cluster_url=running.url,
                        cluster_unsafe=True) as conn:
            assert conn.access_key == s3_server.access_key
        with Connection(client_token=running.token, cluster_url=running.url,
                        cluster_custom_certificate=str(certificate[0])) as conn:
            assert conn.access_key == s3_server.access_key


def test_storage_tls_options_reach_the_client(s3_server: S3Server, clean_env: None) -> None:
    direct: dict[str, Any] = {"storage_url": s3_server.endpoint_url, "access_key": "a",
                              "secret_key": "b"}
    with Connection(**direct) as conn:
        default = conn.s3._endpoint.http_session._verify  # type: ignore[attr-defined]
        assert default is True or (isinstance(default, str) and Path(default).is_file())
    with Connection(storage_unsafe=True, **direct) as conn:
        assert conn.s3._endpoint.http_session._verify is False  # type: ignore[attr-defined]
    with Connection(storage_custom_certificate="/etc/ssl/custom.pem", **direct) as conn:
        assert conn.s3._endpoint.http_session._verify == "/etc/ssl/custom.pem"  # type: ignore[attr-defined]


# -- buckets and the client ---------------------------------------------------------------


@pytest.fixture
def connection(s3_server: S3Server, clean_env: None) -> Iterator[Connection]:
    with Connection(storage_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key) as conn:
        yield conn


def test_bucket_calls(connection: Connection, bucket_name: str, s3_client: S3Client) -> None:
    created = f"{bucket_name}-new"
    try:
        bucket = connection.create_bucket(created)
        assert bucket.uuid == created
        connection.create_bucket(created)  # an existing bucket of ours is fine
        names = {b.uuid for b in connection.buckets()}
        assert {bucket_name, created} <= names
        assert connection.retrieve_bucket(bucket_name).uuid == bucket_name
        with pytest.raises(MissingBucketException):
            connection.retrieve_bucket(f"{bucket_name}-missing")
        made = connection.retrieve_or_create_bucket(f"{bucket_name}-made")
        s3_client.head_bucket(Bucket=made.uuid)
        assert connection.retrieve_or_create_bucket(made.uuid).uuid == made.uuid
    finally:
        for name in (created, f"{bucket_name}-made"):
            if connection.bucket_exists(name):
                s3_client.delete_bucket(Bucket=name)


def test_the_sdk_storage_surface(connection: Connection, bucket_name: str,
                                 s3_client: S3Client, capsys: pytest.CaptureFixture[str]) -> None:
    assert connection.s3client is connection.s3
    resource = connection.s3resource
    assert resource is connection.s3resource and resource.meta.client is connection.s3client
    resource.Bucket(bucket_name).put_object(Key="via-resource", Body=b"r")
    assert s3_client.get_object(Bucket=bucket_name, Key="via-resource")["Body"].read() == b"r"
    with pytest.raises(ConfigurationException, match="Qarnot API"):
        connection.user_info  # noqa: B018  (direct mode has no API to ask)
    connection.logger.info("to stdout, as the SDK's default logger")
    assert "to stdout, as the SDK's default logger" in capsys.readouterr().out
    first, again = connection.retrieve_bucket(bucket_name), connection.retrieve_bucket(bucket_name)
    assert first == again and first in connection.buckets() and len({first, again}) == 1
    assert first != bucket_name  # a bucket is not its name


def test_client_configuration(s3_server: S3Server, clean_env: None) -> None:
    with Connection(storage_url=s3_server.endpoint_url, access_key="a", secret_key="b",
                    retry_count=3, connect_timeout=4.0, read_timeout=25.0) as conn:
        config: Any = conn.s3.meta.config
        assert config.s3 is not None and config.s3["addressing_style"] == "path"
        assert config.request_checksum_calculation == "when_required"
        assert config.response_checksum_validation == "when_required"
        assert config.connect_timeout == 4.0 and config.read_timeout == 25.0
        assert config.retries is not None and config.retries["total_max_attempts"] == 4
        url = conn.s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})
        assert url.startswith(f"{s3_server.endpoint_url}/bkt/k?")  # path style
        assert conn.transfer_config.multipart_chunksize == 8 * 1024 * 1024
        assert conn.transfer_config.multipart_threshold == 8 * 1024 * 1024
