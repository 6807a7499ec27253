"""Plain helpers for tests that drive a Filesystem directly (no fixtures: fs_helpers.py is a
pytest plugin, and importing a plugin module from a test defeats its assertion rewriting)."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qarnotfs.fs.core import Filesystem


def write_file(fs: Filesystem, path: str, data: bytes, mode: int = 0o644) -> None:
    """Create (or truncate) ``path`` with ``data``, closed: in the bucket on return."""
    fh = fs.create(path, stat.S_IFREG | mode, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        fs.write(fh, data, 0)
        fs.flush(fh)
    finally:
        fs.release(fh)


def crashed(fs: Filesystem) -> None:
    """What a kill -9 of the mount leaves: its journal and staged copies as they are on
    disk, nothing more sent (its shutdown made a no-op), the staging slot's lock let go.

    As the kernel does for a dead process, its descriptors are closed (staged copies, the
    journal, the read cache's index): a test that crashes mounts by the hundred would
    otherwise hold thousands until the garbage collector runs, and code that uses
    select() fails on descriptors past 1023. A job already running finishes first (the
    kill lands after it), so no thread is left with a descriptor closed under it.
    """
    fs.writeback.stop_retries()
    fs._shut_down = True
    fs._pool.shutdown(wait=True)
    for item in fs.items.all():
        if item.staged is not None:
            item.staged.close()
    if fs._read_cache is not None:
        fs._read_cache.close()
    fs._staging.journal.close()
    os.close(fs._staging._lock_fd)
