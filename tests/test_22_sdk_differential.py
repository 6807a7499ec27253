"""Differential tier: SDK user code run by the real ``qarnot`` package and by qarnotfs.

The same scenarios, written against the Qarnot SDK's API only, run once with ``qarnot``
(PyPI) and once with qarnotfs (only the ``Connection`` class differs), side by side on one
S3 server (moto, or Ceph RGW with ``--backend rgw``), each side on its own fresh bucket,
connecting in Qarnot mode through a fake Qarnot REST API (``GET /settings``, ``GET /info``,
``Authorization: <token>``). Each side's storage traffic goes through its own counting
proxy. Compared, step by step: what the step returned or observed (keys, bytes, ETags),
the exception it raised (by class name), and the requests it made (by S3 operation, named
by a boto3 hook on each attempt; the proxy's count of HTTP requests checks that the hook
saw them all). At the end the two buckets must hold the same keys, bytes and ETags.

Where qarnotfs differs on purpose, the difference is listed below (``DIFFERENCES`` and
``REQUEST_DIFFERENCES``), each with its reason; README's Python section lists the same.
Cross-sync tests then use both packages on one bucket: what one uploaded, the other's sync
finds unchanged, and the mount reads what the SDK wrote byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import qarnot.connection
from faultproxy import FaultProxy
from mounting import mounted, storage_environment
from qarnot_api import FakeQarnotApi, serve
from servers import empty_and_delete_bucket

import qarnotfs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from servers import S3Server

MIB = 1024 * 1024
SDK, QARNOTFS = "qarnot", "qarnotfs"
CONNECTIONS: dict[str, Any] = {SDK: qarnot.connection.Connection, QARNOTFS: qarnotfs.Connection}
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
          "CopyObject", "UploadPartCopy"}
UPLOADS = {"PutObject", "CreateMultipartUpload", "UploadPart"}

# Steps whose outcome differs on purpose: step -> (the SDK's, qarnotfs's). An outcome is
# the value the step observed, or "raised <class name>".
DIFFERENCES: dict[str, tuple[object, object]] = {
    # The SDK's `in` compares the key with ObjectSummary resources: always False.
    "contains": (False, True),
    # get_file(remote) without `local`: the documentation says the local name defaults to
    # *remote*; the SDK uses only its base name. qarnotfs keeps the key's folders (and
    # refuses a key that would lead outside the current folder).
    "getitem": ("hello.txt", "texts/hello.txt"),
    # A missing key: the documentation promises ValueError (KeyError for b[key]); the SDK
    # lets botocore's ClientError through, after creating an empty local file.
    "get_file missing": ("raised ClientError", "raised ValueError"),
    "getitem missing": ("raised ClientError", "raised KeyError"),
    "get_file missing leaves a file": (True, False),
    # The SDK lets S3 errors other than NoSuchBucket through as botocore's ClientError;
    # qarnotfs raises its exceptions (with the S3 code in `.code`).
    "copy_file missing source": ("raised NoSuchKey", "raised MissingObjectException"),
    "retrieve_bucket missing": ("raised ClientError", "raised MissingBucketException"),
    "get_file on a deleted bucket": ("raised ClientError", "raised ValueError"),
    # The SDK's Bucket defines __eq__ without __hash__, so it cannot go in a set.
    "hashable": ("raised TypeError", 1),
}

# Steps whose requests differ on purpose: step -> (the SDK's, qarnotfs's) {operation: count}
# for the operations that differ; every other operation must be sent as often by both.
REQUEST_DIFFERENCES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    # `key in bucket`: one HEAD, where the SDK lists the whole bucket (and answers False).
    "contains": ({"ListObjects": 1}, {"HeadObject": 1}),
    # sync lists the bucket once with ListObjectsV2 and deletes with DeleteObjects; the
    # SDK lists twice with ListObjects and deletes key by key.
    "sync first": ({"ListObjects": 2}, {"ListObjectsV2": 1}),
    # A same-size change with another ETag costs qarnotfs one HEAD: the SHA-1 it records in
    # metadata is the documented criterion.
    "sync rename and change": ({"ListObjects": 2, "DeleteObject": 2},
                               {"ListObjectsV2": 1, "DeleteObjects": 1, "HeadObject": 1}),
    "sync content already there": ({"ListObjects": 2}, {"ListObjectsV2": 1}),
    # A server-side copy of a multipart object has a plain-MD5 ETag: the SDK never sees it
    # as unchanged, and deletes and copies it again on every sync.
    "sync unchanged": ({"ListObjects": 2, "DeleteObject": 1, "CopyObject": 1},
                       {"ListObjectsV2": 1}),
    # Objects of 8 MiB or more come down in 8 MiB ranges, in parallel (here two of 9 MiB:
    # two GETs each, where the SDK streams each in one).
    "sync_remote_to_local": ({"ListObjects": 1, "GetObject": 5},
                             {"ListObjectsV2": 1, "GetObject": 7}),
    # delete(): the SDK asks whether the bucket is versioned and lists object versions;
    # qarnotfs lists the objects and aborts unfinished multipart uploads (which would
    # keep the bucket from being deleted).
    "bucket delete": ({"GetBucketVersioning": 1, "ListObjectVersions": 1},
                      {"ListObjectsV2": 1, "ListMultipartUploads": 1}),
}


@dataclass
class Side:
    """One package's connection, bucket, proxy and request counts."""

    package: str
    connection: Any
    bucket_name: str
    proxy: FaultProxy
    work: Path
    operations: Counter[str] = field(default_factory=Counter)

    def bucket(self) -> Any:
        return self.connection.retrieve_bucket(self.bucket_name)

    def record(self, event_name: str = "", **_: Any) -> None:
        self.operations[event_name.rsplit(".", 1)[-1]] += 1

    def reset(self) -> None:
        self.operations.clear()
        self.proxy.seen.clear()

    def requests(self) -> dict[str, int]:
        """The operations sent since :meth:`reset` (the proxy saw as many requests)."""
        assert sum(self.operations.values()) == len(self.proxy.seen), \
            (self.operations, self.proxy.seen)
        return dict(self.operations)


