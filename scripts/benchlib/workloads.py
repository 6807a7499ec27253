"""The workloads, each done through a mount and through boto3 directly.

Owns: what each workload prepares (through boto3, untimed), what it does (timed) with a
mounted folder and with boto3 as a careful boto3 user would, when the bucket shows the
result ("settled"; for mounts that upload after close, the wait is part of the time), and
the check that the result is right (untimed: a fast wrong answer is an error, not a win).
"""

from __future__ import annotations

import hashlib
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from .server import BenchError

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

MIB = 1024 * 1024
SMALL_FILE_SIZE = 4096
LISTED_FILE_SIZE = 100
PREPARE_THREADS = 16


@dataclass(frozen=True)
class Sizes:
    """Counts and sizes of the workloads, after ``--scale``."""

    big: int
    small_files: int
    listed_files: int
    tree_files: int
    tree_folders: int
    renamed_files: int
    removed_files: int

    @classmethod
    def scaled(cls, scale: float, big: int) -> Sizes:
        def count(full: int) -> int:
            return max(2, round(full * scale))

        tree_files = count(1000)
        return cls(
            big=max(1, round(big * scale)),
            small_files=count(500),
            listed_files=count(2000),
            tree_files=tree_files,
            tree_folders=min(tree_files, count(20)),
            renamed_files=count(500),
            removed_files=count(500),
        )


@dataclass
class Side:
    """What one measurement works with: a client, a fresh bucket, a local scratch folder."""

    s3: S3Client
    transfer: TransferConfig
    bucket: str
    scratch: Path
    source: Path
    """The local big file, written once per run."""
    sizes: Sizes


# -- helpers ---------------------------------------------------------------------------------


def listing(side: Side, prefix: str) -> dict[str, int]:
    """Key -> size of every file under prefix (folder markers, keys ending in "/", left out)."""
    found: dict[str, int] = {}
    for page in side.s3.get_paginator("list_objects_v2").paginate(
        Bucket=side.bucket, Prefix=prefix
    ):
        found.update(
            (item["Key"], item["Size"])
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        )
    return found


def populate(side: Side, keys: Iterable[str], body: bytes) -> None:
    """Create the objects in parallel: preparation, not measured."""
    keys = list(keys)
    with ThreadPoolExecutor(PREPARE_THREADS) as pool:
        list(pool.map(lambda key: side.s3.put_object(Bucket=side.bucket, Key=key, Body=body),
                      keys))


def run_tool(*args: str) -> str:
    """Run a real command-line tool on the mount; its failure is the workload's failure."""
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-1000:]}")
    return result.stdout


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


source_digest = cache(file_digest)
"""The big source file is hashed once per run."""


def small_body(index: int) -> bytes:
    header = f"file {index}\n".encode()
    return header + bytes((index + i) % 251 for i in range(SMALL_FILE_SIZE - len(header)))


def numbered(prefix: str, count: int) -> list[str]:
    return [f"{prefix}f{index:05d}" for index in range(count)]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


# -- workloads -------------------------------------------------------------------------------


class Workload(ABC):
    name: str
    target: float
    """Largest acceptable mount/boto3 time ratio."""
    cold_page_cache = False
    read_before_remount = False
    """Run the mount side once, untimed, then remount (kernel caches dropped) and time
    it again: a re-read after a remount, which a local read cache serves."""
    warm = False
    """Run each side once, untimed, then drop the kernel's page cache and time it again in
    the same mount (boto3: the same client): what a second run of a job costs."""

    @abstractmethod
    def describe(self, sizes: Sizes) -> str: ...

    def prepare(self, side: Side) -> None:
        """Bring the bucket to the starting state (through boto3, not measured)."""
        return None

    @abstractmethod
    def with_boto3(self, side: Side) -> None: ...

    @abstractmethod
    def with_mount(self, side: Side, root: Path) -> None: ...

    def settled(self, side: Side) -> bool:
        """True once the bucket shows the workload's result."""
        return True

    def check(self, side: Side) -> None:
        """Raise BenchError if the result is wrong (not measured)."""
        return None


class BigWrite(Workload):
    name = "big-write"
    target = 1.2
    key = "big.bin"

    def describe(self, sizes: Sizes) -> str:
        return f"{sizes.big / MIB:g} MiB file written until in the bucket (cp / upload_file)"

    def with_boto3(self, side: Side) -> None:
        side.s3.upload_file(str(side.source), side.bucket, self.key, Config=side.transfer)

    def with_mount(self, side: Side, root: Path) -> None:
        run_tool("cp", str(side.source), str(root / self.key))

    def settled(self, side: Side) -> bool:
        try:
            head = side.s3.head_object(Bucket=side.bucket, Key=self.key)
        except ClientError:
            return False
        return head["ContentLength"] == side.sizes.big


