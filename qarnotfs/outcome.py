"""How a command ends: the exit status and the one error line, for every command.

Owns: :class:`CommandError` (a failure whose message is the line shown, with its exit
status) and :class:`UsageError` (a wrong command line: status 2), and :func:`exit_status`
and :func:`describe`, the one place that turns any exception into an exit status and a
``qarnotfs: error: ...`` line (secrets masked). The CLI, the mount commands and the mount
helper all end through :func:`report`.
"""

from __future__ import annotations

import logging
import sys

from . import logs
from .exceptions import ConfigurationException, QarnotException, UnauthorizedException

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader went away."""

CREDENTIALS_HINT = "check the access key and the secret key (and that they may use this bucket)"


class CommandError(Exception):
    """A command that cannot go ahead; the message is the one line shown."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CommandError):
    """The command line is wrong: exit status 2."""

    exit_code = EXIT_USAGE


_EXPECTED = (QarnotException, OSError, ValueError, CommandError)


def exit_status(error: BaseException) -> int:
    """The exit status for an exception that ended a command."""
    if isinstance(error, CommandError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def describe(error: BaseException) -> str:
    """The one line shown for an error (secrets masked)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, ConfigurationException):
        text = f"configuration: {error}"
    elif isinstance(error, UnauthorizedException):
        text = f"{error}: {CREDENTIALS_HINT}"
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    elif isinstance(error, _EXPECTED):
        text = str(error) or type(error).__name__
    else:
        text = (f"unexpected {type(error).__name__}: {error} (run with --debug for the "
                "traceback)")
    return logs.redact(" ".join(text.split()))


def report(error: BaseException) -> int:
    """Print the error line on stderr (the traceback too, at debug level); the status."""
    log.debug("traceback", exc_info=True)
    print(f"qarnotfs: error: {describe(error)}", file=sys.stderr, flush=True)
    return exit_status(error)
