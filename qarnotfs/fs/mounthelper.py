"""The mount(8) helper: ``mount -t fuse.qarnotfs BUCKET[/PREFIX] DIR -o OPTIONS``.

Owns: the helper calling convention. mount(8) runs ``/sbin/mount.fuse.qarnotfs SOURCE DIR
[-sfnv] [-o OPTIONS] [-t TYPE]`` (this module's :func:`main`, installed as the
``mount.fuse.qarnotfs`` script; link it into /sbin to use it), and fuse3's generic
``mount.fuse3`` runs ``qarnotfs SOURCE DIR -o OPTIONS`` for the same ``fuse.qarnotfs``
type, which the ``qarnotfs`` command hands here (see :func:`looks_like_helper_call`).
mount(8) runs helpers with a standard PATH, so that route needs ``qarnotfs``
in /usr/local/bin or /usr/bin (``scripts/install.sh`` links both there).

An /etc/fstab line::

    mybucket/some/prefix  /mnt/data  fuse.qarnotfs  config=/etc/qarnotfs.conf,uid=1000,_netdev  0 0

Credentials come from the configuration file (``-o config=FILE``, readable by root only),
never from options, which every user can read in the process list and /proc/mounts.
"""

from __future__ import annotations

import sys

from .. import logs
from ..outcome import UsageError, report
from .mount import build_request, mount, parse_o_options

USAGE = ("usage: mount.fuse.qarnotfs BUCKET[/PREFIX] MOUNTPOINT [-sfnv] [-o OPTIONS] "
         "[-t fuse.qarnotfs]")


def looks_like_helper_call(argv: list[str]) -> bool:
    """True for ``SOURCE MOUNTPOINT [-o OPTIONS]...`` (how mount.fuse3 runs ``qarnotfs``).

    The CLI asks this when its first argument is no sub-command: mount(8) always gives an
    absolute mount point as the second positional argument.
    """
    positional = [a for a in _strip_values(argv) if not a.startswith("-")]
    return len(positional) == 2 and positional[1].startswith("/")


def _strip_values(argv: list[str]) -> list[str]:
    """``argv`` without the values of ``-o`` and ``-t``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-o", "-t"):
            skip = True
        else:
            out.append(arg)
    return out


def _parse(argv: list[str]) -> tuple[str, str, list[str], set[str]]:
    """(source, mountpoint, -o strings, single-letter flags) or a UsageError."""
    positional: list[str] = []
    o_options: list[str] = []
    letters: set[str] = set()
    items = iter(argv)
    for arg in items:
        if arg in ("-o", "-t"):
            value = next(items, None)
            if value is None:
                raise UsageError(f"{arg} needs a value; {USAGE}")
            if arg == "-o":
                o_options.append(value)
        elif arg.startswith("-o") and len(arg) > 2:
            o_options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1:
            unknown = set(arg[1:]) - set("sfnvN")
            if unknown:
                raise UsageError(f"unknown flag {arg}; {USAGE}")
            letters.update(arg[1:])
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError(USAGE)
    return positional[0], positional[1], o_options, letters


def main(argv: list[str] | None = None) -> int:
    """Mount as mount(8) asks: check, then return once the mount is ready."""
    arguments = sys.argv[1:] if argv is None else argv
    logs.setup()
    try:
        source, mountpoint, o_options, letters = _parse(arguments)
        values, kernel_flags = parse_o_options(o_options, sloppy="s" in letters)
        request = build_request(source, mountpoint, values, kernel_flags)
        # -f is mount(8)'s "fake": do everything but the mount itself.
        return mount(request, fake="f" in letters)
    except Exception as error:
        return report(error)


if __name__ == "__main__":
    sys.exit(main())