class BigRead(Workload):
    name = "big-read"
    target = 1.2
    key = "big.bin"
    cold_page_cache = True

    def describe(self, sizes: Sizes) -> str:
        return f"{sizes.big / MIB:g} MiB file read cold to a local file (cp / download_file)"

    def prepare(self, side: Side) -> None:
        side.s3.upload_file(str(side.source), side.bucket, self.key, Config=side.transfer)

    def output(self, side: Side) -> Path:
        return side.scratch / "big.out"

    def with_boto3(self, side: Side) -> None:
        side.s3.download_file(side.bucket, self.key, str(self.output(side)), Config=side.transfer)

    def with_mount(self, side: Side, root: Path) -> None:
        run_tool("cp", str(root / self.key), str(self.output(side)))

    def check(self, side: Side) -> None:
        output = self.output(side)
        try:
            expect(file_digest(output) == source_digest(side.source),
                   "the file read differs from the file written")
        finally:
            output.unlink(missing_ok=True)


class BigReread(BigRead):
    name = "big-reread"
    target = 1.0
    read_before_remount = True

    def describe(self, sizes: Sizes) -> str:
        return (f"{sizes.big / MIB:g} MiB file read again after a remount, page cache "
                "dropped (cp / download_file)")


class BigReadWarm(BigRead):
    name = "big-read-warm"
    target = 1.0
    warm = True

    def describe(self, sizes: Sizes) -> str:
        return (f"{sizes.big / MIB:g} MiB file read again in the same mount, page cache "
                "dropped (cp / download_file)")


class SmallReads(Workload):
    name = "small-read"
    target = 1.2
    prefix = "read/"
    cold_page_cache = True

    def describe(self, sizes: Sizes) -> str:
        return (f"{sizes.small_files} files of {SMALL_FILE_SIZE // 1024} KiB read cold, in a "
                "folder not listed yet (cat / get_object loop)")

    def prepare(self, side: Side) -> None:
        keys = numbered(self.prefix, side.sizes.small_files)
        with ThreadPoolExecutor(PREPARE_THREADS) as pool:
            list(pool.map(lambda item: side.s3.put_object(
                Bucket=side.bucket, Key=item[1], Body=small_body(item[0])), enumerate(keys)))

    def with_boto3(self, side: Side) -> None:
        for index, key in enumerate(numbered(self.prefix, side.sizes.small_files)):
            body = side.s3.get_object(Bucket=side.bucket, Key=key)["Body"].read()
            expect(body == small_body(index), f"{key}: read different bytes")

    def with_mount(self, side: Side, root: Path) -> None:
        for index, key in enumerate(numbered(self.prefix, side.sizes.small_files)):
            expect((root / key).read_bytes() == small_body(index), f"{key}: read different bytes")


class SmallReadsWarm(SmallReads):
    name = "small-read-warm"
    target = 1.0
    warm = True

    def describe(self, sizes: Sizes) -> str:
        return (f"the same {sizes.small_files} files read again in the same mount, page "
                "cache dropped (cat / get_object loop)")


class SmallFiles(Workload):
    name = "small-files"
    target = 1.5
    prefix = "small/"

    def describe(self, sizes: Sizes) -> str:
        return (f"{sizes.small_files} files of {SMALL_FILE_SIZE // 1024} KiB created then read "
                "(open-write-close, open-read-close / put_object, get_object)")

    def with_boto3(self, side: Side) -> None:
        keys = numbered(self.prefix, side.sizes.small_files)
        for index, key in enumerate(keys):
            side.s3.put_object(Bucket=side.bucket, Key=key, Body=small_body(index))
        for index, key in enumerate(keys):
            body = side.s3.get_object(Bucket=side.bucket, Key=key)["Body"].read()
            expect(body == small_body(index), f"{key}: read back different bytes")

    def with_mount(self, side: Side, root: Path) -> None:
        paths = [root / key for key in numbered(self.prefix, side.sizes.small_files)]
        paths[0].parent.mkdir()
        for index, path in enumerate(paths):
            with path.open("wb") as out:
                out.write(small_body(index))
        for index, path in enumerate(paths):
            with path.open("rb") as data:
                expect(data.read() == small_body(index), f"{path}: read back different bytes")

    def settled(self, side: Side) -> bool:
        keys = numbered(self.prefix, side.sizes.small_files)
        return listing(side, self.prefix) == dict.fromkeys(keys, SMALL_FILE_SIZE)