@dataclass
class Record:
    """What a scenario observed on one side: step -> outcome, and step -> requests."""

    side: Side
    outcomes: dict[str, object] = field(default_factory=dict)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)

    def step(self, name: str, action: Callable[[], object]) -> object:
        self.side.reset()
        try:
            outcome: object = action()
        except Exception as error:
            outcome = f"raised {type(error).__name__}"
        self.outcomes[name] = outcome
        self.requests[name] = self.side.requests()
        return outcome


@pytest.fixture
def qarnot_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server, tmp_path: Path) -> None:
    """Nothing from the environment but the region: the storage comes from /settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "QARNOT")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@contextlib.contextmanager
def open_side(package: str, s3_server: S3Server, s3_client: S3Client, work: Path,
              bucket_name: str | None = None, **options: Any) -> Iterator[Side]:
    """A connection of ``package`` in Qarnot mode, through its own proxy, on a bucket (a
    new one, deleted at the end, unless ``bucket_name`` is given)."""
    name = bucket_name or f"{package[:3]}-{uuid.uuid4().hex[:16]}"
    if bucket_name is None:
        s3_client.create_bucket(Bucket=name)
    api = FakeQarnotApi(token=s3_server.secret_key, settings={}, email=s3_server.access_key)
    with FaultProxy(s3_server.endpoint_url, lifetime=600) as proxy, \
            contextlib.contextmanager(serve)(api) as running:
        api.settings["storage"] = proxy.url
        connection = CONNECTIONS[package](client_token=api.token, cluster_url=running.url,
                                          **options)
        side = Side(package, connection, name, proxy, work)
        clients = {id(c): c for c in (connection.s3client,
                                      connection.s3resource.meta.client)}
        for client in clients.values():
            client.meta.events.register("before-send.s3", side.record)
        work.mkdir(parents=True, exist_ok=True)
        try:
            yield side
        finally:
            if bucket_name is None:
                empty_and_delete_bucket(s3_client, name)


@pytest.fixture
def sides(qarnot_env: None, s3_server: S3Server, s3_client: S3Client,
          tmp_path: Path) -> Iterator[dict[str, Side]]:
    with open_side(SDK, s3_server, s3_client, tmp_path / SDK) as sdk, \
            open_side(QARNOTFS, s3_server, s3_client, tmp_path / QARNOTFS) as ours:
        yield {SDK: sdk, QARNOTFS: ours}


def test_the_listed_differences_are_differences() -> None:
    for table in (DIFFERENCES, REQUEST_DIFFERENCES):
        for name, (sdk, ours) in table.items():
            assert sdk != ours, name


def compare(records: dict[str, Record],
            request_differences: dict[str, tuple[dict[str, int], dict[str, int]]]
            = REQUEST_DIFFERENCES) -> None:
    """Every step gave the same outcome and requests on both sides, but the listed ones."""
    sdk, ours = records[SDK], records[QARNOTFS]
    assert list(sdk.outcomes) == list(ours.outcomes)
    for name in sdk.outcomes:
        expected = DIFFERENCES.get(name, (sdk.outcomes[name], sdk.outcomes[name]))
        assert (sdk.outcomes[name], ours.outcomes[name]) == expected, name
        sdk_only, ours_only = request_differences.get(name, ({}, {}))
        assert {op: sdk.requests[name].get(op) for op in sdk_only} == sdk_only, name
        assert {op: ours.requests[name].get(op) for op in ours_only} == ours_only, name
        assert without(sdk.requests[name], sdk_only) == without(ours.requests[name], ours_only), \
            (name, sdk.requests[name], ours.requests[name])


def without(requests: dict[str, int], operations: dict[str, int]) -> dict[str, int]:
    return {op: count for op, count in requests.items() if op not in operations}


def bucket_state(s3_client: S3Client, name: str) -> dict[str, tuple[str, str]]:
    """key -> (ETag, MD5 of the bytes) of every object, read with a plain boto3 client."""
    state: dict[str, tuple[str, str]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for entry in page.get("Contents", []):
            data = s3_client.get_object(Bucket=name, Key=entry["Key"])["Body"].read()
            state[entry["Key"]] = (entry["ETag"], hashlib.md5(data).hexdigest())
    return state


def run_both(sides: dict[str, Side], scenario: Callable[[Record], None]) -> dict[str, Record]:
    records = {package: Record(side) for package, side in sides.items()}
    for record in records.values():
        scenario(record)
    return records


def assert_same_buckets(sides: dict[str, Side], s3_client: S3Client) -> None:
    assert bucket_state(s3_client, sides[SDK].bucket_name) \
        == bucket_state(s3_client, sides[QARNOTFS].bucket_name)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


BIG = os.urandom(9 * MIB)  # two 8 MiB parts: a multipart ETag


# -- side by side -------------------------------------------------------------------------


def objects_scenario(record: Record) -> None:
    """Uploads, listings as ObjectSummary resources, downloads, copies, deletes."""
    side = record.side
    bucket = side.bucket()
    small = write(side.work / "small.bin", b"small content")
    big = write(side.work / "big.bin", BIG)
    step = record.step
    step("add_string", lambda: bucket.add_string("hello", "texts/hello.txt") and None)
    step("add_file small", lambda: bucket.add_file(str(small), "files/small.bin") and None)
    step("add_file big", lambda: bucket.add_file(str(big), "files/big.bin") and None)
    with open(small, "rb") as handle:
        step("add_file object", lambda: bucket.add_file(handle) and None)
    step("list_files", lambda: sorted((s.key, s.size, s.e_tag, s.storage_class)
                                      for s in bucket.list_files()))
    step("directory", lambda: sorted(s.key for s in bucket.directory("files/")))
    step("directory filter", lambda: [s.key for s in
                                      bucket.directory("files/").filter(Prefix="files/b")])
    summary = next(s for s in bucket.list_files() if s.key == "texts/hello.txt")
    step("summary body", summary.get()["Body"].read)
    step("summary object", lambda: summary.Object().content_length)
    step("contains", lambda: "texts/hello.txt" in bucket)
    step("iter", lambda: sorted(s.key for s in bucket))
    downloads = side.work / "downloads"
    downloads.mkdir()
    os.chdir(downloads)
    path = step("getitem", lambda: os.path.relpath(bucket["texts/hello.txt"], downloads))
    step("getitem bytes", (downloads / str(path)).read_bytes)
    target = downloads / "big.out"
    step("get_file big", lambda: hashlib.md5(
        Path(bucket.get_file("files/big.bin", str(target))).read_bytes()).hexdigest())
    step("get_file missing", lambda: bucket.get_file("no/such.key", str(downloads / "gone")))
    step("get_file missing leaves a file", (downloads / "gone").exists)
    step("getitem missing", lambda: bucket["no/such.key"])
    step("copy_file big", lambda: bucket.copy_file("files/big.bin", "copies/big.bin")
         ["CopyObjectResult"]["ETag"])
    step("copy_file small", lambda: bucket.copy_file("texts/hello.txt", "copies/hello.txt")
         ["CopyObjectResult"]["ETag"])
    step("copy_file missing source", lambda: bucket.copy_file("no/such.key", "x"))
    step("delitem", lambda: bucket.__delitem__("files/small.bin"))
    step("directory delete", lambda: len(bucket.directory("copies/").delete()))
    step("iter after deletes", lambda: sorted(s.key for s in bucket))


def test_objects_side_by_side(sides: dict[str, Side], s3_client: S3Client,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sides[SDK].work)  # undone after the test (the scenario changes it)
    compare(run_both(sides, objects_scenario))
    assert_same_buckets(sides, s3_client)


def buckets_scenario(record: Record) -> None:
    """Connection-level calls, bucket equality, user info, deleting a bucket."""
    side, step = record.side, record.step
    connection = side.connection
    step("retrieve equal", lambda: connection.retrieve_bucket(side.bucket_name)
         == connection.retrieve_bucket(side.bucket_name))
    step("retrieve_or_create", lambda: connection.retrieve_or_create_bucket(side.bucket_name)
         .uuid == side.bucket_name)
    step("in buckets", lambda: side.bucket() in connection.buckets())
    step("hashable", lambda: len({side.bucket(), side.bucket()}))
    step("uuid and description", lambda: (side.bucket().uuid, side.bucket().description)
         == (side.bucket_name, side.bucket_name))
    step("user_info", lambda: (connection.user_info.email,
                               connection.user_info.quota_bytes_bucket))
    step("s3client", lambda: side.bucket_name in
         [b["Name"] for b in connection.s3client.list_buckets()["Buckets"]])
    step("s3resource", lambda: [o.key for o in
                                connection.s3resource.Bucket(side.bucket_name).objects.all()])
    missing = f"missing-{uuid.uuid4().hex[:16]}"
    step("retrieve_bucket missing", lambda: connection.retrieve_bucket(missing))
    side.bucket().add_string("x", "a/b")
    step("bucket delete", lambda: side.bucket().delete())


def test_buckets_side_by_side(sides: dict[str, Side], s3_client: S3Client) -> None:
    records = {}
    for package, side in sides.items():
        records[package] = Record(side)
        buckets_scenario(records[package])
        assert side.bucket_name not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]
        s3_client.create_bucket(Bucket=side.bucket_name)  # for the fixture to delete
    compare(records)


def deleted_bucket_scenario(record: Record) -> None:
    """The bucket is deleted behind the program's back."""
    side, step = record.side, record.step
    bucket = side.bucket()
    local = write(side.work / "f.txt", b"f")
    side.connection.s3client.delete_bucket(Bucket=side.bucket_name)
    step("copy_file on a deleted bucket", lambda: bucket.copy_file("a", "b"))
    step("list_files on a deleted bucket", bucket.list_files)
    step("add_file on a deleted bucket", lambda: bucket.add_file(str(local), "f.txt"))
    step("add_string on a deleted bucket", lambda: bucket.add_string("s", "s.txt"))
    step("delete_file on a deleted bucket", lambda: bucket.delete_file("f.txt"))
    step("get_file on a deleted bucket",
         lambda: bucket.get_file("f.txt", str(side.work / "out")))
    step("sync on a deleted bucket", lambda: bucket.sync_files({"f.txt": str(local)}))


