"""What the reference-model tests share: the strategies and the two-world comparison.

``test_50_model_core`` (the filesystem core) and ``test_50_model_mount`` (a live FUSE
mount) apply the same random operations to the system under test and to a local folder;
this module owns the names, data and offsets they draw, and ``same``, which runs one call
in both worlds and requires the same result or the same errno. It also owns the pieces of
the models' skeleton that do not depend on what is tested: picking an open file, walking
the local tree, running a machine, and ``Outside``, the other client that changes the
bucket behind the tested system's back.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from qarnotfs.fs.errors import errno_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

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


# == the skeleton of a model: what both state machines do the same way ================

LISTED = st.sampled_from(["/", "/a", "/b", "/a/a", "/a/b"])
"""The folders a listing step looks at."""
FOLDERS = st.lists(st.sampled_from(["/a", "/b", "/a/b"]), unique=True)
FILES = st.lists(st.tuples(PATHS, DATA), max_size=4)
"""What a model starts with (``FOLDERS`` made in this order, then ``FILES`` written), so
that fewer steps just fail with ENOENT."""

P = TypeVar("P")


def pick(candidates: Iterable[P], index: int, want: Callable[[P], bool]) -> P | None:
    """The ``index``-th (modulo their number) of the candidates ``want`` accepts."""
    wanted = [candidate for candidate in candidates if want(candidate)]
    return wanted[index % len(wanted)] if wanted else None


def local_tree(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each folder of the model's local tree, as a model path ("/", "/a", "/a/b"), with the
    names of its folders and of its files."""
    for folder, dirs, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        yield ("/" if relative == "." else "/" + relative), dirs, files


def run_model(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    """Run ``machine`` for ``examples`` examples of up to ``steps`` steps, each new (no
    database: a failure is reported with its steps, not replayed from a file)."""
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None))


class Outside(Protocol):
    """Another client of the bucket, which changes objects behind the mount's back
    (:class:`ServerClient` on a server; a ``tests/memstore.py`` MemStore is its own)."""

    def put(self, key: str, data: bytes) -> object: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class ServerClient:
    """Another client of the test server's bucket: a raw boto3 client."""

    client: S3Client
    bucket_name: str

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket_name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket_name, Key=key)
