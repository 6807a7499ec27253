"""What the benchmark prints and saves: machine description, results table, JSON.

Owns: the measurement records, their aggregation over repetitions (median or best), the
mount/boto3 ratios against the targets, and their presentation.

A ratio is the median of each repetition's own ratio: boto3 and the mounts run back to
back within a repetition, on a server whose speed drifts between repetitions (moto slows
down as it keeps objects), so pairing them cancels the drift that a ratio of medians
keeps. With ``--best`` it is the best time over the best time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .server import format_counts
from .workloads import Sizes, Workload

MIB = 1024 * 1024


@dataclass
class Sample:
    """One timed run of one workload with one tool."""

    workload: str
    tool: str
    repetition: int
    seconds: float | None = None
    requests: dict[str, int] | None = None
    peak_rss: int | None = None
    error: str | None = None


@dataclass
class Summary:
    workload: str
    target: float
    seconds: dict[str, float | None] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    peak_rss: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        ratio = self.ratios.get("qarnotfs")
        return None if ratio is None else ratio <= self.target


def summarize(samples: list[Sample], workload: Workload, tools: list[str], best: bool
              ) -> Summary:
    summary = Summary(workload.name, workload.target)
    mine = [sample for sample in samples if sample.workload == workload.name]
    for tool in ["boto3", *tools]:
        runs = [sample for sample in mine if sample.tool == tool]
        times = [sample.seconds for sample in runs if sample.seconds is not None]
        summary.errors += [f"{tool}: {sample.error}" for sample in runs if sample.error]
        ok = bool(times) and len(times) == len(runs)
        summary.seconds[tool] = (min(times) if best else statistics.median(times)) if ok else None
        counts = [sample.requests for sample in runs if sample.requests is not None]
        summary.requests[tool] = format_counts(Counter(counts[0])) if counts else "-"
        rss = [sample.peak_rss for sample in runs if sample.peak_rss and tool == "qarnotfs"]
        if rss:
            summary.peak_rss = max(rss)
    base = summary.seconds["boto3"]
    for tool in tools:
        seconds = summary.seconds[tool]
        if seconds is None or not base:
            summary.ratios[tool] = None
        elif best:
            summary.ratios[tool] = seconds / base
        else:
            summary.ratios[tool] = statistics.median(_paired_ratios(mine, tool))
    return summary


def _paired_ratios(samples: list[Sample], tool: str) -> list[float]:
    """``tool``'s time over boto3's, repetition by repetition."""
    boto3 = {s.repetition: s.seconds for s in samples if s.tool == "boto3" and s.seconds}
    return [s.seconds / boto3[s.repetition] for s in samples
            if s.tool == tool and s.seconds is not None and s.repetition in boto3]


def _seconds(value: float | None) -> str:
    return "error" if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "error" if value is None else f"{value:.2f}x"


def table(summaries: list[Summary], peers: list[str]) -> str:
    head = ["workload", "boto3 s", "qarnotfs s", "ratio", "target", "result", "mount RSS"]
    for peer in peers:
        head += [f"{peer} s", f"{peer} ratio"]
    rows = [head]
    for summary in summaries:
        met = {None: "error", True: "met", False: "NOT MET"}[summary.met]
        rss = f"{summary.peak_rss / MIB:.0f} MiB" if summary.peak_rss else "-"
        row = [summary.workload, _seconds(summary.seconds["boto3"]),
               _seconds(summary.seconds["qarnotfs"]), _ratio(summary.ratios["qarnotfs"]),
               f"<={summary.target:g}x", met, rss]
        for peer in peers:
            row += [_seconds(summary.seconds[peer]), _ratio(summary.ratios[peer])]
        rows.append(row)
    return _columns(rows)


def requests_table(summaries: list[Summary], tools: list[str]) -> str:
    rows = [["workload", *(f"{tool} requests" for tool in ["boto3", *tools])]]
    rows += [[s.workload, *(s.requests[tool] for tool in ["boto3", *tools])] for s in summaries]
    return _columns(rows)


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def tool_version(command: list[str]) -> str:
    """First line of a tool's version output, or why there is none."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def machine(backend: str) -> dict[str, str]:
    """The facts needed to read the figures: CPUs, RAM, kernel, Python, server, versions."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": f"{os.cpu_count()} x {cpu}",
        "ram": f"{ram / 1024**3:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "backend": backend,
        "versions": ", ".join([
            f"qarnotfs {_package('qarnotfs')}", f"boto3 {_package('boto3')}",
            f"mfusepy {_package('mfusepy')}", f"moto {_package('moto')}",
        ]),
    }


def header(command: str, facts: dict[str, str], sizes: Sizes) -> str:
    lines = [f"command: {command}"]
    lines += [f"{key}: {value}" for key, value in facts.items()]
    lines.append(
        f"sizes: big file {sizes.big / MIB:g} MiB, {sizes.small_files} small files, "
        f"ls of {sizes.listed_files}, walk of {sizes.tree_files} in {sizes.tree_folders} "
        f"folders, rename of {sizes.renamed_files}, rm -r of {sizes.removed_files}"
    )
    return "\n".join(lines)


def write_json(path: Path, command: str, facts: dict[str, str], sizes: Sizes,
               samples: list[Sample], summaries: list[Summary], notes: list[str]) -> None:
    document = {
        "command": command,
        "machine": facts,
        "sizes": asdict(sizes),
        "notes": notes,
        "summary": [
            {**asdict(summary), "met": summary.met} for summary in summaries
        ],
        "samples": [asdict(sample) for sample in samples],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