def test_deleted_bucket_side_by_side(sides: dict[str, Side], s3_client: S3Client) -> None:
    records = {}
    for package, side in sides.items():
        records[package] = Record(side)
        deleted_bucket_scenario(records[package])
        s3_client.create_bucket(Bucket=side.bucket_name)  # for the fixture to delete
    sdk, ours = records[SDK].outcomes, records[QARNOTFS].outcomes
    for name in sdk:
        assert (sdk[name], ours[name]) == DIFFERENCES.get(name, (sdk[name], sdk[name])), name
    assert ours["copy_file on a deleted bucket"] == "raised MissingBucketException"


def sync_scenario(record: Record) -> None:
    """sync_directory: duplicates, a rename, a change, content already in the bucket."""
    side, step = record.side, record.step
    bucket = side.bucket()
    tree = side.work / "tree"
    write(tree / "a.txt", b"alpha")
    write(tree / "dup1.txt", b"twice")
    write(tree / "dup2.txt", b"twice")
    write(tree / "big.bin", BIG)
    write(tree / "sub" / "c.txt", b"charlie")
    step("sync first", lambda: bucket.sync_directory(str(tree)) and None)
    (tree / "a.txt").rename(tree / "renamed.txt")
    write(tree / "sub" / "c.txt", b"CHARLIE")
    step("sync rename and change", lambda: bucket.sync_directory(str(tree)) and None)
    write(tree / "again.bin", BIG)
    step("sync content already there", lambda: bucket.sync_directory(str(tree)) and None)
    step("a copy keeps a multipart ETag", lambda: "-" in side.connection.s3client.head_object(
        Bucket=side.bucket_name, Key="again.bin")["ETag"])
    step("sync unchanged", lambda: bucket.sync_directory(str(tree)) and None)
    back = side.work / "back"
    step("sync_remote_to_local", lambda: bucket.sync_remote_to_local(str(back)) and None)
    step("local copy", lambda: sorted((str(path.relative_to(back)),
                                       hashlib.md5(path.read_bytes()).hexdigest())
                                      for path in back.rglob("*") if path.is_file()))


