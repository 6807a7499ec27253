"""Remote paths as people write them: ``BUCKET[/PREFIX]`` or ``qarnot://BUCKET[/PREFIX]``.

Owns: their syntax and the bucket-name rule checked before any request, so a bad name is
one line saying what a valid name is, never botocore's parameter-validation dump. Used by
the CLI's commands and by ``mount`` (and the mount helper) alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .outcome import UsageError

SCHEME = "qarnot://"
# What botocore accepts (its VALID_BUCKET pattern); Ceph RGW may allow '_' and capitals
# where AWS does not, so the rule is no stricter than the client's.
_VALID_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")
BUCKET_RULE = ("a bucket name is made of letters, digits, '.', '-' and '_' (S3's own rule: "
               "3 to 63 lowercase letters, digits, '.' and '-')")


@dataclass(frozen=True)
class Remote:
    """A bucket and a key or prefix in it ('' for the whole bucket)."""

    bucket: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.bucket}/{self.path}" if self.path else self.bucket


def check_bucket_name(name: str) -> str:
    """``name`` if it can be a bucket name, else UsageError saying what a valid one is."""
    if not _VALID_BUCKET.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid bucket name: {BUCKET_RULE}")
    return name


def parse_remote(text: str) -> Remote:
    """``BUCKET[/PREFIX]`` or ``qarnot://BUCKET[/PREFIX]`` -> Remote (bucket name checked)."""
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    bucket, _, path = body.partition("/")
    if not bucket:
        raise UsageError(f"{text!r} is not a remote path: expected BUCKET[/PREFIX]")
    return Remote(check_bucket_name(bucket), path.lstrip("/"))
