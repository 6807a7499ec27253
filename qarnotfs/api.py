"""The two calls qarnotfs makes to the Qarnot REST API: where the storage is, and who we are.

Owns: HTTP to the cluster API (``GET /settings``, ``GET /info``) with the token in the
``Authorization`` header, TLS options, timeouts, and the translation of HTTP failures into
qarnotfs exceptions. The token never appears in an error message or a log line.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .exceptions import (
    QarnotGenericException,
    StorageUnreachableException,
    UnauthorizedException,
)

DEFAULT_STORAGE_URL = "https://storage.qarnot.com"


@dataclass(frozen=True)
class QarnotApi:
    """A minimal client for the Qarnot REST API."""

    url: str
    token: str
    timeout: float = 30.0
    unsafe: bool = False
    custom_certificate: str | None = None

    def storage_url(self) -> str | None:
        """The storage endpoint from ``/settings`` (None when the cluster has no storage)."""
        settings = self._get("/settings")
        if "storage" not in settings:
            return DEFAULT_STORAGE_URL
        value = settings["storage"]
        return str(value) if value else None

    def user_info(self) -> dict[str, Any]:
        """What ``/info`` says about the account (email, bucket count and quotas...)."""
        return self._get("/info")

    def user_email(self) -> str:
        """The account's email, which is the S3 access key."""
        email = self.user_info().get("email")
        if not email:
            raise QarnotGenericException(f"{self.url}/info returned no email")
        return str(email)

    def _get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            headers={"Authorization": self.token, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._ssl_context()
            ) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise UnauthorizedException(
                    f"the Qarnot API at {self.url} refused the token (HTTP {error.code})"
                ) from None
            raise QarnotGenericException(
                f"the Qarnot API at {self.url} answered HTTP {error.code} to {path}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise StorageUnreachableException(
                f"cannot reach the Qarnot API at {self.url}: {reason}"
            ) from None
        try:
            parsed = json.loads(body)
        except ValueError:
            raise QarnotGenericException(
                f"the Qarnot API at {self.url} answered {path} with something other than JSON"
            ) from None
        if not isinstance(parsed, dict):
            raise QarnotGenericException(f"unexpected answer from {self.url}{path}")
        return parsed

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https"):
            return None
        if self.unsafe:
            return ssl._create_unverified_context()
        return ssl.create_default_context(cafile=self.custom_certificate)
