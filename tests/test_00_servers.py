"""Tier 0: the S3 server layer the other tiers stand on (fixtures of conftest.py).

Runs on either backend: ``pytest tests/test_00_servers.py [--backend rgw]``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from servers import S3Server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024


def test_server_is_on_loopback(s3_server: S3Server, request: pytest.FixtureRequest) -> None:
    assert s3_server.backend == request.config.getoption("backend")
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_put_get_list(s3_client: S3Client, bucket_name: str) -> None:
    keys = ["a.txt", "dir/", "dir/b.txt", "dir/sub/c.txt", "dir/é and spaces+plus"]
    for key in keys:
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=key.encode())
    for key in keys:
        body = s3_client.get_object(Bucket=bucket_name, Key=key)["Body"].read()
        assert body == key.encode()

    listing = s3_client.list_objects_v2(Bucket=bucket_name)
    assert sorted(o["Key"] for o in listing["Contents"]) == sorted(keys)

    top = s3_client.list_objects_v2(Bucket=bucket_name, Delimiter="/")
    assert [o["Key"] for o in top.get("Contents", [])] == ["a.txt"]
    assert [p["Prefix"] for p in top.get("CommonPrefixes", [])] == ["dir/"]

    inner = s3_client.list_objects_v2(Bucket=bucket_name, Prefix="dir/", Delimiter="/")
    assert sorted(o["Key"] for o in inner["Contents"]) == [
        "dir/",
        "dir/b.txt",
        "dir/é and spaces+plus",
    ]
    assert [p["Prefix"] for p in inner["CommonPrefixes"]] == ["dir/sub/"]


def test_paged_listing(s3_client: S3Client, bucket_name: str) -> None:
    for i in range(7):
        s3_client.put_object(Bucket=bucket_name, Key=f"k{i:02d}", Body=b"")
    pages = s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket_name, PaginationConfig={"PageSize": 3}
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == [f"k{i:02d}" for i in range(7)]


def test_multipart_round_trip(s3_client: S3Client, bucket_name: str) -> None:
    data = os.urandom(9 * MIB)
    part_size = 8 * MIB
    upload = s3_client.create_multipart_upload(Bucket=bucket_name, Key="big.bin")
    parts = []
    md5s = []
    for number, start in enumerate(range(0, len(data), part_size), start=1):
        chunk = data[start : start + part_size]
        md5s.append(hashlib.md5(chunk).digest())
        result = s3_client.upload_part(
            Bucket=bucket_name,
            Key="big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=chunk,
        )
        parts.append({"PartNumber": number, "ETag": result["ETag"]})
    s3_client.complete_multipart_upload(
        Bucket=bucket_name,
        Key="big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
    )
    # Ceph RGW 16 answers CompleteMultipartUpload with an empty <ETag/>: HEAD is the source.
    head = s3_client.head_object(Bucket=bucket_name, Key="big.bin")
    expected = hashlib.md5(b"".join(md5s)).hexdigest() + "-2"
    assert head["ETag"].strip('"') == expected
    assert head["ContentLength"] == len(data)
    assert s3_client.get_object(Bucket=bucket_name, Key="big.bin")["Body"].read() == data
    ranged = s3_client.get_object(Bucket=bucket_name, Key="big.bin", Range="bytes=8388600-8388615")
    assert ranged["Body"].read() == data[8388600:8388616]


def test_pending_upload_is_cleaned_up(s3_client: S3Client, bucket_name: str) -> None:
    # Left pending on purpose: the bucket_name fixture must abort it to delete the bucket.
    upload = s3_client.create_multipart_upload(Bucket=bucket_name, Key="pending")
    s3_client.upload_part(
        Bucket=bucket_name, Key="pending", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )


def test_metadata_round_trip(s3_client: S3Client, bucket_name: str) -> None:
    metadata = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000.123456789"}
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"data", Metadata=metadata)
    assert s3_client.head_object(Bucket=bucket_name, Key="f")["Metadata"] == metadata
    assert s3_client.get_object(Bucket=bucket_name, Key="f")["Metadata"] == metadata

    # Metadata can only be changed by a copy; onto itself with REPLACE is how chmod works.
    changed = {**metadata, "mode": "33261"}
    s3_client.copy_object(
        Bucket=bucket_name,
        Key="f",
        CopySource={"Bucket": bucket_name, "Key": "f"},
        MetadataDirective="REPLACE",
        Metadata=changed,
    )
    head = s3_client.head_object(Bucket=bucket_name, Key="f")
    assert head["Metadata"] == changed
    assert s3_client.get_object(Bucket=bucket_name, Key="f")["Body"].read() == b"data"


def test_delete_objects(s3_client: S3Client, bucket_name: str) -> None:
    keys = [f"d/{i}" for i in range(20)]
    for key in keys:
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"1")
    result = s3_client.delete_objects(
        Bucket=bucket_name, Delete={"Objects": [{"Key": k} for k in keys]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted(keys)
    assert s3_client.list_objects_v2(Bucket=bucket_name)["KeyCount"] == 0


def test_missing_bucket(s3_client: S3Client, missing_bucket_name: str) -> None:
    with pytest.raises(ClientError) as info:
        s3_client.list_objects_v2(Bucket=missing_bucket_name)
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"


def test_missing_key(s3_client: S3Client, bucket_name: str) -> None:
    with pytest.raises(ClientError) as info:
        s3_client.get_object(Bucket=bucket_name, Key="nope")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"


def test_storage_env(storage_env: dict[str, str], s3_server: S3Server) -> None:
    assert os.environ["QARNOT_STORAGE_URL"] == s3_server.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "AWS_PROFILE" not in os.environ
    assert storage_env["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key


def test_s3_env_in_subprocess(
    s3_env: dict[str, str], s3_client: S3Client, bucket_name: str
) -> None:
    # A separate process finds the server and the bucket through the environment alone.
    code = (
        "import os, boto3\n"
        "from botocore.config import Config\n"
        "s3 = boto3.client('s3', endpoint_url=os.environ['QARNOT_STORAGE_URL'],\n"
        "                  config=Config(s3={'addressing_style': 'path'}))\n"
        f"s3.put_object(Bucket='{bucket_name}', Key='from-subprocess', Body=b'ok')\n"
    )
    subprocess.run([sys.executable, "-c", code], env=s3_env, check=True, timeout=60)
    body = s3_client.get_object(Bucket=bucket_name, Key="from-subprocess")["Body"].read()
    assert body == b"ok"


@pytest.mark.rgw_only
def test_rgw_only_marker(s3_server: S3Server) -> None:
    assert s3_server.backend == "rgw"


@pytest.mark.moto_only
def test_moto_only_marker(s3_server: S3Server) -> None:
    assert s3_server.backend == "moto"
