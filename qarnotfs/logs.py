"""Logging for the command line: one handler on stderr that never shows a secret.

Owns: the log level chosen by ``--debug``/``--quiet``, the format, and
:class:`RedactingFilter`, which rewrites every record before it is written: the registered
secret values (the S3 secret key, the Qarnot token) and the values of ``Authorization``
headers and ``X-Amz-Credential``/``X-Amz-Signature`` query parameters become ``***``.
botocore logs request headers at debug level, so the filter sits on the handler and sees
the records of every logger.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable

MASK = "***"

# Values that follow these names are credentials whatever their source. The header value
# runs to the end of the quoted string or line ("AWS4-HMAC-SHA256 Credential=..., ...").
_PATTERNS = (
    re.compile(r"""(?i)(['"]?authorization['"]?\s*[:=]\s*b?['"]?)([^'"\r\n]+)"""),
    re.compile(r"(?i)(x-amz-credential=)([^&\s'\"]+)"),
    re.compile(r"(?i)(x-amz-signature=)([^&\s'\"]+)"),
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)([^&\s'\"]+)"),
    re.compile(r"(?i)(credential=)([^,\s'\"&]+)"),
    re.compile(r"(?i)(signature=)([^,\s'\"&]+)"),
)

# Environment variables whose values are secrets, registered when logging is set up.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "QARNOT_CLIENT_TOKEN")

_secrets: set[str] = set()
_lock = threading.Lock()


def add_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values so they are masked wherever they appear in a log line."""
    with _lock:
        # Very short values would mask ordinary words; credentials are never that short.
        _secrets.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """``text`` with every known secret and credential-bearing value masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in the message, its arguments and any attached traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def setup(debug: bool = False, quiet: bool = False) -> logging.Handler:
    """Send log records to stderr through the redacting filter; returns the handler.

    Calling it again replaces the handler it installed before (tests call ``main`` often).
    """
    add_secrets(os.environ.get(name) for name in SECRET_VARIABLES)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_qarnotfs", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._qarnotfs = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        level = logging.DEBUG
    else:
        handler.setFormatter(logging.Formatter("qarnotfs: %(levelname)s: %(message)s"))
        level = logging.ERROR if quiet else logging.WARNING
    root.addHandler(handler)
    root.setLevel(level)
    # The demo's embedded server logs every request; that is noise unless debugging.
    logging.getLogger("werkzeug").setLevel(logging.DEBUG if debug else logging.ERROR)
    return handler
