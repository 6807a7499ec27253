"""Progress reporting for transfers: a user callback, a tqdm bar, or nothing.

Owns: the ``progress`` argument the Bucket API accepts (``None``/``False``, ``True`` for a
bar on stderr, or a callable ``(bytes_done, bytes_total, name)``), adapted to the
incremental callbacks boto3 transfers make, safely from several threads; and
:class:`TransferProgress`, one bar for a command moving many files (files done/total,
bytes in binary units, rate), whose lines are written above the bar; and :class:`Step`,
the bar of a step that precedes transfers (a sync's listing, its HEADs, its hashing), so
that no step is a silent pause.

Lock order: each object's own lock only, never held while calling out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from tqdm import tqdm

ProgressCallback = Callable[[int, int, str], None]
ProgressArg = bool | ProgressCallback | None


class Progress:
    """Counts bytes of one named transfer and reports them; use as a context manager."""

    def __init__(self, progress: ProgressArg, total: int, name: str) -> None:
        self.total = total
        self.name = name
        self.done = 0
        self._lock = threading.Lock()
        self._callback = progress if callable(progress) else None
        self._bar: tqdm[Any] | None = None
        if progress is True:
            self._bar = tqdm(total=total, desc=name, unit="B", unit_scale=True,
                             unit_divisor=1024, leave=False)

    def __call__(self, increment: int) -> None:
        """Record ``increment`` more bytes (boto3's Callback signature)."""
        with self._lock:
            self.done += increment
            done = self.done
            if self._bar is not None:
                self._bar.update(increment)
        if self._callback is not None:
            self._callback(done, self.total, self.name)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()


class TransferProgress:
    """One bar for many files: ``upload 3/10 files  12.0MiB/40.0MiB  5.1MiB/s``.

    Thread-safe; ``write`` prints a line (a completed file) without breaking the bar.
    """

    def __init__(self, total_bytes: int, total_files: int, verb: str, enabled: bool,
                 name: str = "") -> None:
        self.total_files = total_files
        self._name = name
        self.files_done = 0
        self._verb = verb
        self._lock = threading.Lock()
        self._bar: tqdm[Any] | None = None
        if enabled:
            # unit "iB" with divisor 1024 labels binary units: KiB, MiB, GiB.
            self._bar = tqdm(total=total_bytes, desc=self._description(), unit="iB",
                             unit_scale=True, unit_divisor=1024, leave=False,
                             dynamic_ncols=True)

    def _description(self) -> str:
        if self.total_files == 1 and self._name:
            return f"{self._verb} {self._name}"
        return f"{self._verb} {self.files_done}/{self.total_files} files"

    def advance(self, increment: int) -> None:
        """``increment`` more bytes moved (negative when a retry rewinds)."""
        if self._bar is not None:
            with self._lock:
                self._bar.update(increment)

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
            if self._bar is not None:
                self._bar.set_description_str(self._description(), refresh=True)

    def write(self, line: str, say: Callable[[str], None]) -> None:
        """Print ``line`` through ``say``, above the bar if there is one."""
        if self._bar is None:
            say(line)
            return
        with self._lock, self._bar.external_write_mode():
            say(line)

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


class Step:
    """A bar counting what one step has done (``listing 1200 objects``, ``hashing
    40.0MiB/1.0GiB``), or nothing when disabled; callable from several threads."""

    def __init__(self, description: str, enabled: bool, total: int | None = None,
                 unit: str = " files") -> None:
        """``unit`` "iB" counts bytes, shown in binary units."""
        self._lock = threading.Lock()
        self._bar: tqdm[Any] | None = None
        if enabled:
            self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True,
                             unit=unit, unit_scale=unit == "iB", unit_divisor=1024)

    def __call__(self, increment: int = 1) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(increment)

    def __enter__(self) -> Step:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
