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
