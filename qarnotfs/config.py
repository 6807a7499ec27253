"""Where the connection settings come from: arguments, environment, configuration file.

Owns: the search for the configuration file, its parsing, and the precedence rule
(explicit arguments, then environment variables, then the file, then defaults), and the
AWS chain as its users know it: ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``) for the
storage URL, ``AWS_PROFILE`` or else the ``default`` profile of the shared credentials file
(``~/.aws/credentials``) when nothing else gives credentials, and a profile's
``endpoint_url`` in ``~/.aws/config``. A configuration file holding a secret that other
users may read is warned about. Produces a :class:`Settings` value; it performs no
network call.

The file is the Qarnot SDK's INI format::

    [cluster]
    url = https://api.qarnot.com
    timeout = 30
    unsafe = false
    custom_certificate = /path/ca.pem
    [client]
    token = ...
    [storage]
    url = https://storage.qarnot.com
    unsafe = false
    custom_certificate = /path/ca.pem
    access_key = ...        # direct mode (any S3 endpoint)
    secret_key = ...
    profile = ...           # or an AWS profile
"""

from __future__ import annotations

import configparser
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from platformdirs import user_config_path

from .exceptions import ConfigurationException

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_URL = "https://api.qarnot.com"

# (section, option) in the file -> environment variable -> Settings field.
_SOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("cluster", "url", "QARNOT_CLUSTER_URL", "cluster_url"),
    ("cluster", "timeout", "QARNOT_CLUSTER_TIMEOUT", "cluster_timeout"),
    ("cluster", "unsafe", "QARNOT_CLUSTER_UNSAFE", "cluster_unsafe"),
    ("cluster", "custom_certificate", "QARNOT_CLUSTER_CUSTOM_CERTIFICATE",
     "cluster_custom_certificate"),
    ("client", "token", "QARNOT_CLIENT_TOKEN", "client_token"),
    # The AWS variables come first: QARNOT_STORAGE_URL wins over them.
    ("storage", "url", "AWS_ENDPOINT_URL", "storage_url"),
    ("storage", "url", "AWS_ENDPOINT_URL_S3", "storage_url"),
    ("storage", "url", "QARNOT_STORAGE_URL", "storage_url"),
    ("storage", "unsafe", "QARNOT_STORAGE_UNSAFE", "storage_unsafe"),
    ("storage", "custom_certificate", "QARNOT_STORAGE_CUSTOM_CERTIFICATE",
     "storage_custom_certificate"),
    ("storage", "access_key", "AWS_ACCESS_KEY_ID", "access_key"),
    ("storage", "secret_key", "AWS_SECRET_ACCESS_KEY", "secret_key"),
    ("storage", "profile", "AWS_PROFILE", "profile"),
)

