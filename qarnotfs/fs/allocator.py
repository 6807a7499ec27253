"""The serving process's memory allocator: glibc settings that make reads cheap and bounded.

Owns: one call, :func:`tune_allocator`, made once before the mount serves.

Why it matters. Memory that glibc takes fresh from the kernel costs a page fault per 4 KiB
on first touch, and in a virtual machine a fault costs microseconds. The mount's buffers
are of two kinds:
- up to a MiB, allocated and freed all the time: the chunks a GET's body is read in
  (:mod:`.reader` holds pieces as chunks for this reason), the FUSE requests and replies
  (libfuse mallocs a reply buffer per read), the slices handed to the kernel;
- bigger and rarer: parts of uploads (8 MiB and more).

With glibc's defaults, a freed buffer of 128 KiB or more raises the threshold above which
buffers get their own mapping (up to 32 MiB), after which even parts come from per-thread
arenas that keep their memory: with 32 threads reading at random the serving process's
RSS passed 200 MB. A low fixed threshold (256 KiB) bounded that, but then every chunk and
every reply was fresh memory: a 128 MiB read on Ceph RGW spent 0.8 s of CPU, most of it
in ~100,000 page faults.

The settings, so that each kind gets what suits it:
- ``M_MMAP_THRESHOLD`` fixed at 2 MiB: buffers up to a MiB come from the heap, and are
  reused; parts get their own mapping, returned to the system when freed;
- ``M_TRIM_THRESHOLD`` 16 MiB: a heap keeps that much free memory at its top instead of
  giving it back after each read and faulting it in again for the next;
- ``M_ARENA_MAX`` 2: Python allocates under its global lock, so more arenas bring little
  parallelism, and each would keep its own free memory.

Measured on Ceph RGW, 256 MiB read through the mount: 0.5 s of mount CPU and ~2,000 page
faults per read (was 0.8 s and 67,000); 32 threads reading one file at random and a
512 MiB copy in and out both stay under 200 MB (tests/test_40_mount_memory.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

MIB = 1024 * 1024
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
SETTINGS = (
    (M_MMAP_THRESHOLD, 2 * MIB),
    (M_TRIM_THRESHOLD, 32 * MIB),
    (M_ARENA_MAX, 2),
)


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` to glibc's malloc; False where there is no glibc (another
    allocator has its own rules, and the mount works the same, only slower)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("mallopt is not available: the allocator keeps its defaults")
        return False
    refused = [name for name, value in SETTINGS if mallopt(name, value) != 1]
    if refused:
        log.debug("mallopt refused parameters %s", refused)
    return not refused
