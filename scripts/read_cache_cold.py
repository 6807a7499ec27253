#!/usr/bin/env python3
"""What the local read cache costs a cold read, and saves a warm one, through the core.

Owns: one measurement, not a test: a 128 MB object read through
:class:`qarnotfs.fs.core.Filesystem` (128 KiB reads, as the kernel sends them) on an S3
server, cold without the cache, cold with it (the blocks are written as the bytes arrive),
then warm (every byte from the cache). Each round uses a fresh cache folder.

    .venv/bin/moto_server -H 127.0.0.1 -p 47811 &
    python scripts/read_cache_cold.py http://127.0.0.1:47811 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import boto3

from qarnotfs.bucket import Bucket
from qarnotfs.connection import Connection
from qarnotfs.fs.core import Filesystem, FsOptions

BUCKET, KEY = "read-cache-cold", "big.bin"
READ = 128 << 10


def timed_read(url: str, work: Path, cache_size: int | None) -> float:
    """Seconds to read the whole object through a new core."""
    with Connection(storage_url=url, access_key="a", secret_key="b") as connection:
        fs = Filesystem(Bucket(connection, BUCKET, create=False),
                        FsOptions(staging_dir=work / "staging", read_cache_dir=work / "blocks",
                                  read_cache_size=cache_size))
        try:
            handle = fs.open(f"/{KEY}", os.O_RDONLY)
            started, offset = time.perf_counter(), 0
            while chunk := fs.read(handle, READ, offset):
                offset += len(chunk)
            elapsed = time.perf_counter() - started
            fs.release(handle)
        finally:
            fs.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="an S3 server (moto's, or any test server)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128 * 1000 * 1000)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "a")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "b")
    client = boto3.client("s3", endpoint_url=args.url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(args.size))
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            figures = [("no cache", timed_read(args.url, work, 0)),
                       ("cold, cache", timed_read(args.url, work, None)),
                       ("warm, cache", timed_read(args.url, work, None))]
        print("  ".join(f"{label}: {seconds:.2f} s ({args.size / seconds / 1e6:.0f} MB/s)"
                        for label, seconds in figures))


if __name__ == "__main__":
    main()