def test_sync_side_by_side(sides: dict[str, Side], s3_client: S3Client) -> None:
    records = run_both(sides, sync_scenario)
    differences = dict(REQUEST_DIFFERENCES)
    if records[SDK].outcomes["a copy keeps a multipart ETag"]:
        # Ceph RGW: a server-side copy keeps its source's ETag, so the SDK too sees the
        # copy unchanged, and downloads identical content once.
        differences["sync unchanged"] = ({"ListObjects": 2}, {"ListObjectsV2": 1})
        differences["sync_remote_to_local"] = ({"ListObjects": 1, "GetObject": 4},
                                               {"ListObjectsV2": 1, "GetObject": 5})
    compare(records, differences)
    assert_same_buckets(sides, s3_client)


# -- verbose sync, logger -----------------------------------------------------------------


@pytest.mark.parametrize("package", [SDK, QARNOTFS])
def test_verbose_sync_prints_what_it_uploads_and_copies(
        package: str, qarnot_env: None, s3_server: S3Server, s3_client: S3Client,
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with open_side(package, s3_server, s3_client, tmp_path) as side:
        tree = tmp_path / "tree"
        write(tree / "one.txt", b"same")
        write(tree / "two.txt", b"same")
        side.bucket().sync_directory(str(tree), verbose=True)
        printed = capfd.readouterr().out
        assert "one.txt" in printed and "two.txt" in printed, printed


@pytest.mark.parametrize("package", [SDK, QARNOTFS])
def test_connection_logger_receives_verbose_sync(package: str, qarnot_env: None,
                                                  s3_server: S3Server, s3_client: S3Client,
                                                  tmp_path: Path) -> None:
    logger = logging.getLogger(f"test22.{package}")
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    with open_side(package, s3_server, s3_client, tmp_path, logger=logger) as side:
        write(tmp_path / "tree" / "file.txt", b"logged")
        side.bucket().sync_directory(str(tmp_path / "tree"), verbose=True)
    assert "file.txt" in stream.getvalue()


# -- cross-sync on one bucket -------------------------------------------------------------


def cross_tree(root: Path) -> Path:
    write(root / "small.txt", b"small")
    write(root / "big.bin", BIG)
    write(root / "deep" / "same-as-small.txt", b"small")
    write(root / "empty", b"")
    return root


@pytest.mark.parametrize(("first", "second"), [(SDK, QARNOTFS), (QARNOTFS, SDK)])
def test_each_sync_finds_the_others_uploads_unchanged(
        first: str, second: str, qarnot_env: None, s3_server: S3Server,
        s3_client: S3Client, bucket_name: str, tmp_path: Path) -> None:
    tree = cross_tree(tmp_path / "tree")
    with open_side(first, s3_server, s3_client, tmp_path / first, bucket_name) as side:
        side.bucket().sync_directory(str(tree))
        assert UPLOADS & set(side.operations), side.operations
    with open_side(second, s3_server, s3_client, tmp_path / second, bucket_name) as side:
        side.reset()
        side.bucket().sync_directory(str(tree))
        assert not WRITES & set(side.requests()), side.operations
    assert set(bucket_state(s3_client, bucket_name)) == \
        {"small.txt", "big.bin", "deep/same-as-small.txt", "empty"}


@pytest.mark.mount
def test_the_mount_reads_sdk_uploads_byte_identical(
        qarnot_env: None, s3_server: S3Server, s3_client: S3Client, bucket_name: str,
        tmp_path: Path) -> None:
    tree = cross_tree(tmp_path / "tree")
    with open_side(SDK, s3_server, s3_client, tmp_path / SDK, bucket_name) as side:
        bucket = side.bucket()
        bucket.sync_directory(str(tree))
        bucket.add_string("é, from a string", "texts/string.txt")
    with mounted(bucket_name, tmp_path / "mnt", storage_environment(s3_server),
                 tmp_path / "mount-work") as mount:
        for relative in ("small.txt", "big.bin", "deep/same-as-small.txt", "empty"):
            assert (mount.mountpoint / relative).read_bytes() == (tree / relative).read_bytes()
        assert (mount.mountpoint / "texts" / "string.txt").read_text("utf-8") \
            == "é, from a string"
        mount.stop()
