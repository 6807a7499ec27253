"""The exceptions of the Qarnot SDK, and the one table that maps S3 errors onto them.

Owns: the public exception hierarchy (the SDK's class names, so code written for
``qarnot.exceptions`` keeps working) and :func:`translate`, the single place where a
botocore error becomes a qarnotfs exception. Nothing else in the package inspects botocore
error codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from boto3.exceptions import Boto3Error
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)


class QarnotException(Exception):
    """Base of every qarnotfs error.

    ``code`` is the S3 error code (``"NoSuchKey"``, ``"SlowDown"``, ``"404"``...) when the
    error came from the storage's answer, else None; ``status`` is the HTTP status then.
    Code that must tell errors apart keys on the class or on ``code``, never on the message.
    """

    code: str | None = None
    status: int | None = None


class QarnotGenericException(QarnotException):
    """An error of the API or of the storage; the message says which."""


class UnauthorizedException(QarnotException):
    """The credentials are wrong, expired, or not allowed to do this."""


class MissingBucketException(QarnotException):
    """The bucket does not exist on the storage."""


class BucketStorageUnavailableException(QarnotException):
    """No storage is configured for this account or cluster."""


class MissingTaskException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MissingPoolException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MissingJobException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class NotEnoughCreditsException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MaxTaskException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MaxPoolException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MaxJobException(QarnotException):
    """Kept for compatibility with the SDK's hierarchy."""


class MissingObjectException(QarnotGenericException):
    """The key does not exist in the bucket (qarnotfs addition)."""


class StorageUnreachableException(QarnotGenericException):
    """The storage endpoint did not answer (refused, timed out, cut) (qarnotfs addition)."""


class StorageTimeout(StorageUnreachableException):
    """The storage took longer than the connect or read timeout (qarnotfs addition)."""


class MissingUploadException(QarnotGenericException):
    """The multipart upload is gone: completed or aborted (S3 ``NoSuchUpload``)."""


class InvalidPartException(QarnotGenericException):
    """A part named when completing an upload is missing, wrong or out of order (S3
    ``InvalidPart``, ``InvalidPartOrder``)."""


class InvalidRangeException(QarnotGenericException):
    """A ranged read starts at or past the object's end (S3 ``InvalidRange``)."""


class NotModifiedException(QarnotGenericException):
    """A conditional read found the object unchanged (HTTP 304): not a failure, the
    :meth:`~qarnotfs.bucket.Bucket.get` that asked for it answers with no bytes."""


class PreconditionFailedException(QarnotGenericException):
    """The object is no longer the one a read was conditional on (S3
    ``PreconditionFailed``, HTTP 412): it was replaced meanwhile."""


class ConfigurationException(QarnotException):
    """The configuration (file, environment, arguments) is incomplete or wrong."""


ERROR_CODE_TO_EXCEPTION: dict[str, type[QarnotException]] = {
    "NoSuchBucket": MissingBucketException,
    "NoSuchKey": MissingObjectException,
    "404": MissingObjectException,
    "NotFound": MissingObjectException,
    "NoSuchUpload": MissingUploadException,
    "InvalidPart": InvalidPartException,
    "InvalidPartOrder": InvalidPartException,
    "InvalidRange": InvalidRangeException,
    "304": NotModifiedException,
    "NotModified": NotModifiedException,
    "PreconditionFailed": PreconditionFailedException,
    "412": PreconditionFailedException,
    "AccessDenied": UnauthorizedException,
    "403": UnauthorizedException,
    "Forbidden": UnauthorizedException,
    "InvalidAccessKeyId": UnauthorizedException,
    "SignatureDoesNotMatch": UnauthorizedException,
    "ExpiredToken": UnauthorizedException,
    "InvalidToken": UnauthorizedException,
    "AllAccessDisabled": UnauthorizedException,
}
"""S3 error code -> exception class: the one table (codes not listed become
:class:`QarnotGenericException`). A 404 with no key (a bucket-level call) is a missing
bucket, see :func:`translate`."""

# Said when the server gives a code without a message (Ceph RGW often does).
_DESCRIPTIONS: dict[str, str] = {
    "InvalidBucketName": "the bucket name is not valid",
    "BucketAlreadyExists": "the bucket name is taken by another account",
    "BucketNotEmpty": "the bucket is not empty",
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "no such object",
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "the access key is not known to the storage",
    "SignatureDoesNotMatch": "the secret key is wrong",
    "SlowDown": "the storage asks to slow down",
    "EntityTooLarge": "the object is too large",
    "KeyTooLongError": "the key is too long",
    "QuotaExceeded": "the storage quota is exceeded",
}

_UPLOAD_OPERATIONS = frozenset(
    {"UploadPart", "UploadPartCopy", "ListParts", "CompleteMultipartUpload",
     "AbortMultipartUpload"})
"""Calls naming an upload id: there, a missing "key" is a missing upload."""

_TIMEOUTS = (ConnectTimeoutError, ReadTimeoutError)
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectionClosedError,
    ResponseStreamingError,  # the connection broke while a response body arrived
)


def error_code(error: ClientError) -> str:
    """The S3 error code of a botocore ClientError ('' when the server gave none)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def translate(
    error: BaseException, bucket: str | None = None, key: str | None = None
) -> QarnotException:
    """Return the qarnotfs exception for a botocore error (other errors pass through).

    ``bucket`` and ``key`` only enrich the message. A 404 on a bucket-level call with no
    key is a missing bucket; with a key it is a missing object, except on a call naming a
    multipart upload, where it is the upload that is missing. ``.code`` keeps the server's
    code either way.
    """
    if isinstance(error, QarnotException):
        return error
    if isinstance(error, Boto3Error):
        # upload_file wraps the real ClientError (S3UploadFailedError); use the cause.
        cause = error.__cause__ or error.__context__
        if isinstance(cause, (ClientError, BotoCoreError)):
            return translate(cause, bucket, key)
        return QarnotGenericException(str(error))
    if isinstance(error, ClientError):
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message") or _DESCRIPTIONS.get(code, code)
        cls = ERROR_CODE_TO_EXCEPTION.get(code, QarnotGenericException)
        if cls is MissingObjectException and error.operation_name in _UPLOAD_OPERATIONS:
            cls = MissingUploadException  # Ceph RGW says NoSuchKey for an unknown upload id
        elif cls is MissingObjectException and key is None:
            cls = MissingBucketException
        where = _where(bucket, key)
        translated = cls(f"{where}{code}: {message}" if message != code else f"{where}{code}")
        translated.code = code or None
        translated.status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return translated
    if isinstance(error, NoCredentialsError):
        return UnauthorizedException("no storage credentials were found")
    if isinstance(error, _TIMEOUTS):
        return StorageTimeout(f"storage timed out: {error}")
    if isinstance(error, _UNREACHABLE):
        return StorageUnreachableException(f"storage unreachable: {error}")
    if isinstance(error, BotoCoreError):
        return QarnotGenericException(str(error))
    raise TypeError(f"not a storage error: {error!r}")


def _where(bucket: str | None, key: str | None) -> str:
    if bucket and key:
        return f"{bucket}/{key}: "
    if bucket:
        return f"{bucket}: "
    return ""


@contextlib.contextmanager
def storage_errors(bucket: str | None = None, key: str | None = None) -> Iterator[None]:
    """Re-raise botocore errors raised inside the block as qarnotfs exceptions."""
    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as error:
        raise translate(error, bucket, key) from error
