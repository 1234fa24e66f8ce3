"""Statistics files move as data goes in and out: mm_stat, io_stat, debug_stat and stats."""

from __future__ import annotations

import errno
import os
import re

import pytest

from conftest import (
    PAGE,
    MiB,
    ZramfsFactory,
    mm_delta,
    punch_hole,
    run,
    text_bytes,
)

pytestmark = pytest.mark.mount


def punch(image: os.PathLike[str], offset: int, length: int) -> None:
    """util-linux fallocate, as a user would punch a hole in the image."""
    run("fallocate", "--punch-hole", "--offset", str(offset), "--length", str(length), image)


def test_mm_stat_grows_with_compressible_data(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M")
    raw = m.read("mm_stat")
    assert raw.endswith("\n") and len(raw.split()) == 9
    empty = m.mm_stat()
    assert empty.orig_data_size == empty.compr_data_size == 0
    data = text_bytes(4 * MiB, seed=11)
    m.pwrite(data, 8 * MiB)
    s = m.mm_stat()
    assert s.orig_data_size == len(data)
    assert 0 < s.compr_data_size < len(data) * 0.6, s  # text compresses
    assert s.compr_data_size <= s.mem_used_total < len(data), s
    assert s.mem_used_max >= s.mem_used_total
    assert (s.same_pages, s.huge_pages) == (0, 0), s
    assert m.pread(len(data), 8 * MiB) == data
    # More data, more of everything.
    m.pwrite(text_bytes(4 * MiB, seed=12), 64 * MiB)
    t = m.mm_stat()
    assert t.orig_data_size == 2 * len(data)
    assert t.compr_data_size > s.compr_data_size
    assert t.mem_used_total > s.mem_used_total
    # Overwriting a page in place does not count it twice.
    m.pwrite(text_bytes(PAGE, seed=13), 8 * MiB)
    assert m.mm_stat().orig_data_size == 2 * len(data)


def test_same_filled_pages_take_no_memory(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    before = m.mm_stat()
    zero = bytes(8 * PAGE)
    fill = b"\xab" * (8 * PAGE)
    word = b"\x01\x02\x03\x04\x05\x06\x07\x08" * (PAGE // 8)  # every 8-byte word equal
    m.pwrite(zero, 0)
    m.pwrite(fill, MiB)
    m.pwrite(word, 2 * MiB)
    d = mm_delta(before, m.mm_stat())
    assert d.same_pages == 17, d
    assert d.orig_data_size == 17 * PAGE, d
    assert d.compr_data_size == 0 and d.mem_used_total == 0, d
    assert m.pread(len(fill), MiB) == fill
    assert m.pread(PAGE, 2 * MiB) == word
    # Not same-filled any more once real data replaces them.
    m.pwrite(text_bytes(8 * PAGE, seed=14), MiB)
    assert m.mm_stat().same_pages == 9


def test_incompressible_pages_are_huge(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    noise = os.urandom(8 * PAGE)
    m.pwrite(noise, 16 * PAGE)
    s = m.mm_stat()
    assert (s.huge_pages, s.huge_pages_since) == (8, 8), s
    assert s.compr_data_size == 8 * PAGE, s  # a huge page counts whole
    assert s.mem_used_total >= 8 * PAGE, s
    assert m.pread(len(noise), 16 * PAGE) == noise
    punch(m.image(), 16 * PAGE, 8 * PAGE)
    s = m.mm_stat()
    assert (s.huge_pages, s.huge_pages_since) == (0, 8), s  # "since" is cumulative
    assert s.orig_data_size == s.compr_data_size == 0, s


def test_io_stat_and_discard_counts(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    raw = m.read("io_stat")
    assert raw.endswith("\n")
    assert [int(x) for x in raw.split()] == [0, 0, 0, 0]
    m.pwrite(text_bytes(MiB, seed=15), 0)
    punch(m.image(), 0, MiB)
    io = m.io_stat()
    assert io.notify_free == MiB // PAGE, io
    assert (io.failed_reads, io.failed_writes, io.invalid_io) == (0, 0, 0), io
    assert m.mm_stat().orig_data_size == 0
    assert m.pread(MiB, 0) == bytes(MiB)


def test_mem_limit_failure_is_eio_and_counted(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M", mem_limit="2M")
    assert m.mm_stat().mem_limit == 2 * MiB
    noise = os.urandom(8 * MiB)
    fd = os.open(m.image(), os.O_WRONLY)
    failure = None
    written = 0
    try:
        while written < len(noise):
            written += os.pwrite(fd, noise[written : written + MiB], written)
    except OSError as exc:
        failure = exc
    finally:
        os.close(fd)
    assert failure is not None and failure.errno == errno.EIO, f"wrote {written}: {failure!r}"
    s = m.mm_stat()
    assert s.mem_used_total <= 2 * MiB, s
    assert m.io_stat().failed_writes > 0
    # What was written before the limit is intact.
    assert written > 0
    assert m.pread(written, 0) == noise[:written]


def test_debug_stat_format(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    lines = m.read("debug_stat").split("\n")
    assert lines[0] == "version: 1"
    fields = lines[1].split()
    assert fields[0] == "0" and len(fields) == 2 and fields[1].isdigit(), lines
    assert lines[2:] == [""]


def test_stats_file_is_human_readable(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M", algo="zstd")
    m.pwrite(text_bytes(2 * MiB, seed=16), 0)
    m.pwrite(os.urandom(4 * PAGE), 4 * MiB)
    m.pwrite(bytes(4 * PAGE), 5 * MiB)
    text = m.read("stats")
    s = m.mm_stat()
    assert "zram0" in text and "zstd" in text
    ratios = re.findall(r"ratio\s+(\d+\.\d+)", text)
    assert ratios, text
    assert abs(float(ratios[0]) - s.orig_data_size / s.compr_data_size) < 0.01, text
    assert str(s.same_pages) in text and "256" in text  # same pages and the disk size
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 5 and all(line.isprintable() for line in lines)


def test_stats_file_of_an_uninitialised_device(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    text = m.read("stats")
    assert "not initialised" in text or "uninitialised" in text, text


def test_mem_used_follows_discard(zramfs: ZramfsFactory) -> None:
    """Freeing pages gives memory back; compaction gives back what fragmentation holds."""
    m = zramfs(size="64M")
    m.set("auto_compact", "0")  # this measures the compact file, not the daemon's own
    m.pwrite(text_bytes(8 * MiB, seed=17), 0)
    full = m.mm_stat()
    # Free every other page: the pool is left fragmented.
    punch_hole(m.image(), [(off, PAGE) for off in range(0, 8 * MiB, 2 * PAGE)])
    half = m.mm_stat()
    assert half.orig_data_size == full.orig_data_size // 2
    assert half.compr_data_size < full.compr_data_size * 0.6
    m.set("compact", "1")
    compacted = m.mm_stat()
    assert compacted.mem_used_total < half.mem_used_total, (half, compacted)
    assert compacted.pages_compacted > 0
    assert compacted.pages_compacted * PAGE >= half.mem_used_total - compacted.mem_used_total
    assert compacted.mem_used_total < full.mem_used_total * 0.75, (full, half, compacted)


def test_df_shows_disksize_and_data(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M", devices=2)
    m.pwrite(text_bytes(3 * MiB, seed=18), 0, n=1)
    fields = run("df", "-B1", "--output=size,used,avail", m.path).stdout.splitlines()[1].split()
    size, used, avail = (int(f) for f in fields)
    assert size == 2 * 256 * MiB
    assert used == m.mm_stat(1).orig_data_size == 3 * MiB
    assert avail == size - used