# Keys the SDK accepts in a ``fileconf`` dict under another name.
_ALIASES = {"client_auth": "client_token"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything needed to reach the storage. Secrets are hidden from ``repr``."""

    cluster_url: str = DEFAULT_CLUSTER_URL
    cluster_timeout: float = 30.0
    cluster_unsafe: bool = False
    cluster_custom_certificate: str | None = None
    client_token: str | None = None
    storage_url: str | None = None
    storage_unsafe: bool = False
    storage_custom_certificate: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    profile: str | None = None
    config_file: str | None = None

    def __repr__(self) -> str:
        shown = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("client_token", "secret_key") and value:
                value = "***"
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def direct(self) -> bool:
        """True when S3 credentials are given directly, so the Qarnot API is not asked."""
        return bool(self.access_key and self.secret_key) or bool(self.profile)


def default_config_files() -> list[Path]:
    """The files looked for, in order, when no file is named explicitly."""
    candidates = []
    if os.environ.get("QARNOTFS_CONFIG"):
        candidates.append(Path(os.environ["QARNOTFS_CONFIG"]))
    candidates.append(user_config_path("qarnotfs") / "qarnotfs.conf")
    candidates.append(Path.home() / ".qarnot" / "qarnot.conf")
    return candidates


def load_settings(
    fileconf: str | os.PathLike[str] | Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    **explicit: object,
) -> Settings:
    """Resolve the settings; ``explicit`` keyword arguments (not None) win over all else.

    ``fileconf`` is a file path or a mapping with the file's keys (``{"client_token": ...}``
    or ``{"cluster_url": ...}``, as the SDK accepts). A named file that does not exist or
    does not parse raises :class:`ConfigurationException`.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    from_file: dict[str, object] = {}
    config_file: str | None = None
    if isinstance(fileconf, Mapping):
        values.update({_ALIASES.get(k, k): v for k, v in fileconf.items() if v is not None})
    else:
        path = Path(fileconf) if fileconf is not None else _first_existing(default_config_files())
        if path is not None:
            from_file = _read_file(path, required=fileconf is not None)
            values.update(from_file)
            config_file = str(path)
    for _section, _option, variable, name in _SOURCES:
        if environ.get(variable):
            values[name] = environ[variable]
    values.update({k: v for k, v in explicit.items() if v is not None})
    _aws_profile_defaults(values, environ)
    unknown = set(values) - {f.name for f in fields(Settings)}
    if unknown:
        raise ConfigurationException(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = replace(Settings(config_file=config_file), **_coerce(values))  # type: ignore[arg-type]
    if config_file is not None and (from_file.get("secret_key") or from_file.get("client_token")):
        _warn_if_readable_by_others(Path(config_file))
    return settings


def _aws_file(environ: Mapping[str, str], variable: str, name: str) -> Path:
    return Path(environ.get(variable) or Path.home() / ".aws" / name)


def _aws_profile_defaults(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Complete ``values`` as the AWS tools would: the ``default`` profile of the shared
    credentials file when nothing else gives credentials, and the profile's
    ``endpoint_url`` (``~/.aws/config``) when no storage URL is set."""
    has_keys = values.get("access_key") and values.get("secret_key")
    if not (values.get("profile") or has_keys or values.get("client_token")):
        credentials = _read_ini(_aws_file(environ, "AWS_SHARED_CREDENTIALS_FILE",
                                          "credentials"))
        if credentials.has_option("default", "aws_access_key_id"):
            values["profile"] = "default"
    profile = values.get("profile")
    if profile and not values.get("storage_url"):
        config = _read_ini(_aws_file(environ, "AWS_CONFIG_FILE", "config"))
        section = "default" if profile == "default" else f"profile {profile}"
        if config.has_option(section, "endpoint_url"):
            values["storage_url"] = config.get(section, "endpoint_url")


def _read_ini(path: Path) -> configparser.ConfigParser:
    """An AWS-style INI file; empty if it is missing or does not parse."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError, configparser.Error):
        return configparser.ConfigParser(interpolation=None)
    return parser


def _warn_if_readable_by_others(path: Path) -> None:
    """A file with a secret that others may read: s3fs refuses it; qarnotfs says how to
    fix it and goes on."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s holds a secret and other users may read it: run chmod 600 %s",
                    path, path)


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _read_file(path: Path, required: bool) -> dict[str, object]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError as error:
        if required:
            raise ConfigurationException(f"configuration file not found: {path}") from error
        return {}
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigurationException(f"cannot read configuration file {path}: {first_line}") \
            from error
    known = {(section, option) for section, option, _v, _n in _SOURCES}
    for section in parser.sections():
        for option in parser.options(section):
            if (section, option) not in known:
                raise ConfigurationException(
                    f"{path}: unknown option '{option}' in section [{section}]")
    return {
        name: parser.get(section, option)
        for section, option, _variable, name in _SOURCES
        if parser.has_option(section, option)
    }


def _coerce(values: dict[str, object]) -> dict[str, object]:
    out = dict(values)
    for name in ("cluster_unsafe", "storage_unsafe"):
        if name in out:
            out[name] = _as_bool(name, out[name])
    if "cluster_timeout" in out:
        try:
            out["cluster_timeout"] = float(str(out["cluster_timeout"]))
        except ValueError as error:
            raise ConfigurationException(
                f"cluster timeout must be a number of seconds, not {out['cluster_timeout']!r}"
            ) from error
    return out


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationException(f"{name} must be true or false, not {value!r}")
