"""The connection to a Qarnot storage: endpoint, credentials, one boto3 client, buckets.

Owns: turning :class:`~qarnotfs.config.Settings` into a configured boto3 S3 client (asking
the Qarnot API for the endpoint and access key in Qarnot mode), how requests are retried
and timed out, the transfer settings shared by every upload and download, and the
bucket-level calls of the SDK's Connection (``buckets``, ``create_bucket``,
``retrieve_bucket``, ``retrieve_or_create_bucket``), and the rest of its storage surface:
``s3client``/``s3resource`` (the boto3 client and a resource sharing it), ``user_info``
and ``logger`` (where ``sync_directory(verbose=True)`` reports, stdout by default).

Retries and timeouts. Every request gets ``connect_timeout`` seconds to connect and
``read_timeout`` seconds per socket read, and is retried at most ``retry_count`` times
(so ``retry_count + 1`` attempts) with botocore's "standard" policy: connection errors,
timeouts, 500/502/503/504 and throttling codes (``SlowDown``, ``Throttling``...) are
retried after a truncated exponential backoff with full jitter (50 ms base, 1 s base for
throttling, 20 s cap), under a retry quota that stops retrying when most requests fail.
Explicit arguments win; else ``QARNOTFS_CONNECT_TIMEOUT``, ``QARNOTFS_READ_TIMEOUT`` and
``QARNOTFS_RETRY_COUNT`` (so a mount process can be given short timeouts); else the
defaults below.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from .api import QarnotApi
from .config import Settings, load_settings
from .exceptions import (
    BucketStorageUnavailableException,
    ConfigurationException,
    MissingBucketException,
    storage_errors,
)
from .quickack import install_quickack
from .timestamps import install_fast_timestamps

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client, S3ServiceResource

    from .bucket import Bucket

log = logging.getLogger(__name__)

MIB = 1024 * 1024
PART_SIZE = 8 * MIB
"""Multipart threshold and part size, as the Qarnot SDK uses (so ETags compare equal)."""

# A stopped server makes a call fail after about (retries + 1) x read timeout: 80 s with
# these, where 10/60/5 made `cp` wait 6 minutes and an unmount 24 (issue #14). A read
# timeout is the wait for the next bytes of an answer, not for a whole transfer.
DEFAULT_RETRY_COUNT = 3
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 20.0
RETRY_MODE: Final = "standard"
"""botocore's retry policy: bounded attempts, exponential backoff with jitter."""
_ENV_RETRY_COUNT = "QARNOTFS_RETRY_COUNT"
_ENV_CONNECT_TIMEOUT = "QARNOTFS_CONNECT_TIMEOUT"
_ENV_READ_TIMEOUT = "QARNOTFS_READ_TIMEOUT"


