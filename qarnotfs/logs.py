"""Logging for the command line: one handler on stderr that never shows a secret.

Owns: the log level chosen by ``--log-level``/``--debug``/``--quiet``, where records go
(stderr, journald with priorities when run as a service, syslog when asked with
``--log-syslog`` and not under journald, or a private rotating file for a mount in the
background), the format, and
:class:`RedactingFilter`, which rewrites every record before it is written: the registered
secret values (the S3 secret key, the Qarnot token) and the values of ``Authorization``
headers and ``X-Amz-Credential``/``X-Amz-Signature`` query parameters become ``***``.
botocore logs request headers at debug level, so the filter sits on the handler and sees
the records of every logger.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import re
import stat
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

SYSLOG_SOCKET = "/dev/log"
"""Where syslog listens on Linux (``--log-syslog`` without a value)."""
_syslog_address: str | None = None


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


LEVELS = ("debug", "info", "warning", "error")
"""The names ``--log-level`` accepts."""
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
"""A log file is rotated at 10 MiB, keeping three old files (``.1`` to ``.3``)."""
# Their debug output is huge (every request's headers, masked by the filter): shown only
# when the command line asks for debug, never in a mount's log.
_NOISY = ("botocore", "boto3", "s3transfer", "urllib3")
# sd-daemon(3) priority prefixes: journald files each line under its level.
_JOURNAL_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                       logging.ERROR: 3, logging.CRITICAL: 2}


def level_from(debug: bool = False, quiet: bool = False, name: str | None = None) -> int:
    """The level for ``--log-level NAME`` (wins), else ``--debug``, else ``--quiet``."""
    if name:
        return int(getattr(logging, name.upper()))
    if debug:
        return logging.DEBUG
    return logging.ERROR if quiet else logging.WARNING


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets $JOURNAL_STREAM to it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald adds the time and the process."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>" + super().format(record)


def use_syslog(address: str | None) -> None:
    """Send the records of every later :func:`setup` to the syslog socket ``address``
    (``None``: not to syslog), unless stderr is the journal, which has them already. Kept
    by a forked mount process, whose own setup then logs there instead of to its file."""
    global _syslog_address  # noqa: PLW0603 (one choice for the whole process)
    _syslog_address = address


def _syslog_handler(address: str, mount: bool) -> logging.Handler:
    facility = (logging.handlers.SysLogHandler.LOG_DAEMON if mount
                else logging.handlers.SysLogHandler.LOG_USER)
    # SysLogHandler, as openlog(3), says nothing of a socket that is not there: a typo
    # would lose every record.
    try:
        is_socket = stat.S_ISSOCK(os.stat(address).st_mode)
    except OSError as error:
        raise OSError(error.errno, f"cannot log to syslog at {address}: "
                      f"{error.strerror}") from None
    if not is_socket:
        raise OSError(errno.ENOTSOCK, f"cannot log to syslog at {address}: not a socket")
    handler = logging.handlers.SysLogHandler(address=address, facility=facility)
    handler.ident = f"qarnotfs[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def _handler(log_file: str | None, mount: bool, level: int) -> logging.Handler:
    """Syslog if asked (and not under journald), else the file, else stderr; formatted."""
    if _syslog_address is not None and not stderr_is_journal():
        return _syslog_handler(_syslog_address, mount)  # syslog adds time and priority
    handler = _file_handler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    if log_file is None and stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    elif mount or level <= logging.DEBUG:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("qarnotfs: %(levelname)s: %(message)s"))
    return handler


def _file_handler(log_file: str) -> logging.Handler:
    """A rotating handler on ``log_file``, created private (0600, folder 0700)."""
    # Rotated files are created with the umask: keep them private too.
    os.umask(0o077)
    os.makedirs(os.path.dirname(log_file) or ".", mode=0o700, exist_ok=True)
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return logging.handlers.RotatingFileHandler(
        log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")


def setup(debug: bool = False, quiet: bool = False, *, level: int | None = None,
          log_file: str | None = None, mount: bool = False) -> logging.Handler:
    """Send log records to stderr (or ``log_file``) through the redacting filter.

    The level is ``level``, else the one ``debug``/``quiet`` choose (:func:`level_from`).

    ``mount`` is the serving process's format (time, pid, logger) and keeps the storage
    libraries' debug output out. On journald, lines carry their priority instead of a
    time. Calling it again replaces the handler it installed before.
    """
    level = level_from(debug, quiet) if level is None else level
    add_secrets(os.environ.get(name) for name in SECRET_VARIABLES)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_qarnotfs", False) or mount:
            root.removeHandler(handler)
    handler = _handler(log_file, mount, level)
    handler._qarnotfs = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    libraries = logging.DEBUG if level <= logging.DEBUG and not mount else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(libraries)
    # The demo's embedded server logs every request; that is noise unless debugging.
    logging.getLogger("werkzeug").setLevel(logging.DEBUG if level <= logging.DEBUG
                                           else logging.ERROR)
    # mfusepy's own logger repeats each error the adapter already logs, with a traceback.
    logging.getLogger("fuse").setLevel(max(level, logging.INFO))
    return handler
