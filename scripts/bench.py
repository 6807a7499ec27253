#!/usr/bin/env python3
"""Benchmark: the same workloads through a qarnotfs mount and through boto3 directly.

Owns: the command line, the order of the measurements (each on a fresh bucket, each mount
fresh so it starts cold), the timing, and the clean-up (unmount, delete the buckets, stop
the server) on every exit, Ctrl-C included. Prints the machine and the exact command, then
one row per workload: boto3 seconds, mount seconds, ratio mount/boto3, target, met or not,
peak RSS of the mount daemon; with --peers, s3fs-fuse and rclone mount too.

    python scripts/bench.py                       # moto server, default sizes
    python scripts/bench.py --backend rgw --repeat 3
    python scripts/bench.py --scale 0.01 --only big-write,ls-l --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from benchlib.mounts import MOUNTS, Mount, QarnotfsMount, mounts_under, venv_tool
from benchlib.report import (
    Sample,
    Summary,
    header,
    machine,
    requests_table,
    summarize,
    table,
    tool_version,
    write_json,
)
from benchlib.server import (
    BenchError,
    Endpoint,
    RequestLog,
    behind_latency,
    given_endpoint,
    moto_server,
    rgw_server,
)
from benchlib.workloads import MIB, WORKLOADS, Side, Sizes, Workload

from qarnotfs.connection import Connection

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

SETTLE_TIMEOUT = 300.0
SETTLE_POLL = 0.01
"""Between checks of the bucket, for mounts that upload after close (a poll, not a wait)."""
PEERS = ["s3fs", "rclone"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time workloads through a qarnotfs mount and through boto3 directly.",
    )
    parser.add_argument("--backend", choices=["moto", "rgw"], default="moto",
                        help="start this S3 server on 127.0.0.1 (default: moto)")
    parser.add_argument("--endpoint-from-env", action="store_true",
                        help="use the server in QARNOT_STORAGE_URL / AWS_ACCESS_KEY_ID / "
                             "AWS_SECRET_ACCESS_KEY instead of starting one")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every count and size (0.01 for a smoke run)")
    parser.add_argument("--big-size", type=int, default=256, metavar="MIB",
                        help="size of the big file in MiB before --scale (default 256)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated workloads among: {', '.join(WORKLOADS)}")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each measurement N times (default 1)")
    parser.add_argument("--best", action="store_true",
                        help="report the best of the repetitions instead of the median")
    parser.add_argument("--peers", action="store_true",
                        help="also measure s3fs-fuse and rclone mount, where installed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent of the scratch folder (default: the system temp folder)")
    parser.add_argument("--mount-option", action="append", default=[], metavar="ARG",
                        help="extra argument for `qarnotfs mount` (repeatable), "
                             "e.g. --mount-option=--cache-ttl=5")
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS",
                        help="hold every request MS milliseconds on its way to the server, "
                             "for both sides (a proxy): storage across a network, as "
                             "Qarnot's is, where the loopback has none; for the small "
                             "workloads (the proxy forwards big bodies slower)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy collapsed stacks of the qarnotfs daemon per workload")
    parser.add_argument("--keep-scratch", action="store_true",
                        help="keep the scratch folder (server log, mount logs) for debugging")
    parser.add_argument("--fail-on-miss", action="store_true",
                        help="exit 3 when a qarnotfs target is not met")
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name] or list(WORKLOADS)
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose among {', '.join(WORKLOADS)}")
    if args.scale <= 0 or args.repeat < 1 or args.big_size < 1:
        parser.error("--scale, --repeat and --big-size must be positive")
    args.workloads = [WORKLOADS[name] for name in names]
    return args


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks unmount and stop the server."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def drop_page_cache(notes: list[str]) -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        message = f"page cache not dropped ({error.strerror}): cold reads may be warm"
        if message not in notes:
            notes.append(message)


def write_source(path: Path, size: int) -> None:
    """Random (incompressible) content, written once per run."""
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = min(remaining, 8 * MIB)
            out.write(os.urandom(chunk))
            remaining -= chunk


class Bench:
    """One benchmark run: a server, a client, a scratch folder, the samples collected."""

    def __init__(self, args: argparse.Namespace, endpoint: Endpoint, scratch: Path) -> None:
        self.args = args
        self.endpoint = endpoint
        self.scratch = scratch
        self.sizes = Sizes.scaled(args.scale, args.big_size * MIB)
        self.connection = Connection(storage_url=endpoint.url, access_key=endpoint.access_key,
                                     secret_key=endpoint.secret_key)
        self.requests = RequestLog(endpoint.log_path)
        self.samples: list[Sample] = []
        self.notes: list[str] = []
        self.source = scratch / "source.bin"
        QarnotfsMount.extra_args = list(args.mount_option)

    @contextlib.contextmanager
    def fresh_bucket(self, tool: str) -> Iterator[str]:
        name = f"qarnotfs-bench-{tool}-{uuid.uuid4().hex[:12]}"
        s3 = self.connection.s3
        s3.create_bucket(Bucket=name)
        try:
            yield name
        finally:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                objects: list[ObjectIdentifierTypeDef] = [
                    {"Key": item["Key"]} for item in page.get("Contents", [])
                ]
                if objects:
                    s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
            s3.delete_bucket(Bucket=name)

    def measure(self, workload: Workload, tool: str, repetition: int) -> Sample:
        sample = Sample(workload.name, tool, repetition)
        local = self.scratch / f"{workload.name}-{tool}-{repetition}"
        local.mkdir(mode=0o700)
        try:
            with self.fresh_bucket(tool) as bucket:
                side = Side(self.connection.s3, self.connection.transfer_config, bucket, local,
                            self.source, self.sizes)
                workload.prepare(side)
                if workload.cold_page_cache:
                    drop_page_cache(self.notes)
                if tool == "boto3":
                    if workload.warm:
                        workload.with_boto3(side)
                        drop_page_cache(self.notes)
                    self._timed(sample, side, lambda: workload.with_boto3(side), workload)
                else:
                    self._timed_mount(sample, side, workload, MOUNTS[tool])
                workload.check(side)
        except Exception as error:  # a failed run is reported, not fatal
            sample.seconds = None
            sample.error = f"{type(error).__name__}: {error}"
        return sample

    def _timed(self, sample: Sample, side: Side, operation: Callable[[], None],
               workload: Workload) -> None:
        start_mark = self.requests.mark()
        start = time.perf_counter()
        operation()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        with self.requests.own_requests(self.connection.s3) as checks:
            while not workload.settled(side):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the bucket did not show the result in {SETTLE_TIMEOUT:.0f} s"
                    )
                time.sleep(SETTLE_POLL)
        sample.seconds = time.perf_counter() - start
        counts = self.requests.between(start_mark, self.requests.mark())
        if counts is not None:
            # What the tool did, uploads after close included; not our checks of the bucket.
            sample.requests = dict(counts - checks)

    def _timed_mount(self, sample: Sample, side: Side, workload: Workload,
                     kind: type[Mount]) -> None:
        mountpoint = side.scratch / "mnt"
        mount = kind(self.endpoint, side.bucket, mountpoint, side.scratch)
        try:
            mount.mount()
            if workload.read_before_remount:
                workload.with_mount(side, mountpoint)
                mount.unmount()
                drop_page_cache(self.notes)
                mount.mount()
            elif workload.warm:
                workload.with_mount(side, mountpoint)
                drop_page_cache(self.notes)
            if self.args.profile and kind is QarnotfsMount:
                self.args.profile.mkdir(parents=True, exist_ok=True)
                mount.start_profile(self.args.profile / f"{workload.name}.txt")
            self._timed(sample, side, lambda: workload.with_mount(side, mountpoint), workload)
        finally:
            mount.stop_profile()
            sample.peak_rss = mount.peak_rss()
            mount.unmount()

    def run(self, tools: list[str]) -> list[Summary]:
        if any(w.name.startswith("big-") for w in self.args.workloads):
            write_source(self.source, self.sizes.big)
        summaries = []
        for workload in self.args.workloads:
            for repetition in range(1, self.args.repeat + 1):
                for tool in ["boto3", *tools]:
                    sample = self.measure(workload, tool, repetition)
                    self.samples.append(sample)
                    outcome = f"{sample.seconds:.3f} s" if sample.error is None else sample.error
                    print(f"  {workload.name} #{repetition} {tool}: {outcome}", file=sys.stderr,
                          flush=True)
            summaries.append(summarize(self.samples, workload, tools, self.args.best))
        return summaries


@contextlib.contextmanager
def server(args: argparse.Namespace, scratch: Path) -> Iterator[Endpoint]:
    with contextlib.ExitStack() as stack:
        if args.endpoint_from_env:
            endpoint = stack.enter_context(given_endpoint())
        elif args.backend == "rgw":
            endpoint = stack.enter_context(rgw_server())
        else:
            endpoint = stack.enter_context(moto_server(scratch))
        if args.latency:
            endpoint = stack.enter_context(behind_latency(endpoint, args.latency / 1000))
        yield endpoint


def available_peers(notes: list[str]) -> list[str]:
    peers = []
    for name in PEERS:
        why = MOUNTS[name].missing()
        if why:
            notes.append(f"peer {name} missing: {why}")
        else:
            peers.append(name)
    return peers


def peer_versions(peers: list[str]) -> str:
    versions = []
    if "s3fs" in peers:
        versions.append(f"s3fs {tool_version(['s3fs', '--version'])}")
    if "rclone" in peers:
        versions.append(tool_version([str(venv_tool("rclone")), "version"]))
    return ", ".join(versions) or "none installed"


def print_results(bench: Bench, summaries: list[Summary], peers: list[str]) -> list[str]:
    """Print the tables, notes and errors; return the errors."""
    print()
    print(table(summaries, peers))
    if bench.endpoint.log_path:
        print()
        print("S3 requests of each tool during the measurement (from moto's log; "
              "the benchmark's own checks of the bucket left out):")
        print(requests_table(summaries, ["qarnotfs", *peers]))
    for note in bench.notes:
        print(f"note: {note}")
    errors = [error for summary in summaries for error in summary.errors]
    for error in errors:
        print(f"error: {error}")
    return errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    why = QarnotfsMount.missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    facts = machine("given endpoint (--endpoint-from-env)" if args.endpoint_from_env
                    else args.backend)
    notes: list[str] = []
    peers = available_peers(notes) if args.peers else []
    if args.peers:
        facts["peers"] = peer_versions(peers)
    scratch = Path(tempfile.mkdtemp(prefix="qarnotfs-bench-", dir=args.workdir))
    try:
        with server(args, scratch) as endpoint:
            bench = Bench(args, endpoint, scratch)
            bench.notes += notes
            print(header(command, facts, bench.sizes), flush=True)
            summaries = bench.run(["qarnotfs", *peers])
            errors = print_results(bench, summaries, peers)
            if args.json:
                write_json(args.json, command, facts, bench.sizes, bench.samples, summaries,
                           bench.notes)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: mounts unmounted, buckets and server cleaned up", file=sys.stderr)
        return 130
    finally:
        remove_scratch(scratch, keep=args.keep_scratch)
    if errors:
        return 1
    if args.fail_on_miss and any(summary.met is False for summary in summaries):
        return 3
    return 0


def remove_scratch(path: Path, keep: bool) -> None:
    """Remove the scratch folder, unless asked to keep it or a mount is still inside."""
    left = mounts_under(path)
    if keep or left:
        reason = f"still mounted: {', '.join(left)}" if left else "--keep-scratch"
        print(f"scratch folder kept ({reason}): {path}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