class Connection:
    """A connection to the storage, configured as the Qarnot SDK's ``Connection`` is.

    With no arguments everything comes from the environment and the configuration file
    (see :mod:`qarnotfs.config`). Qarnot mode needs a token; direct mode, for any
    S3-compatible endpoint, needs ``storage_url`` and an access key and secret key (or an
    AWS profile).
    """

    def __init__(
        self,
        fileconf: str | os.PathLike[str] | dict[str, Any] | None = None,
        client_token: str | None = None,
        cluster_url: str | None = None,
        cluster_unsafe: bool | None = None,
        cluster_timeout: float | None = None,
        storage_url: str | None = None,
        storage_unsafe: bool | None = None,
        retry_count: int | None = None,
        retry_wait: float = 1.0,
        cluster_custom_certificate: str | None = None,
        storage_custom_certificate: str | None = None,
        sanitize_bucket_paths: bool = True,
        show_bucket_warnings: bool = True,
        logger: logging.Logger | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        profile: str | None = None,
        max_concurrency: int = 10,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self.settings: Settings = load_settings(
            fileconf,
            client_token=client_token,
            cluster_url=cluster_url,
            cluster_unsafe=cluster_unsafe,
            cluster_timeout=cluster_timeout,
            cluster_custom_certificate=cluster_custom_certificate,
            storage_url=storage_url,
            storage_unsafe=storage_unsafe,
            storage_custom_certificate=storage_custom_certificate,
            access_key=access_key,
            secret_key=secret_key,
            profile=profile,
        )
        self.retry_count = _retry_count(retry_count)
        # Kept for the SDK's signature: the wait between attempts is botocore's backoff.
        self.retry_wait = retry_wait
        self.connect_timeout = _timeout(connect_timeout, _ENV_CONNECT_TIMEOUT,
                                        DEFAULT_CONNECT_TIMEOUT)
        self.read_timeout = _timeout(read_timeout, _ENV_READ_TIMEOUT, DEFAULT_READ_TIMEOUT)
        self.sanitize_bucket_paths = sanitize_bucket_paths
        self.show_bucket_warnings = show_bucket_warnings
        self.max_concurrency = max_concurrency
        self.transfer_config = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=max_concurrency,
            use_threads=True,
        )
        self.logger = logger if logger is not None else _stdout_logger()
        self._api: QarnotApi | None = None
        self.storage_url, self.access_key, secret = self._resolve_endpoint()
        self._session = boto3.session.Session(
            profile_name=self.settings.profile if not self.settings.access_key else None
        )
        self._client_arguments = self._client_options(secret)
        self.s3: S3Client = self._make_client()

    def __repr__(self) -> str:
        return f"Connection(storage_url={self.storage_url!r}, access_key={self.access_key!r})"

    # -- setup -------------------------------------------------------------------------

    def _resolve_endpoint(self) -> tuple[str, str | None, str | None]:
        """Return (storage URL, access key, secret key) for direct or Qarnot mode."""
        settings = self.settings
        if settings.direct:
            if not settings.storage_url:
                raise ConfigurationException(
                    "S3 credentials are set but no storage URL: set QARNOT_STORAGE_URL "
                    "or [storage] url"
                )
            return settings.storage_url, settings.access_key, settings.secret_key
        if not settings.client_token:
            raise ConfigurationException(
                "no credentials: set QARNOT_CLIENT_TOKEN (or [client] token in the "
                "configuration file), or QARNOT_STORAGE_URL with AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        api = self._api = QarnotApi(
            url=settings.cluster_url,
            token=settings.client_token,
            timeout=settings.cluster_timeout,
            unsafe=settings.cluster_unsafe,
            custom_certificate=settings.cluster_custom_certificate,
        )
        storage_url = settings.storage_url or api.storage_url()
        if not storage_url:
            raise BucketStorageUnavailableException(
                f"the cluster at {settings.cluster_url} has no storage"
            )
        return storage_url, api.user_email(), settings.client_token

    def _client_options(self, secret: str | None) -> dict[str, Any]:
        """The arguments of ``session.client("s3", ...)`` (and of the resource)."""
        settings = self.settings
        config = Config(
            region_name="us-east-1",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # Ceph RGW rejects the newer default checksums on some calls.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"total_max_attempts": self.retry_count + 1, "mode": RETRY_MODE},
            max_pool_connections=max(32, 4 * self.max_concurrency),
            tcp_keepalive=True,
        )
        verify: bool | str | None = None
        if settings.storage_unsafe:
            verify = False
        elif settings.storage_custom_certificate:
            verify = settings.storage_custom_certificate
        explicit = bool(settings.access_key or not settings.profile)
        return {
            "endpoint_url": self.storage_url,
            "aws_access_key_id": self.access_key if explicit else None,
            "aws_secret_access_key": secret if explicit else None,
            "config": config,
            "verify": verify,
        }

    def _make_client(self) -> S3Client:
        install_fast_timestamps(self._session._session)
        client = self._session.client("s3", **self._client_arguments)
        install_quickack(client)
        return client

    # -- the SDK's storage surface -------------------------------------------------------

    @property
    def s3client(self) -> S3Client:
        """The configured boto3 S3 client (the one every qarnotfs request goes through)."""
        return self.s3

    @functools.cached_property
    def s3resource(self) -> S3ServiceResource:
        """A boto3 S3 resource whose requests go through :attr:`s3client` (made on first
        use: loading the resource model costs time a mount or a CLI command need not
        spend)."""
        resource = self._session.resource("s3", **self._client_arguments)
        # Sub-resources (Bucket, ObjectSummary...) take their client from here when made.
        resource.meta.client = self.s3
        return resource

    @property
    def user_info(self) -> UserInfo:
        """The account as the Qarnot API describes it (one ``GET /info``, as in the SDK).

        Only in Qarnot mode: direct mode has no API to ask
        (:class:`ConfigurationException`).
        """
        if self._api is None:
            raise ConfigurationException(
                "user_info needs the Qarnot API: this connection talks to a storage directly")
        return UserInfo.from_api(self._api.user_info())

    # -- buckets -----------------------------------------------------------------------

    def buckets(self) -> list[Bucket]:
        """Every bucket of the account."""
        from .bucket import Bucket

        with storage_errors():
            answer = self.s3.list_buckets()
        return [Bucket(self, entry["Name"], create=False) for entry in answer.get("Buckets", [])]

    def create_bucket(self, name: str) -> Bucket:
        """Create the bucket (an existing bucket of ours is fine) and return it."""
        from .bucket import Bucket

        return Bucket(self, name, create=True)

    def retrieve_bucket(self, uuid: str) -> Bucket:
        """Return an existing bucket; :class:`MissingBucketException` if there is none."""
        from .bucket import Bucket

        if not self.bucket_exists(uuid):
            raise MissingBucketException(f"bucket {uuid!r} does not exist")
        return Bucket(self, uuid, create=False)

    def retrieve_or_create_bucket(self, uuid: str) -> Bucket:
        """Return the bucket, creating it if it does not exist (one CreateBucket, which
        succeeds on a bucket of ours)."""
        from .bucket import Bucket

        return Bucket(self, uuid, create=True)

    def bucket_exists(self, name: str) -> bool:
        """True if the bucket exists (and the credentials may see it)."""
        try:
            with storage_errors(bucket=name):
                self.s3.head_bucket(Bucket=name)
        except MissingBucketException:
            return False
        return True

    def close(self) -> None:
        """Release the HTTP connections."""
        self.s3.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class UserInfo:
    """What the Qarnot API's ``/info`` says about the account (the SDK's ``UserInfo``
    fields about storage; ``raw`` holds the whole answer)."""

    email: str
    max_bucket: int | None
    bucket_count: int
    quota_bytes_bucket: int | None
    used_quota_bytes_bucket: int | None
    raw: dict[str, Any]

    @classmethod
    def from_api(cls, info: dict[str, Any]) -> UserInfo:
        return cls(
            email=str(info.get("email", "")),
            max_bucket=info.get("maxBucket"),
            bucket_count=int(info.get("bucketCount", -1)),
            quota_bytes_bucket=info.get("quotaBytesBucket"),
            used_quota_bytes_bucket=info.get("usedQuotaBytesBucket"),
            raw=info,
        )


class _StdoutHandler(logging.Handler):
    """Writes records to the *current* ``sys.stdout`` (which tests and tools may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


def _stdout_logger() -> logging.Logger:
    """The SDK's default ``Connection.logger``: INFO and up, printed on stdout."""
    logger = logging.getLogger("qarnotfs.stdout")
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s|%(levelname)s|%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _retry_count(value: int | None) -> int:
    """The number of retries: the argument, else $QARNOTFS_RETRY_COUNT, else the default."""
    if value is None:
        text = os.environ.get(_ENV_RETRY_COUNT, "").strip()
        if not text:
            return DEFAULT_RETRY_COUNT
        try:
            value = int(text, 10)
        except ValueError:
            raise ConfigurationException(
                f"{_ENV_RETRY_COUNT}={text!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationException(f"retry_count must be a whole number >= 0, not {value!r}")
    return value


def _timeout(value: float | None, variable: str, default: float) -> float:
    """A timeout in seconds: the argument, else the environment variable, else ``default``."""
    if value is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigurationException(f"{variable}={text!r} is not a number of seconds") \
                from None
    if isinstance(value, bool) or not 0 < value < float("inf"):
        raise ConfigurationException(f"a timeout must be a number of seconds > 0, not {value!r}")
    return float(value)
