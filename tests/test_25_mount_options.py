"""The mount options' one declaration (qarnotfs/fs/mountoptions.py) reaches every consumer:
the ``mount`` command's flags, ``-o`` parsing (fstab, the helper) and the core's FsOptions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qarnotfs.cli import build_parser
from qarnotfs.fs.core import FsOptions
from qarnotfs.fs.mount import build_request
from qarnotfs.fs.mountoptions import MountOptions, fs_options, parse_o_options, specs
from qarnotfs.outcome import UsageError

SAMPLES = {
    "uid": ("1234", 1234), "gid": ("4321", 4321), "umask": ("027", 0o027),
    "staging_dir": ("/tmp/st", "/tmp/st"), "cache_ttl": ("2.5", 2.5),
    "negative_ttl": ("0", 0.0), "cache_size": ("10", 10), "symlink_scan": ("small", "small"),
    "lookups": ("listed", "listed"),
    "delete_delay": ("0.2", 0.2), "statfs_size": ("2T", 2 << 40),
    "statfs_inodes": ("99", 99), "attr_timeout": ("3", 3.0), "entry_timeout": ("4", 4.0),
    "log_file": ("/tmp/x.log", "/tmp/x.log"), "log_level": ("WARNING", "warning"),
    "connect_timeout": ("1", 1.0), "read_timeout": ("2", 2.0), "retries": ("3", 3),
    "config": ("/etc/q.conf", "/etc/q.conf"),
    "read_cache_size": ("20G", 20 << 30), "read_cache_dir": ("/tmp/rc", "/tmp/rc"),
}


def test_every_option_has_a_sample_and_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "--help"])
    mount_help = capsys.readouterr().out
    for name, spec in specs():
        assert spec.flag or name in SAMPLES, name
        # Its own flag, or a global option (--config, --log-level) that fills it.
        assert f"--{name.replace('_', '-')}" in mount_help, name


def test_o_options_fill_the_request_and_the_core_options() -> None:
    text = ",".join(f"{name}={value}" for name, (value, _) in SAMPLES.items())
    values, kernel = parse_o_options([f"ro,allow_other,nonempty,debug,auto_unmount,noatime,"
                                      f"_netdev,{text}"])
    assert kernel == ["auto_unmount", "noatime"]
    request = build_request("qarnot://b/some/prefix", "/mnt/x", values, kernel)
    assert (request.bucket, request.prefix) == ("b", "some/prefix/")
    for name, (_, expected) in SAMPLES.items():
        assert getattr(request.options, name) == expected, name
    core = fs_options(request.options, request.prefix, None)
    fields = {f.name for f in dataclasses.fields(FsOptions)}
    for name, spec in specs():
        if spec.fs is not None:
            assert spec.fs in fields, name
            want = getattr(request.options, name)
            got = getattr(core, spec.fs)
            assert (str(got) if isinstance(got, Path) else got) == want, name
    assert core.prefix == "some/prefix/" and core.read_only


def test_defaults_leave_the_core_its_own() -> None:
    core = fs_options(MountOptions(), "", None)
    assert core == dataclasses.replace(FsOptions(), staging_dir=core.staging_dir,
                                       clock=core.clock, uid=core.uid, gid=core.gid)


@pytest.mark.parametrize(("spec", "message"), [
    ("log_level=loud", "invalid value for log_level: 'loud' (expected debug, info, warning"),
    ("secret_key=x", "secret_key cannot be a mount option"),
    ("mystery", "unknown mount option: mystery"),
    ("uid", "option uid needs a value"),
])
def test_bad_o_options_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_o_options([spec])