class ListLong(Workload):
    name = "ls-l"
    target = 1.5
    prefix = "listed/"

    def describe(self, sizes: Sizes) -> str:
        return f"ls -l of {sizes.listed_files} files, cold (ls -l / list_objects_v2)"

    def prepare(self, side: Side) -> None:
        populate(side, numbered(self.prefix, side.sizes.listed_files), b"x" * LISTED_FILE_SIZE)

    def with_boto3(self, side: Side) -> None:
        rows = []
        for page in side.s3.get_paginator("list_objects_v2").paginate(
            Bucket=side.bucket, Prefix=self.prefix, Delimiter="/"
        ):
            rows += [(i["Key"], i["Size"], i["LastModified"]) for i in page.get("Contents", [])]
        expect(len(rows) == side.sizes.listed_files, f"listed {len(rows)} objects")

    def with_mount(self, side: Side, root: Path) -> None:
        lines = run_tool("ls", "-l", str(root / self.prefix)).splitlines()
        files = [line for line in lines if line.startswith("-")]
        expect(len(files) == side.sizes.listed_files, f"ls -l showed {len(files)} files")
        expect(all(f" {LISTED_FILE_SIZE} " in line for line in files), "ls -l: wrong sizes")


class Walk(Workload):
    name = "walk"
    target = 1.5
    prefix = "tree/"

    def describe(self, sizes: Sizes) -> str:
        return (f"walk of {sizes.tree_files} files in {sizes.tree_folders} folders with stat "
                "(find -printf / list_objects_v2)")

    def keys(self, sizes: Sizes) -> list[str]:
        return [f"{self.prefix}d{index % sizes.tree_folders:02d}/f{index:05d}"
                for index in range(sizes.tree_files)]

    def prepare(self, side: Side) -> None:
        populate(side, self.keys(side.sizes), b"y" * LISTED_FILE_SIZE)

    def with_boto3(self, side: Side) -> None:
        found = listing(side, self.prefix)
        expect(len(found) == side.sizes.tree_files, f"listed {len(found)} objects")

    def with_mount(self, side: Side, root: Path) -> None:
        lines = run_tool("find", str(root / self.prefix), "-printf", "%y %s %T@ %p\n")
        files = [line for line in lines.splitlines() if line.startswith("f ")]
        expect(len(files) == side.sizes.tree_files, f"find saw {len(files)} files")


class Rename(Workload):
    name = "rename"
    target = 1.0
    source_prefix = "renamed-from/"
    target_prefix = "renamed-to/"

    def describe(self, sizes: Sizes) -> str:
        return (f"folder of {sizes.renamed_files} files renamed "
                "(mv / copy_object + delete_object each, serially)")

    def prepare(self, side: Side) -> None:
        populate(side, numbered(self.source_prefix, side.sizes.renamed_files), b"z" * 1000)

    def with_boto3(self, side: Side) -> None:
        for key in listing(side, self.source_prefix):
            new_key = self.target_prefix + key[len(self.source_prefix):]
            side.s3.copy_object(Bucket=side.bucket, Key=new_key,
                                CopySource={"Bucket": side.bucket, "Key": key})
            side.s3.delete_object(Bucket=side.bucket, Key=key)

    def with_mount(self, side: Side, root: Path) -> None:
        run_tool("mv", str(root / self.source_prefix), str(root / self.target_prefix))

    def settled(self, side: Side) -> bool:
        expected = dict.fromkeys(numbered(self.target_prefix, side.sizes.renamed_files), 1000)
        return (listing(side, self.target_prefix) == expected
                and not listing(side, self.source_prefix))


class Remove(Workload):
    name = "rm-r"
    target = 5.0
    prefix = "removed/"

    def describe(self, sizes: Sizes) -> str:
        return (f"folder of {sizes.removed_files} files removed "
                "(rm -r / list + delete_objects in batches)")

    def prepare(self, side: Side) -> None:
        populate(side, numbered(self.prefix, side.sizes.removed_files), b"w" * 1000)

    def with_boto3(self, side: Side) -> None:
        for page in side.s3.get_paginator("list_objects_v2").paginate(
            Bucket=side.bucket, Prefix=self.prefix
        ):
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]} for item in page.get("Contents", [])
            ]
            if objects:
                side.s3.delete_objects(Bucket=side.bucket, Delete={"Objects": objects,
                                                                     "Quiet": True})

    def with_mount(self, side: Side, root: Path) -> None:
        run_tool("rm", "-r", str(root / self.prefix))

    def settled(self, side: Side) -> bool:
        return not listing(side, self.prefix)


WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (BigWrite(), BigRead(), BigReread(), BigReadWarm(), SmallReads(),
                     SmallReadsWarm(), SmallFiles(), ListLong(), Walk(), Rename(), Remove())
}
