"""Progress reporting for transfers: a user callback, a tqdm bar, or nothing.

Owns: the ``progress`` argument the Bucket API accepts (``None``/``False``, ``True`` for a
bar on stderr, or a callable ``(bytes_done, bytes_total, name)``), adapted to the
incremental callbacks boto3 transfers make, safely from several threads.
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
