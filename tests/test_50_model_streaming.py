"""Early parts against a reference model: a bytearray.

Random sequences of writes (front to back in 1 MiB pieces, or in one call, anywhere, past
the end too) and truncates are applied to a file of the core, whose parts of 5 MiB go to
the server while it is written, and to a bytearray; after close the object must hold
exactly the bytearray's bytes, and no unfinished upload may be left. Writes land while
earlier parts are in flight (those read before a change are sent, then dropped) or, after
a "settle" step, once they were sent (those must be sent again at close).

    QARNOTFS_MODEL_EXAMPLES=100 pytest tests/test_50_model_streaming.py   # a longer run
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import wait
from typing import TYPE_CHECKING

import hypothesis.strategies as st
from hypothesis import HealthCheck, example, given, settings

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from mypy_boto3_s3 import S3Client

pytest_plugins = ("fs_helpers",)

MIB = 1 << 20
PART = 5 * MIB
EXAMPLES = max(1, int(os.environ.get("QARNOTFS_MODEL_EXAMPLES", "30")) // 2)

WRITES = st.tuples(st.just("write"), st.integers(0, 4 * PART // MIB),  # offset in MiB
                   st.integers(1, 3 * PART // MIB), st.booleans(), st.integers(0, 255))
TRUNCATES = st.tuples(st.just("truncate"), st.integers(0, 4 * PART // MIB),
                      st.integers(0, MIB - 1), st.booleans(), st.integers(0, 0))
SETTLES = st.tuples(st.just("settle"), st.just(0), st.just(0), st.just(False), st.just(0))
"""Wait for the parts in flight: the next writes then change parts already sent."""
STEPS = st.lists(st.one_of(WRITES, WRITES, TRUNCATES, SETTLES), min_size=1, max_size=10)


def pattern(seed: int, mebibytes: int) -> bytes:
    """``mebibytes`` MiB that differ from one MiB to the next and from seed to seed."""
    return b"".join(hashlib.sha256(bytes([seed]) + n.to_bytes(4, "big")).digest() * (MIB // 32)
                    for n in range(mebibytes))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
@example(steps=[("write", 0, 11, True, 1), ("settle", 0, 0, False, 0),
                ("write", 2, 1, False, 2)])  # part 1 changes after it was sent
@example(steps=[("write", 0, 16, True, 3), ("settle", 0, 0, False, 0),
                ("truncate", 7, 5, False, 0), ("write", 12, 1, False, 4)])  # part 2 cut
@example(steps=[("write", 1, 15, False, 0), ("truncate", 5, 1, False, 0)])  # queued parts
def test_the_object_holds_what_was_written_whatever_the_order(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        steps: list[tuple[str, int, int, bool, int]]) -> None:
    fs = make_fs(part_size=PART)
    model = bytearray()
    fh = fs.create("/model.bin", stat.S_IFREG | 0o644, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    for kind, first, amount, in_pieces, seed in steps:
        if kind == "settle":
            item = fs.items.get("/model.bin")
            assert item is not None
            stream = item.stream
            wait(stream.in_flight() if stream is not None else [])
            continue
        if kind == "truncate":
            length = first * MIB + amount
            fs.truncate("/model.bin", length, fh)
            model[length:] = b""
            model.extend(bytes(length - len(model)))
            continue
        offset, data = first * MIB, pattern(seed, amount)
        pieces = range(0, len(data), MIB) if in_pieces else range(0, 1)
        for start in pieces:
            piece = data[start:start + MIB] if in_pieces else data
            fs.write(fh, piece, offset + start)
        model.extend(bytes(max(0, offset + len(data) - len(model))))
        model[offset:offset + len(data)] = data
    fs.release(fh)
    fs.shutdown()  # aborts the uploads it gave up
    stored = s3_client.get_object(Bucket=bucket_name, Key="model.bin")["Body"].read()
    assert len(stored) == len(model) and stored == bytes(model)
    assert not s3_client.list_multipart_uploads(Bucket=bucket_name).get("Uploads")
