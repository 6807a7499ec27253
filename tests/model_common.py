"""What the reference-model tests share: the strategies and the two-world comparison.

``test_50_model_core`` (the filesystem core) and ``test_50_model_mount`` (a live FUSE
mount) apply the same random operations to the system under test and to a local folder;
this module owns the names, data and offsets they draw, and ``same``, which runs one call
in both worlds and requires the same result or the same errno.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import event

from qarnotfs.fs.errors import errno_for

T = TypeVar("T")

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=2).map(lambda names: "/" + "/".join(names))
DATA = st.binary(max_size=48)
OFFSETS = st.integers(min_value=0, max_value=80)
OPEN_MODES = st.sampled_from([
    ("r", os.O_RDONLY), ("rw", os.O_RDWR), ("w", os.O_WRONLY), ("a", os.O_WRONLY | os.O_APPEND),
    ("trunc", os.O_RDWR | os.O_TRUNC),
])


class Outcome:
    """The result of a call, or the errno it failed with."""

    def __init__(self, call: Callable[[], T]) -> None:
        self.value: Any = None
        self.errno = 0
        try:
            self.value = call()
        except Exception as error:  # both worlds' errors are compared by errno
            self.errno = errno_for(error)
            if not isinstance(error, OSError) and self.errno == errno.EIO:
                raise


def same(local: Callable[[], T], tested: Callable[[], Any], name: str | None = None) -> Any:
    """Run both; they must both succeed or fail with one errno. Returns both values
    (the model's, then the tested one's). ``name`` (default: the caller's) labels the
    call in failures and in Hypothesis' statistics."""
    expected, got = Outcome(local), Outcome(tested)
    caller = name or sys._getframe(1).f_code.co_name
    event(f"{caller}: {errno.errorcode.get(expected.errno, 'ok')}")
    assert got.errno == expected.errno, (
        f"{caller}: errno {errno.errorcode.get(got.errno, got.errno)} from the system under "
        f"test, {errno.errorcode.get(expected.errno, expected.errno)} from the model")
    return expected.value, got.value


class OpenFlags:
    """What the open flags of a file allow (shared by the models' open-file records)."""

    flags: int

    @property
    def readable(self) -> bool:
        return (self.flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY
