"""Every Bucket method and property against the real S3 server fixture (moto or RGW).

What is stored is checked with a plain boto3 client (``s3_client``), independently of
qarnotfs.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from boto3.s3.transfer import TransferConfig
from strict_s3 import strict_endpoint

from qarnotfs import Bucket, Connection
from qarnotfs.checksums import SHA1_METADATA_KEY, fingerprint
from qarnotfs.exceptions import (
    InvalidPartException,
    InvalidRangeException,
    MissingBucketException,
    MissingObjectException,
    MissingUploadException,
    QarnotGenericException,
    StorageTimeout,
    StorageUnreachableException,
    UnauthorizedException,
    storage_errors,
)

if TYPE_CHECKING:
    from faultproxy import FaultProxy
    from mypy_boto3_s3 import S3Client
    from servers import S3Server

MIB = 1024 * 1024


@pytest.fixture
def connection(s3_server: S3Server) -> Iterator[Connection]:
    with Connection(storage_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key) as conn:
        yield conn


@pytest.fixture
def bucket(connection: Connection, bucket_name: str) -> Bucket:
    return connection.retrieve_bucket(bucket_name)


def put(s3_client: S3Client, bucket: str, key: str, data: bytes = b"x") -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)


def keys_in(s3_client: S3Client, bucket: str, prefix: str = "") -> set[str]:
    paginator = s3_client.get_paginator("list_objects_v2")
    return {entry["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for entry in page.get("Contents", [])}


def body(s3_client: S3Client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# -- identity and listing -----------------------------------------------------------------


def test_identity_properties_and_compat_no_ops(bucket: Bucket, bucket_name: str,
                                               connection: Connection) -> None:
    assert bucket.uuid == bucket.description == bucket.name == bucket_name
    assert bucket.connection is connection
    assert bucket_name in repr(bucket)
    bucket.update()
    bucket.update(flush=True)
    bucket.flush()


def test_list_files_paginates_past_1000_keys(bucket: Bucket, bucket_name: str,
                                             s3_client: S3Client) -> None:
    keys = [f"many/{i:05d}" for i in range(1001)] + ["other/one"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: put(s3_client, bucket_name, key), keys))
    listed = bucket.list_files()
    assert len(listed) == 1002 and {summary.key for summary in listed} == set(keys)
    assert all(summary.size == 1 and summary.bucket_name == bucket_name for summary in listed)
    assert len(list(bucket.directory("many/"))) == 1001
    assert [summary.key for summary in bucket.directory("other")] == ["other/one"]
    assert {summary.key for summary in bucket} == set(keys)
    assert {info.key for info in bucket.iter_objects()} == set(keys)
    folder = bucket.list_folder("")
    assert sorted(folder.prefixes) == ["many/", "other/"] and folder.objects == []
    assert len(bucket.list_folder("many/").objects) == 1001


def test_directory_sanitizes_and_stat(bucket: Bucket, bucket_name: str,
                                      s3_client: S3Client) -> None:
    put(s3_client, bucket_name, "a/b/c.txt", b"abc")
    put(s3_client, bucket_name, "a/d.txt", b"d")
    assert {i.key for i in bucket.directory("//a//b")} == {"a/b/c.txt"}
    info = bucket.stat("a/b/c.txt")
    assert info is not None and info.size == 3
    assert info.etag == hashlib.md5(b"abc").hexdigest() and info.metadata == {}
    assert bucket.stat("a/b") is None
    assert bucket.has_objects_under("a/b/") and not bucket.has_objects_under("zz")


def test_contains_and_iteration(bucket: Bucket, bucket_name: str,
                                s3_client: S3Client) -> None:
    put(s3_client, bucket_name, "dir/file")
    assert "dir/file" in bucket and "/dir//file" in bucket
    assert "dir" not in bucket and "missing" not in bucket and 42 not in bucket
    assert [info.key for info in bucket] == ["dir/file"]


def test_read_ranges(bucket: Bucket, bucket_name: str, s3_client: S3Client) -> None:
    put(s3_client, bucket_name, "r", b"0123456789")
    assert bucket.read("r") == b"0123456789"
    assert bucket.read("r", 2, 3) == b"234"
    assert bucket.read("r", 8) == b"89"
    assert bucket.read("r", 5, 0) == b""
    assert bucket.read("r", 20, 5) == b""


# -- uploads ------------------------------------------------------------------------------


def test_add_file_from_path_records_sha1(bucket: Bucket, bucket_name: str,
                                         s3_client: S3Client, tmp_path: Path) -> None:
    local = tmp_path / "report.txt"
    local.write_bytes(b"hello")
    assert bucket.add_file(local) == "report.txt"
    assert bucket.add_file(str(local), "//sub//copy.txt") == "sub/copy.txt"
    assert keys_in(s3_client, bucket_name) == {"report.txt", "sub/copy.txt"}
    head = s3_client.head_object(Bucket=bucket_name, Key="sub/copy.txt")
    assert head["Metadata"][SHA1_METADATA_KEY] == hashlib.sha1(b"hello").hexdigest()
    with pytest.raises(FileNotFoundError):
        bucket.add_file(tmp_path / "missing", "k")


def test_add_file_from_binary_file_object(bucket: Bucket, bucket_name: str,
                                          s3_client: S3Client, tmp_path: Path) -> None:
    assert bucket.add_file(io.BytesIO(b"from memory"), "mem.bin") == "mem.bin"
    assert body(s3_client, bucket_name, "mem.bin") == b"from memory"
    named = tmp_path / "named.bin"
    named.write_bytes(b"named")
    with open(named, "rb") as handle:
        assert bucket.add_file(handle) == "named.bin"
    assert body(s3_client, bucket_name, "named.bin") == b"named"
    with pytest.raises(ValueError, match="remote is required"):
        bucket.add_file(io.BytesIO(b"no name"))


def test_setitem_uploads_a_file_or_a_directory(bucket: Bucket, bucket_name: str,
                                               s3_client: S3Client, tmp_path: Path) -> None:
    single = tmp_path / "single.txt"
    single.write_bytes(b"one")
    tree = make_tree(tmp_path / "tree", {"a.txt": b"a", "deep/b.txt": b"b"})
    bucket["dest/single.txt"] = single
    bucket["dest/tree"] = tree
    bucket["stream"] = io.BytesIO(b"stream")
    assert keys_in(s3_client, bucket_name) == {
        "dest/single.txt", "dest/tree/a.txt", "dest/tree/deep/b.txt", "stream"}


def test_add_directory_keeps_hierarchy_skips_empty_dirs_and_links(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"top.txt": b"t", "x/y/z.txt": b"z", "x/w.txt": b"w"})
    (tree / "empty" / "nested").mkdir(parents=True)
    os.symlink(tree / "top.txt", tree / "link.txt")
    keys = bucket.add_directory(tree, "up")
    expected = {"up/top.txt", "up/x/y/z.txt", "up/x/w.txt"}
    assert set(keys) == expected == keys_in(s3_client, bucket_name)
    assert body(s3_client, bucket_name, "up/x/y/z.txt") == b"z"
    assert bucket.add_directory(tmp_path / "tree" / "empty") == []


def test_add_directory_refuses_a_non_directory(bucket: Bucket, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    with pytest.raises(OSError, match="not a directory"):
        bucket.add_directory(regular)
    with pytest.raises(IOError):  # the SDK documents IOError, an alias of OSError
        bucket.add_directory(tmp_path / "missing")


def test_big_file_goes_up_in_8_mib_parts(bucket: Bucket, bucket_name: str,
                                         s3_client: S3Client, tmp_path: Path) -> None:
    data = os.urandom(17 * MIB)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    calls: list[tuple[int, int, str]] = []
    bucket.add_file(local, "big.bin", progress=lambda *args: calls.append(args))
    etag = s3_client.head_object(Bucket=bucket_name, Key="big.bin")["ETag"].strip('"')
    assert etag.endswith("-3") and etag == fingerprint(local).etag
    assert calls and max(done for done, _, _ in calls) == len(data)
    assert {(total, name) for _, total, name in calls} == {(len(data), "big.bin")}
    out = tmp_path / "back.bin"
    bucket.get_file("big.bin", out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_progress_true_shows_a_bar(bucket: Bucket, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "p.bin"
    local.write_bytes(b"z" * 100_000)
    bucket.add_file(local, "p.bin", progress=True)
    bucket.get_file("p.bin", tmp_path / "p2.bin", progress=True)
    assert "p.bin" in capsys.readouterr().err


# -- downloads ----------------------------------------------------------------------------


def test_get_file_targets(bucket: Bucket, bucket_name: str, s3_client: S3Client,
                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3_client, bucket_name, "dir/sub/data.txt", b"payload")
    explicit = tmp_path / "new" / "name.txt"
    assert bucket.get_file("dir/sub/data.txt", explicit) == str(explicit)
    assert explicit.read_bytes() == b"payload"
    folder = tmp_path / "folder"
    folder.mkdir()
    assert bucket.get_file("dir/sub/data.txt", folder) == str(folder / "data.txt")
    monkeypatch.chdir(tmp_path / "folder")
    written = bucket.get_file("dir/sub/data.txt")
    assert Path(written) == folder / "dir" / "sub" / "data.txt"
    assert Path(written).read_bytes() == b"payload"


def test_get_file_missing_raises_value_error_and_leaves_nothing(
        bucket: Bucket, tmp_path: Path) -> None:
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    with pytest.raises(ValueError, match="no such file"):
        bucket.get_file("nothing/here.txt", target_dir / "here.txt")
    assert list(target_dir.iterdir()) == []


def test_get_all_files_folders_duplicates_and_escaping_keys(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3_client, bucket_name, "empty-folder/", b"")
    put(s3_client, bucket_name, "a/one.txt", b"same bytes")
    put(s3_client, bucket_name, "b/two.txt", b"same bytes")
    put(s3_client, bucket_name, "c/other.txt", b"other")
    put(s3_client, bucket_name, "../../escape.txt", b"evil")
    put(s3_client, bucket_name, "d/../../../escape2.txt", b"evil")
    assert {"../../escape.txt", "d/../../../escape2.txt"} <= keys_in(s3_client, bucket_name)
    downloaded: list[str] = []
    real_download = Bucket.download

    def counting(self: Bucket, key: str, *args: Any, **kwargs: Any) -> None:
        downloaded.append(key)
        real_download(self, key, *args, **kwargs)

    monkeypatch.setattr(Bucket, "download", counting)
    out = tmp_path / "sandbox" / "out"
    bucket.get_all_files(out)
    assert (out / "empty-folder").is_dir()
    assert (out / "a" / "one.txt").read_bytes() == (out / "b" / "two.txt").read_bytes() \
        == b"same bytes"
    assert (out / "c" / "other.txt").read_bytes() == b"other"
    assert sorted(downloaded) in (["a/one.txt", "c/other.txt"], ["b/two.txt", "c/other.txt"])
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"sandbox/out/a/one.txt", "sandbox/out/b/two.txt",
                       "sandbox/out/c/other.txt"}


# -- copy and delete ----------------------------------------------------------------------


def test_copy_file_and_copy_with_metadata(bucket: Bucket, bucket_name: str,
                                          s3_client: S3Client) -> None:
    put(s3_client, bucket_name, "src.txt", b"copied")
    answer = bucket.copy_file("src.txt", "/dst//copy.txt")
    assert answer["CopyObjectResult"]["ETag"].strip('"') == hashlib.md5(b"copied").hexdigest()
    assert body(s3_client, bucket_name, "dst/copy.txt") == b"copied"
    bucket.copy("src.txt", "with-meta.txt", metadata={"color": "blue"})
    head = s3_client.head_object(Bucket=bucket_name, Key="with-meta.txt")
    assert head["Metadata"] == {"color": "blue"}
    with pytest.raises(MissingObjectException) as missing:
        bucket.copy_file("no-such-source", "x")
    assert missing.value.code == "NoSuchKey"


def test_delete_file_and_delete_many(bucket: Bucket, bucket_name: str,
                                     s3_client: S3Client) -> None:
    for key in ("keep", "gone", "batch/1", "batch/2"):
        put(s3_client, bucket_name, key)
    bucket.delete_file("/gone")
    bucket.delete_file("never-existed")  # as in S3: not an error
    bucket.delete_many(["batch/1", "batch/2"])
    bucket.delete_many([])
    assert keys_in(s3_client, bucket_name) == {"keep"}


def test_delete_removes_the_bucket_with_its_objects(connection: Connection,
                                                    bucket_name: str,
                                                    s3_client: S3Client) -> None:
    name = f"{bucket_name}-del"
    doomed = connection.create_bucket(name)
    doomed.add_file(io.BytesIO(b"content"), "a/b")
    s3_client.create_multipart_upload(Bucket=name, Key="pending")
    doomed.delete()
    assert not connection.bucket_exists(name)
    with pytest.raises(MissingBucketException):
        connection.retrieve_bucket(name)


# -- sync ---------------------------------------------------------------------------------


def test_sync_directory_uploads_changes_only_and_deletes_extras(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"a.txt": b"aaaa", "sub/b.txt": b"bbbb",
                                         "sub/c.txt": b"cccc"})
    put(s3_client, bucket_name, "stale.txt")
    first = bucket.sync_directory(tree)
    assert {k for k, _ in first.uploads} == {"a.txt", "sub/b.txt", "sub/c.txt"}
    assert first.deletes == ["stale.txt"]
    assert keys_in(s3_client, bucket_name) == {"a.txt", "sub/b.txt", "sub/c.txt"}

    again = bucket.sync_directory(tree)
    assert not again.uploads and not again.copies and not again.deletes
    assert sorted(again.unchanged) == ["a.txt", "sub/b.txt", "sub/c.txt"]

    (tree / "a.txt").write_bytes(b"AAAA")  # same size, other content
    (tree / "sub" / "c.txt").rename(tree / "moved.txt")
    (tree / "sub" / "b.txt").unlink()
    third = bucket.sync_directory(tree)
    assert [k for k, _ in third.uploads] == ["a.txt"]
    assert third.copies == [("sub/c.txt", "moved.txt")]
    assert sorted(third.deletes) == ["sub/b.txt", "sub/c.txt"]
    assert keys_in(s3_client, bucket_name) == {"a.txt", "moved.txt"}
    assert body(s3_client, bucket_name, "a.txt") == b"AAAA"
    assert body(s3_client, bucket_name, "moved.txt") == b"cccc"


def test_sync_directory_dry_run_changes_nothing(bucket: Bucket, bucket_name: str,
                                                s3_client: S3Client, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"new.txt": b"n"})
    put(s3_client, bucket_name, "old.txt")
    plan = bucket.sync_directory(tree, verbose=True, dry_run=True)
    assert [k for k, _ in plan.uploads] == ["new.txt"] and plan.deletes == ["old.txt"]
    assert keys_in(s3_client, bucket_name) == {"old.txt"}


def test_sync_remote_prefix_stops_at_a_slash(bucket: Bucket, bucket_name: str,
                                             s3_client: S3Client, tmp_path: Path) -> None:
    put(s3_client, bucket_name, "pre2/keep.txt")
    put(s3_client, bucket_name, "pre.txt")
    put(s3_client, bucket_name, "pre/old.txt")
    tree = make_tree(tmp_path / "tree", {"new.txt": b"n"})
    plan = bucket.sync_directory(tree, remote="pre")
    assert plan.deletes == ["pre/old.txt"]
    assert keys_in(s3_client, bucket_name) == {"pre2/keep.txt", "pre.txt", "pre/new.txt"}


def test_sync_recognises_objects_uploaded_by_the_qarnot_sdk(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    """The SDK uploads with boto3's upload_file, 8 MiB parts and no sha1 metadata."""
    tree = make_tree(tmp_path / "tree", {"small.txt": b"small", "big.bin": os.urandom(9 * MIB)})
    sdk_config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    for name in ("small.txt", "big.bin"):
        s3_client.upload_file(str(tree / name), bucket_name, f"in/{name}", Config=sdk_config)
    big_etag = s3_client.head_object(Bucket=bucket_name, Key="in/big.bin")["ETag"]
    assert big_etag.strip('"').endswith("-2")
    assert "sha1" not in s3_client.head_object(Bucket=bucket_name, Key="in/big.bin")["Metadata"]
    plan = bucket.sync_directory(tree, remote="in")
    assert sorted(plan.unchanged) == ["in/big.bin", "in/small.txt"]
    assert not plan.uploads and not plan.copies and not plan.deletes


def test_sync_files_mapping(bucket: Bucket, bucket_name: str, s3_client: S3Client,
                            tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.write_bytes(b"1")
    two = tmp_path / "two"
    two.write_bytes(b"22")
    plan = bucket.sync_files({"x/1.txt": one, "//y/2.txt": str(two)}, remote="dest/")
    assert {k for k, _ in plan.uploads} == {"dest/x/1.txt", "dest/y/2.txt"}
    assert keys_in(s3_client, bucket_name) == {"dest/x/1.txt", "dest/y/2.txt"}
    assert body(s3_client, bucket_name, "dest/y/2.txt") == b"22"


def test_sync_detects_same_size_change_on_sdk_uploads_via_etag(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"f.txt": b"version-1"})
    s3_client.upload_file(str(tree / "f.txt"), bucket_name, "f.txt")
    (tree / "f.txt").write_bytes(b"version-2")
    plan = bucket.sync_directory(tree)
    assert [k for k, _ in plan.uploads] == ["f.txt"]
    assert body(s3_client, bucket_name, "f.txt") == b"version-2"


def test_sync_directory_refuses_a_non_directory(bucket: Bucket, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a directory"):
        bucket.sync_directory(tmp_path / "missing")


# -- errors -------------------------------------------------------------------------------


def test_missing_bucket(connection: Connection, missing_bucket_name: str,
                        tmp_path: Path) -> None:
    ghost = Bucket(connection, missing_bucket_name, create=False)
    local = tmp_path / "f"
    local.write_bytes(b"x")
    with pytest.raises(MissingBucketException):
        ghost.list_files()
    with pytest.raises(MissingBucketException):
        list(ghost.directory("a"))  # a lazy collection: the request is made here
    with pytest.raises(MissingBucketException) as copying:
        ghost.copy_file("a", "b")
    assert copying.value.code == "NoSuchBucket"
    with pytest.raises(MissingBucketException):
        ghost.delete()
    with pytest.raises(MissingBucketException):
        ghost.add_file(local, "k")
    with pytest.raises(MissingBucketException):
        ghost.add_file(io.BytesIO(b"x"), "k")
    with pytest.raises(MissingBucketException):
        ghost.sync_directory(tmp_path)
    with pytest.raises(MissingBucketException):
        connection.retrieve_bucket(missing_bucket_name)


def test_bad_credentials(s3_server: S3Server, bucket_name: str, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_bytes(b"x")
    with strict_endpoint(s3_server.backend, s3_server.endpoint_url) as url, \
            Connection(storage_url=url, access_key="no-such-key",
                       secret_key="wrong-secret", retry_count=1) as conn:
        ghost = Bucket(conn, bucket_name, create=False)
        with pytest.raises(UnauthorizedException):
            conn.buckets()
        with pytest.raises(UnauthorizedException):
            ghost.list_files()
        with pytest.raises(UnauthorizedException):
            ghost.add_file(local, "k")
        with pytest.raises(UnauthorizedException):
            conn.create_bucket(f"{bucket_name}-x")


def test_other_s3_errors_keep_the_server_message(connection: Connection) -> None:
    with pytest.raises(QarnotGenericException, match="InvalidBucketName") as info:
        connection.create_bucket("ab")  # too short for S3
    assert type(info.value) is QarnotGenericException
    assert info.value.code == "InvalidBucketName" and info.value.status == 400
    assert "not valid" in str(info.value).lower()


def test_errors_carry_their_s3_code_and_class(bucket: Bucket, bucket_name: str,
                                              s3_client: S3Client) -> None:
    """Multipart and range errors come out as their own classes, with the server's code."""
    put(s3_client, bucket_name, "small", b"abc")
    assert bucket.read("small", 3, 5) == b""  # InvalidRange, told apart by class
    with pytest.raises(InvalidRangeException) as past_end, \
            storage_errors(bucket_name, "small"):
        s3_client.get_object(Bucket=bucket_name, Key="small", Range="bytes=10-20")
    assert past_end.value.code == "InvalidRange" and past_end.value.status == 416
    upload_id = bucket.create_multipart("big")
    bucket.upload_part("big", upload_id, 1, b"part")
    with pytest.raises(InvalidPartException) as wrong_part:
        bucket.complete_multipart("big", upload_id, [(1, '"' + "0" * 32 + '"')])
    assert wrong_part.value.code in ("InvalidPart", "InvalidPartOrder")
    bucket.abort_multipart("big", upload_id)
    bucket.abort_multipart("big", upload_id)  # already gone: done
    assert bucket.list_parts("big", upload_id) is None
    with pytest.raises(MissingUploadException) as gone, storage_errors(bucket_name, "big"):
        s3_client.abort_multipart_upload(Bucket=bucket_name, Key="big", UploadId=upload_id)
    # Ceph RGW answers NoSuchKey for an unknown upload id: still a missing upload.
    assert gone.value.code in ("NoSuchUpload", "NoSuchKey") and gone.value.status == 404
    with pytest.raises(MissingObjectException) as missing:
        bucket.read("no-such-key")
    assert missing.value.code == "NoSuchKey"


def test_unreachable_endpoint(tmp_path: Path) -> None:
    # A bound socket that never listens: connections are refused at once, and nobody
    # else can take the port meanwhile.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        with Connection(storage_url=f"http://127.0.0.1:{port}", access_key="a",
                        secret_key="b", retry_count=1) as conn:
            ghost = Bucket(conn, "any-bucket", create=False)
            with pytest.raises(StorageUnreachableException, match="unreachable") as refused:
                ghost.list_files()
            assert not isinstance(refused.value, StorageTimeout)
            assert refused.value.code is None
            with pytest.raises(StorageUnreachableException):
                conn.buckets()


def test_a_timeout_is_a_storage_timeout(proxy: FaultProxy, s3_server: S3Server,
                                        bucket_name: str) -> None:
    proxy.inject("delay", "GET ", seconds=math.inf)
    with Connection(storage_url=proxy.url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key, read_timeout=0.5, retry_count=0) as conn, \
            pytest.raises(StorageTimeout) as slow:
        Bucket(conn, bucket_name, create=False).read("any")
    assert isinstance(slow.value, StorageUnreachableException) and slow.value.code is None


# -- sync copies what the bucket already holds --------------------------------------------


def test_sync_swapping_two_files_uploads_both(bucket: Bucket, bucket_name: str,
                                              s3_client: S3Client, tmp_path: Path) -> None:
    """A key the plan overwrites is never a copy's source (it could change first)."""
    put(s3_client, bucket_name, "a.txt", b"content A")
    put(s3_client, bucket_name, "b.txt", b"content B")
    tree = make_tree(tmp_path / "tree", {"a.txt": b"content B", "b.txt": b"content A"})
    plan = bucket.sync_directory(tree)
    assert not plan.copies and not plan.duplicates
    assert body(s3_client, bucket_name, "a.txt") == b"content B"
    assert body(s3_client, bucket_name, "b.txt") == b"content A"


def test_sync_uploads_identical_files_once_and_copies_known_content(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    put(s3_client, bucket_name, "kept.txt", b"already here")
    put(s3_client, bucket_name, "stale.txt", b"old")
    tree = make_tree(tmp_path / "tree", {
        "kept.txt": b"already here", "stale.txt": b"already here",  # changed to known
        "new/also.txt": b"already here",                            # new, known content
        "one.txt": b"twin", "two.txt": b"twin", "three.txt": b"twin",  # new, identical
    })
    plan = bucket.sync_directory(tree)
    assert sorted(plan.copies) == [("kept.txt", "new/also.txt"), ("kept.txt", "stale.txt")]
    assert [key for key, _ in plan.uploads] == ["one.txt"]
    assert sorted(plan.duplicates) == [("one.txt", "three.txt"), ("one.txt", "two.txt")]
    for key, data in {"stale.txt": b"already here", "new/also.txt": b"already here",
                      "two.txt": b"twin", "three.txt": b"twin"}.items():
        assert body(s3_client, bucket_name, key) == data
    lines = list(plan.describe(bucket_name))
    assert lines.index(f"upload: {tree / 'one.txt'} -> {bucket_name}/one.txt") \
        < lines.index(f"copy: {bucket_name}/one.txt -> {bucket_name}/two.txt")


def test_sync_sees_a_big_object_with_a_plain_md5_etag_as_unchanged(
        bucket: Bucket, bucket_name: str, s3_client: S3Client, tmp_path: Path) -> None:
    """A server-side copy (or one PutObject) of 8 MiB or more has the whole MD5 as ETag."""
    data = os.urandom(9 * MIB)
    put(s3_client, bucket_name, "big.bin", data)
    assert "-" not in s3_client.head_object(Bucket=bucket_name, Key="big.bin")["ETag"]
    tree = make_tree(tmp_path / "tree", {"big.bin": data, "copy.bin": data})
    plan = bucket.sync_directory(tree)
    assert plan.unchanged == ["big.bin"] and plan.copies == [("big.bin", "copy.bin")]
    assert not plan.uploads


def test_add_file_reads_the_file_once(bucket: Bucket, bucket_name: str, s3_client: S3Client,
                                      tmp_path: Path) -> None:
    """Bytes this process reads (/proc/self/io), against a plain boto3 upload of the same
    file (one read, plus whatever an in-process server reads from its socket)."""
    for size in (3 * MIB, 20 * MIB):
        local = tmp_path / f"f{size}"
        local.write_bytes(os.urandom(size))
        before = read_bytes_so_far()
        s3_client.upload_file(str(local), bucket_name, "baseline",
                              Config=TransferConfig(multipart_chunksize=8 * MIB))
        baseline = read_bytes_so_far() - before
        before = read_bytes_so_far()
        bucket.add_file(local, "added")
        added = read_bytes_so_far() - before
        # A second read would add ``size``; moto's own reads vary by less than a quarter.
        assert added < baseline + size * 3 // 4, (size, added, baseline)
        assert body(s3_client, bucket_name, "added") == local.read_bytes()


def read_bytes_so_far() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_sync_remote_to_local(bucket: Bucket, bucket_name: str, s3_client: S3Client,
                              tmp_path: Path) -> None:
    for key, data in {"out/a.txt": b"a", "out/sub/b.txt": b"b", "out/empty/": b"",
                      "outside.txt": b"x", "out2/c.txt": b"c"}.items():
        put(s3_client, bucket_name, key, data)
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "b.txt").write_bytes(b"b")  # already right: not downloaded
    (target / "mine.txt").write_bytes(b"kept")
    plan = bucket.sync_remote_to_local(target, "out")
    assert [info.key for info, _ in plan.downloads] == ["out/a.txt"]
    assert (target / "a.txt").read_bytes() == b"a" and (target / "empty").is_dir()
    assert (target / "mine.txt").read_bytes() == b"kept"
    assert not (target / "c.txt").exists() and not (target / "outside.txt").exists()


def test_copy_file_of_20_mib_is_one_request(proxy: FaultProxy, s3_server: S3Server,
                                            bucket_name: str, s3_client: S3Client) -> None:
    data = os.urandom(20 * MIB)
    put(s3_client, bucket_name, "big", data)
    with Connection(storage_url=proxy.url, access_key=s3_server.access_key,
                    secret_key=s3_server.secret_key) as conn:
        bucket = Bucket(conn, bucket_name, create=False)
        bucket.copy_file("big", "copy")
    assert [(seen.method, seen.target.split("?")[0]) for seen in proxy.seen] \
        == [("PUT", f"/{bucket_name}/copy")]
    assert hashlib.md5(body(s3_client, bucket_name, "copy")).digest() \
        == hashlib.md5(data).digest()
