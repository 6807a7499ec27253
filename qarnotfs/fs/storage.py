"""TEMPORARY (replaced by the Storage protocol at merge)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import PART_SIZE as DEFAULT_PART_SIZE

if TYPE_CHECKING:
    from ..bucket import Bucket as Storage

MAX_PARTS = 10_000
MIB = 1 << 20


def part_size_for(size: int, base: int = DEFAULT_PART_SIZE) -> int:
    """``base`` up to ``base`` x 10,000 bytes; above, the smallest whole MiB that keeps the
    upload within S3's 10,000 parts."""
    if size <= base * MAX_PARTS:
        return base
    return -(-size // (MAX_PARTS * MIB)) * MIB


__all__ = ["DEFAULT_PART_SIZE", "MAX_PARTS", "Storage", "part_size_for"]
