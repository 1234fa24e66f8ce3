"""Text renderings of statistics() values: the stats file and the zramctl table.

Everything a user reads about a device is rendered here from an immutable
DeviceStatistics value, never from live objects, so that a rendering is a
consistent snapshot and the formats live in one place.  The kernel-format
files (mm_stat, io_stat) are rendered by device.py next to their semantics;
this module has the human-oriented views.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .device import DeviceStatistics
from .pagestore import PAGE_SIZE
from .sizes import format_size


def _ratio(orig: int, compr: int) -> str:
    return f"{orig / compr:.2f}" if compr else "-"


def render_stats(s: DeviceStatistics) -> str:
    """The human-readable summary of MOUNT/zramN/stats."""
    head = f"zram{s.dev_id}"
    if s.store is None:
        return (
            f"{head}: not initialised (write a size to disksize)\n"
            f"algorithm        {s.algorithm}\n"
            f"mem limit        {format_size(s.mem_limit) if s.mem_limit else 'none'}\n"
        )
    st = s.store
    stored = st.orig_data_size
    limit = format_size(st.mem_limit) if st.mem_limit else "none"
    lines = [
        f"{head}: {format_size(s.disksize)} disk, {s.algorithm}, "
        f"{'open' if s.open_count else 'not open'}",
        f"disksize         {format_size(s.disksize)} ({s.disksize} bytes)",
        f"algorithm        {s.algorithm}",
        f"data stored      {format_size(stored)} ({st.pages_stored} pages)",
        f"compressed       {format_size(st.compr_data_size)} "
        f"(ratio {_ratio(stored, st.compr_data_size)})",
        f"memory used      {format_size(st.mem_used_total)} "
        f"(peak {format_size(st.mem_used_max)}, limit {limit})",
        f"effective ratio  {_ratio(stored, st.mem_used_total)} (data stored / memory used)",
        f"same pages       {st.same_pages} ({format_size(st.same_pages * PAGE_SIZE)}, no memory)",
        f"huge pages       {st.huge_pages} (since reset: {st.huge_pages_since})",
        f"idle pages       {st.idle_pages}",
        f"pages compacted  {st.pages_compacted}",
        f"reads            {st.reads} pages",
        f"writes           {st.writes} pages",
        f"failed reads     {st.failed_reads}",
        f"failed writes    {st.failed_writes}",
        f"discarded        {st.notify_free} pages",
        f"backing store    {s.backing_dev}",
        f"written back     {st.bd_count} pages now ({format_size(st.bd_count * PAGE_SIZE)}), "
        f"{st.bd_writes} written, {st.bd_reads} read back",
        f"writeback limit  "
        + (f"{st.writeback_limit} pages left" if st.writeback_limit_enable else "off"),
        f"recompressed     {st.recompressed_pages} pages",
        f"auto writeback   "
        + (f"at {s.auto_writeback}% of the mem limit" if s.auto_writeback else "off"),
    ]
    return "\n".join(lines) + "\n"


# zramctl's columns, in its default order, and how each is read off a device.
COLUMNS = ("NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "MEM-LIMIT", "MOUNTPOINT")
EXTRA_COLUMNS = ("MEM-USED", "STREAMS", "ZERO-PAGES", "MIGRATED")  # accepted for -o


@dataclass(frozen=True)
class StatusRow:
    """One zramctl-style row: a device as read from a mount, plus who uses its image."""

    name: str
    algorithm: str
    disksize: int
    data: int
    compr: int
    total: int
    mem_limit: int
    mem_used: int
    zero_pages: int
    migrated: int
    mountpoint: str

    def value(self, column: str, as_bytes: bool) -> str | int:
        sizes = {
            "DISKSIZE": self.disksize,
            "DATA": self.data,
            "COMPR": self.compr,
            "TOTAL": self.total,
            "MEM-LIMIT": self.mem_limit,
            "MEM-USED": self.mem_used,
        }
        if column in sizes:
            return sizes[column] if as_bytes else format_size(sizes[column])
        other: dict[str, str | int] = {
            "NAME": self.name,
            "ALGORITHM": self.algorithm,
            "STREAMS": 1,
            "ZERO-PAGES": self.zero_pages,
            "MIGRATED": self.migrated,
            "MOUNTPOINT": self.mountpoint,
        }
        return other[column]


def render_table(rows: Sequence[StatusRow], columns: Sequence[str], as_bytes: bool) -> str:
    """zramctl's table: left-aligned text columns, right-aligned sizes."""
    cells = [[str(r.value(c, as_bytes)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    left = {"NAME", "ALGORITHM", "MOUNTPOINT"}

    def fmt(values: Sequence[str]) -> str:
        out = []
        for i, (c, v) in enumerate(zip(columns, values, strict=True)):
            last = i == len(columns) - 1
            if c in left:
                out.append(v if last else v.ljust(widths[i]))
            else:
                out.append(v.rjust(widths[i]))
        return " ".join(out).rstrip()

    return "\n".join([fmt(columns)] + [fmt(r) for r in cells]) + "\n"


def render_json(rows: Sequence[StatusRow], columns: Sequence[str], as_bytes: bool) -> str:
    """zramctl --json: {"zramctl": [{column: value, ...}, ...]} with lower-case keys."""
    data = [{c.lower(): r.value(c, as_bytes) for c in columns} for r in rows]
    return json.dumps({"zramctl": data}, indent=3) + "\n"
