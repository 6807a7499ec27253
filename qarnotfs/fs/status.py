"""Which qarnotfs mounts are live, and which process serves each one.

Owns: the small per-mount state files a serving process writes (its pid, source, mount
point, log file and staging folder) and removes when it exits, reading them back for
``qarnotfs status`` and ``qarnotfs unmount`` (which waits for that process: it uploads
pending data after the kernel has let go of the mount), the summary of a mount's pending
uploads read from its staging journal, what every staging folder still holds whether a
mount serves it or not, the processes that keep a mount busy (as ``fuser -m`` finds
them), and the kernel's own view of mounts (/proc mountinfo).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_cache_path, user_state_path

from .journal import read_entries

if TYPE_CHECKING:
    pass

FSTYPE = "fuse.qarnotfs"


@dataclass(frozen=True)
class MountRecord:
    """What a serving process says about itself."""

    pid: int
    source: str
    mountpoint: str
    log_file: str | None
    started: float
    staging: str | None = None
    """The mount's staging folder (its journal lists the pending uploads)."""


def _pending(staging: str | None) -> list[tuple[str, int, str, int, str | None]]:
    """(path, bytes, state, retries, last error) of each file not in the bucket yet."""
    if not staging:
        return []
    pending = []
    for entry in read_entries(Path(staging)):
        try:
            size = os.stat(Path(staging) / entry.staged).st_size
        except OSError:
            size = 0
        pending.append((entry.path, size, entry.state, entry.retries, entry.last_error))
    return pending


def pending_summary(staging: str | None) -> str:
    """'N upload(s) (X MiB): a, b, ...' ('' when nothing is pending)."""
    pending = _pending(staging)
    if not pending:
        return ""
    total = sum(size for _, size, *_ in pending)
    names = ", ".join(sorted(path.lstrip("/") for path, *_ in pending)[:10])
    more = ", ..." if len(pending) > 10 else ""
    return f"{len(pending)} upload(s) ({total / (1 << 20):.1f} MiB): {names}{more}"


def waiting_line(staging: str | None) -> str:
    """What an unmount waits for: the summary, and the last error if there is one."""
    pending = _pending(staging)
    summary = pending_summary(staging)
    errors = [error for *_, error in pending if error and error.strip()]
    if errors:
        summary += f" (last error: {errors[-1].strip().splitlines()[0]})"
    return summary


def pending_lines(staging: str | None) -> list[str]:
    """One line per pending upload, for ``qarnotfs status``."""
    pending = _pending(staging)
    if not pending:
        return ["no pending uploads"]
    lines = [f"{len(pending)} pending upload(s), "
             f"{sum(size for _, size, *_ in pending)} bytes:"]
    for path, size, state, retries, error in pending:
        line = f"{path}\t{size} bytes\t{state}\tretries {retries}"
        if error:
            line += f"\tlast error: {error.splitlines()[0] if error.strip() else error}"
        lines.append(line)
    return lines


def state_dir() -> Path:
    """The private folder of the state files: the runtime dir ($XDG_RUNTIME_DIR, or
    /run for root, so a mount started at boot and a shell agree), else the cache dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        base = Path(runtime) / "qarnotfs"
    elif os.geteuid() == 0 and os.path.isdir("/run"):
        base = Path("/run/qarnotfs")
    else:
        base = user_cache_path("qarnotfs") / "run"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _record_path(mountpoint: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return state_dir() / f"mount-{digest}.json"


def write_record(record: MountRecord) -> Path:
    """Publish the record of the mount this process serves (replaced atomically)."""
    path = _record_path(record.mountpoint)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(record), handle)
    os.replace(temporary, path)
    return path


def remove_record(mountpoint: str, pid: int) -> None:
    """Remove the record if it is still this process's own."""
    record = read_record(mountpoint)
    if record is not None and record.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            _record_path(mountpoint).unlink()


