"""Text renderings of statistics() values: stats, the zramctl table and Prometheus metrics.

Everything a user reads about a device is rendered here from an immutable
DeviceStatistics value, never from live objects, so that a rendering is a
consistent snapshot and the formats live in one place.  The kernel-format
files (mm_stat, io_stat) are rendered by device.py next to their semantics;
this module has the human-oriented views.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .device import DeviceStatistics
from .pagestore import PAGE_SIZE, StoreStatistics
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
        "writeback limit  "
        + (f"{st.writeback_limit} pages left" if st.writeback_limit_enable else "off"),
        f"recompressed     {st.recompressed_pages} pages",
        "auto writeback   "
        + (f"at {s.auto_writeback}% of the mem limit" if s.auto_writeback else "off"),
    ]
    return "\n".join(lines) + "\n"


# zramctl's columns, in its default order, and how each is read off a device.
COLUMNS = ("NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "MEM-LIMIT", "MOUNTPOINT")
# accepted for -o and shown by --output-all; the last two are the writeback tier's
EXTRA_COLUMNS = ("MEM-USED", "STREAMS", "ZERO-PAGES", "MIGRATED", "COMP-RATIO",
                 "BACKING-DEV", "WRITTEN-BACK")
ALL_COLUMNS = ("NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES",
               "TOTAL", "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO", "BACKING-DEV",
               "WRITTEN-BACK", "MOUNTPOINT")  # zramctl --output-all's order, then ours


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
    backing_dev: str = "none"
    written_back_pages: int = 0

    def value(self, column: str, as_bytes: bool) -> str | int:
        sizes = {
            "DISKSIZE": self.disksize,
            "DATA": self.data,
            "COMPR": self.compr,
            "TOTAL": self.total,
            "MEM-LIMIT": self.mem_limit,
            "MEM-USED": self.mem_used,
            "WRITTEN-BACK": self.written_back_pages * PAGE_SIZE,
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
            # zramctl: DATA/TOTAL with four decimals
            "COMP-RATIO": f"{self.data / self.total:.4f}" if self.total else "-",
            "BACKING-DEV": self.backing_dev,
        }
        return other[column]


def _raw_escape(value: str) -> str:
    """libsmartcols' raw output: blanks, backslashes and unprintables as \\xHH."""
    return "".join(
        f"\\x{ord(ch):02x}" if ch.isspace() or ch == "\\" or not ch.isprintable() else ch
        for ch in value
    )


def render_table(rows: Sequence[StatusRow], columns: Sequence[str], as_bytes: bool,
                 *, raw: bool = False, headings: bool = True) -> str:
    """zramctl's table: left-aligned text columns, right-aligned sizes.

    raw: one space between values, no alignment, blanks escaped (zramctl --raw);
    headings=False drops the header line (--noheadings).
    """
    cells = [[str(r.value(c, as_bytes)) for c in columns] for r in rows]
    if raw:
        lines = ([list(columns)] if headings else []) + cells
        return "".join(" ".join(_raw_escape(v) for v in line) + "\n" for line in lines)
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

    text_lines = ([fmt(columns)] if headings else []) + [fmt(r) for r in cells]
    return "".join(line + "\n" for line in text_lines)


def render_json(rows: Sequence[StatusRow], columns: Sequence[str], as_bytes: bool) -> str:
    """zramctl --json: {"zramctl": [{column: value, ...}, ...]} with lower-case keys."""
    data = [{c.lower(): r.value(c, as_bytes) for c in columns} for r in rows]
    return json.dumps({"zramctl": data}, indent=3) + "\n"


# -- Prometheus text exposition format -------------------------------------------------------

