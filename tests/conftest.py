"""Test fixtures: every test runs against moto (default) or a real Ceph RADOS Gateway.

    pytest                        # moto's S3 server, in this process
    pytest --backend rgw          # Ceph RGW: the one scripts/ceph-rgw.sh runs, or started here
    QARNOTFS_TEST_BACKEND=rgw pytest

Fixtures: ``s3_server`` (session), ``s3_client`` (session; a raw boto3 client to look at the
bucket directly), ``bucket_name`` (a fresh bucket per test, emptied and deleted after it),
``missing_bucket_name``, ``s3_env`` (a whole environment for a subprocess) and
``storage_env`` (the same variables set in ``os.environ`` for one test).

Markers: ``rgw_only`` / ``moto_only`` (deselected on the other backend), ``mount`` (needs
/dev/fuse and fusermount3; skipped without them), ``slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from servers import (
    RGWUnavailable,
    S3Server,
    empty_and_delete_bucket,
    make_client,
    rgw_from_env_or_start,
    start_moto,
)

if TYPE_CHECKING:
    from faultproxy import FaultProxy
    from mypy_boto3_s3 import S3Client

BACKENDS = ("moto", "rgw")
BACKEND_ENV_VAR = "QARNOTFS_TEST_BACKEND"

MARKERS = {
    "rgw_only": "runs only with --backend rgw (deselected on moto)",
    "moto_only": "runs only with --backend moto (deselected on rgw)",
    "mount": "mounts a bucket through FUSE: needs /dev/fuse and fusermount3",
    "slow": "takes seconds or more",
}

# Variables that could send boto3 (in a test or in a qarnotfs subprocess) anywhere but the
# test server, or change how it signs: removed for the tests.
UNSET_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    # A developer's real Qarnot account must never be reached from the tests.
    "QARNOT_CLIENT_TOKEN",
    "QARNOT_CLUSTER_URL",
    "QARNOT_CLUSTER_TIMEOUT",
    "QARNOT_CLUSTER_UNSAFE",
    "QARNOT_CLUSTER_CUSTOM_CERTIFICATE",
    "QARNOT_STORAGE_UNSAFE",
    "QARNOT_STORAGE_CUSTOM_CERTIFICATE",
    "QARNOTFS_CONFIG",
)

# Set for the tests on top of the server's own variables: no ~/.aws files, no EC2 metadata
# lookups (slow timeouts when credentials are missing).
ISOLATION_VARS = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


# ---------------------------------------------------------------------------------------------
# Command line, markers, selection
# ---------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get(BACKEND_ENV_VAR) or "moto",
        help=f"S3 server to test against (default: ${BACKEND_ENV_VAR} or moto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    backend = config.getoption("backend")
    if backend not in BACKENDS:  # a bad $QARNOTFS_TEST_BACKEND bypasses argparse's check
        raise pytest.UsageError(f"--backend/{BACKEND_ENV_VAR} must be one of {BACKENDS}")


def _other_only_marker(backend: str) -> str:
    return "moto_only" if backend == "rgw" else "rgw_only"


def pytest_report_header(config: pytest.Config) -> list[str]:
    backend = config.getoption("backend")
    return [
        f"qarnotfs backend: {backend} (tests marked {_other_only_marker(backend)} are deselected)"
    ]


def fuse_available() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = config.getoption("backend")
    other = _other_only_marker(backend)
    kept = [item for item in items if item.get_closest_marker(other) is None]
    deselected = [item for item in items if item.get_closest_marker(other) is not None]
    if deselected:
        # Deselected, not skipped: a test that cannot run here must not look like a pass.
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"qarnotfs: deselected {len(deselected)} test(s) marked {other} (backend {backend})"
            )
    if not fuse_available():
        skip_mount = pytest.mark.skip(reason="needs /dev/fuse (read/write) and fusermount3")
        for item in items:
            if item.get_closest_marker("mount") is not None:
                item.add_marker(skip_mount)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """The S3 server of this test session (started once, stopped at the end if we started
    it)."""
    backend = request.config.getoption("backend")
    if backend == "moto":
        server, stop = start_moto()
    else:
        try:
            server, stop = rgw_from_env_or_start()
        except RGWUnavailable as exc:
            pytest.fail(f"--backend rgw: no Ceph RGW available: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> S3Client:
    """A raw boto3 S3 client (path-style, us-east-1, checksums when required) to check bucket
    contents directly, independently of qarnotfs."""
    return make_client(s3_server)


def _environment(server: S3Server) -> dict[str, str]:
    return {**server.env(), **ISOLATION_VARS}


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """A complete environment for a subprocess (``subprocess.run(..., env=s3_env)``): this
    process's environment with the server's variables set and stray AWS/Qarnot ones removed.
    A fresh copy for each test."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET_VARS}
    env.update(_environment(s3_server))
    return env


@pytest.fixture
def storage_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> dict[str, str]:
    """Point ``os.environ`` at the test server for one test (undone after it). Returns the
    variables that were set."""
    for name in UNSET_VARS:
        monkeypatch.delenv(name, raising=False)
    values = _environment(s3_server)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def unique_bucket_name(prefix: str = "t") -> str:
    # Lower-case letters, digits and '-': valid for S3, moto and RGW alike.
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def bucket_name(s3_client: S3Client) -> Iterator[str]:
    """A new, empty bucket for this test; emptied (objects and pending multipart uploads)
    and deleted after it, whatever the test left in it."""
    name = unique_bucket_name("t")
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_and_delete_bucket(s3_client, name)


@pytest.fixture
def missing_bucket_name() -> str:
    """The name of a bucket that does not exist."""
    return unique_bucket_name("missing")


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting TCP proxy in front of the test server (tests/faultproxy.py)."""
    from faultproxy import FaultProxy

    with FaultProxy(s3_server.endpoint_url, lifetime=300) as running:
        yield running


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                    os.fspath(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", os.fspath(target)], check=False, capture_output=True)