def read_record(mountpoint: str) -> MountRecord | None:
    """The record for ``mountpoint``, or None if there is none or it does not parse."""
    try:
        with open(_record_path(mountpoint), encoding="utf-8") as handle:
            return MountRecord(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None


def all_records() -> list[MountRecord]:
    """Every record whose process is still alive (stale ones are removed)."""
    records = []
    for path in sorted(state_dir().glob("mount-*.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                record = MountRecord(**json.load(handle))
        except (OSError, ValueError, TypeError):
            continue
        if process_alive(record.pid):
            records.append(record)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return records


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it has finished its work)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for_exit(pid: int, timeout: float | None) -> bool:
    """Wait until ``pid`` has exited; False if it still runs after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while process_alive(pid):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)  # polling: the process is not our child, so no waitpid
        delay = min(delay * 2, 0.2)
    return True


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape_mountinfo(field: bytes) -> str:
    """Undo the octal escapes (space, tab, newline, backslash) of /proc mountinfo."""
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]), field))


def mount_type(mountpoint: str) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint`` (the last one), or None."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            before, _, after = line.partition(b" - ")
            fields = before.split()
            if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == target:
                found = os.fsdecode(after.split()[0])
    return found


def is_qarnotfs_mount(mountpoint: str) -> bool:
    return mount_type(mountpoint) == FSTYPE


# -- staging folders no mount serves ------------------------------------------------------

def _roots_file() -> Path:
    return user_state_path("qarnotfs") / "staging-roots"


def remember_staging_root(root: str) -> None:
    """Note a staging root a mount used, so ``status`` looks there once it is gone."""
    known = _remembered_roots()
    if root in known:
        return
    path = _roots_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text("".join(f"{line}\n" for line in [*known, root]), encoding="utf-8")
    os.replace(temporary, path)


def _remembered_roots() -> list[str]:
    """The remembered roots that still exist."""
    try:
        lines = _roots_file().read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [line for line in dict.fromkeys(lines) if line and os.path.isdir(line)]


def known_staging_roots(records: list[MountRecord], service_default: str | None) -> list[str]:
    """The staging roots worth looking at: the default, systemd's, those mounts used
    before, and the live mounts'."""
    from .core import default_staging_dir

    roots = [str(default_staging_dir())]
    if service_default:
        roots.append(service_default)
    roots.extend(_remembered_roots())
    roots.extend(str(Path(r.staging).parent) for r in records if r.staging)
    return roots


@dataclass(frozen=True)
class Leftover:
    """A staging folder no live mount serves whose journal still lists files."""

    root: Path
    folder: Path
    source: str

    @property
    def upload_command(self) -> str:
        return f"qarnotfs mount {self.source} MOUNTPOINT --staging-dir {self.root}"


def leftovers(roots: list[str], held: set[str | None]) -> list[Leftover]:
    """The staging folders under ``roots`` that no live mount serves and that still hold
    files (each root looked at once)."""
    found: list[Leftover] = []
    seen: set[Path] = set()
    for root in roots:
        base = Path(root).resolve()
        if base in seen or not base.is_dir():
            continue
        seen.add(base)
        for folder in sorted(p for p in base.iterdir()
                             if p.is_dir() and not p.name.startswith(".")):
            if str(folder) in held or os.fspath(folder.resolve()) in held:
                continue
            entries = read_entries(folder)
            if entries:
                source = f"{entries[0].bucket}/{entries[0].prefix}".rstrip("/")
                found.append(Leftover(base, folder, source))
    return found


def leftover_lines(leftover: Leftover) -> list[str]:
    """Where a leftover folder is, what it holds, and how to upload it."""
    lines = [f"{leftover.folder}\t{leftover.source}\tnot mounted",
             f"  upload with: {leftover.upload_command} (the mount uploads them at once)"]
    lines.extend(f"  {line}" for line in pending_lines(str(leftover.folder)))
    return lines


def pending_records(staging: str | None) -> list[dict[str, object]]:
    """The pending uploads as JSON-ready objects (``status --json``)."""
    return [{"path": path, "bytes": size, "state": state, "retries": retries,
             "last_error": error} for path, size, state, retries, error in _pending(staging)]


# -- who keeps a mount busy ----------------------------------------------------------------

def processes_using(mountpoint: str) -> list[tuple[int, str]]:
    """(pid, command name) of the processes with a file, folder, root or program inside
    ``mountpoint``, as ``fuser -m`` lists them (those this user may inspect)."""
    inside = os.path.abspath(mountpoint)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if any(_is_inside(target, inside) for target in _open_paths(entry.path)):
            found.append((int(entry.name), _command_name(entry.path)))
    return found


def _open_paths(proc: str) -> list[str]:
    links = [f"{proc}/cwd", f"{proc}/root", f"{proc}/exe"]
    with contextlib.suppress(OSError):
        links.extend(f"{proc}/fd/{fd}" for fd in os.listdir(f"{proc}/fd"))
    targets = []
    for link in links:
        with contextlib.suppress(OSError):
            targets.append(os.readlink(link))
    return targets


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _command_name(proc: str) -> str:
    try:
        with open(f"{proc}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"