# (metric name, type, help, how it is read off a device's statistics).  Byte figures end in
# _bytes, counters in _total, as the exposition format's conventions ask.
_StatFn = Callable[[DeviceStatistics, StoreStatistics], float]
METRICS: tuple[tuple[str, str, str, _StatFn], ...] = (
    ("disksize_bytes", "gauge", "Size of the device (disksize).",
     lambda d, s: d.disksize),
    ("orig_data_bytes", "gauge", "Uncompressed size of the data stored (mm_stat orig_data_size).",
     lambda d, s: s.orig_data_size),
    ("compr_data_bytes", "gauge", "Compressed size of the data stored (mm_stat compr_data_size).",
     lambda d, s: s.compr_data_size),
    ("mem_used_total_bytes", "gauge",
     "Memory used to store the data, allocator overhead included (mm_stat mem_used_total).",
     lambda d, s: s.mem_used_total),
    ("mem_limit_bytes", "gauge", "Memory limit, 0 for none (mm_stat mem_limit).",
     lambda d, s: s.mem_limit),
    ("mem_used_max_bytes", "gauge", "Peak memory used (mm_stat mem_used_max).",
     lambda d, s: s.mem_used_max),
    ("same_pages", "gauge", "Pages filled with one repeated word, stored without memory "
     "(mm_stat same_pages).", lambda d, s: s.same_pages),
    ("pages_compacted_total", "counter", "Pages freed by compaction (mm_stat pages_compacted).",
     lambda d, s: s.pages_compacted),
    ("huge_pages", "gauge", "Incompressible pages stored whole (mm_stat huge_pages).",
     lambda d, s: s.huge_pages),
    ("huge_pages_since_total", "counter",
     "Incompressible pages stored since the device was set up (mm_stat huge_pages_since).",
     lambda d, s: s.huge_pages_since),
    ("failed_reads_total", "counter", "Failed reads (io_stat failed_reads).",
     lambda d, s: s.failed_reads),
    ("failed_writes_total", "counter", "Failed writes (io_stat failed_writes).",
     lambda d, s: s.failed_writes),
    ("invalid_io_total", "counter", "Requests outside the device (io_stat invalid_io).",
     lambda d, s: s.invalid_io),
    ("notify_free_total", "counter", "Pages freed by discard (io_stat notify_free).",
     lambda d, s: s.notify_free),
    ("read_pages_total", "counter", "Pages read.", lambda d, s: s.reads),
    ("written_pages_total", "counter", "Pages written.", lambda d, s: s.writes),
    ("bd_count_bytes", "gauge", "Data on the backing device (bd_stat bd_count).",
     lambda d, s: s.bd_count * PAGE_SIZE),
    ("bd_reads_bytes_total", "counter", "Bytes read from the backing device (bd_stat bd_reads).",
     lambda d, s: s.bd_reads * PAGE_SIZE),
    ("bd_writes_bytes_total", "counter",
     "Bytes written to the backing device (bd_stat bd_writes).",
     lambda d, s: s.bd_writes * PAGE_SIZE),
    ("recompressed_pages", "gauge", "Pages stored with a recompression algorithm.",
     lambda d, s: s.recompressed_pages),
    ("auto_writeback_percent", "gauge",
     "Writeback starts at this percent of mem_limit; 0 when off (auto_writeback).",
     lambda d, s: d.auto_writeback),
    ("compression_ratio", "gauge",
     "Uncompressed data over memory used (zramctl's COMP-RATIO, DATA/TOTAL); 0 when empty.",
     lambda d, s: s.orig_data_size / s.mem_used_total if s.mem_used_total else 0.0),
)


def _sample(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def render_metrics(devices: Sequence[DeviceStatistics]) -> str:
    """Every device's figures in the Prometheus text format, labelled device="zramN".

    An uninitialised device is reported by zramfs_initialised 0 alone (it has no figures).
    """
    out = [
        "# HELP zramfs_initialised Whether the device is initialised (initstate).",
        "# TYPE zramfs_initialised gauge",
    ]
    out += [f'zramfs_initialised{{device="zram{d.dev_id}"}} {int(d.initialised)}'
            for d in devices]
    for name, kind, help_text, read in METRICS:
        out.append(f"# HELP zramfs_{name} {help_text}")
        out.append(f"# TYPE zramfs_{name} {kind}")
        for d in devices:
            if d.store is None:
                continue
            out.append(f'zramfs_{name}{{device="zram{d.dev_id}"}} {_sample(read(d, d.store))}')
    return "\n".join(out) + "\n"
