"""Memory honesty: 256 MiB written through a loop device costs about what mm_stat says.

What would betray an uncompressed copy of the data, for both loop modes:
- the page cache of the image: cachestat(2) on the image, before any cache is dropped, must
  find (almost) nothing (a buffered loop device fills it unless the image is served without
  page cache);
- the daemon: its VmRSS may grow by mem_used_total plus working memory, never by a copy;
- the machine as a user sees it: after sync and drop_caches, the fall in MemAvailable.

A copy of the data is 256 MiB, so the hard bound is mem_used_total + 128 MiB.  The budget the
project sets for the daemon's working memory is tighter, mem_used_total + 64 MiB: when it is
exceeded the test is marked xfail with the figures (a known finding, see the report), so the
suite stays green while the figure stays visible in `pytest -ra`.

MemAvailable is system-wide: other work on the machine moves it, at times by hundreds of MiB.
The drift over an idle window before the write is measured; a MemAvailable figure out of bounds
on a machine that drifts that much is reported (xfail), not failed, provided the daemon and the
page cache, which the test measures directly, are within bounds.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import pytest

from conftest import (
    MiB,
    Resources,
    compressible_chunks,
    drop_caches,
    meminfo,
)

pytestmark = pytest.mark.mount

TOTAL = 256 * MiB
SLACK = 64 * MiB  # the daemon's working memory, the budget
COPY_BOUND = 128 * MiB  # half a copy of the data: beyond this something keeps one
NOISE = 32 * MiB  # MemAvailable drift, with nothing from us, that makes it unusable


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


SYS_CACHESTAT = 451  # the same number on every architecture (Linux >= 6.5)


def cached_pages(fd: int) -> int | None:
    """Pages of the open file `fd` in the page cache (cachestat(2)), or None without it.

    The fd must have been opened before the data went in: FUSE drops a file's cache when it is
    opened without keep_cache, so a fresh open would always find it empty.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    rng, cs = _CachestatRange(0, 0), _Cachestat()  # len 0: to the end of the file
    if libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(cs), 0) != 0:
        return None
    return int(cs.nr_cache)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled_available() -> int:
    """MemAvailable once clean caches are dropped and reclaim has settled (median of five)."""
    drop_caches()
    time.sleep(0.5)
    drop_caches()
    time.sleep(1.0)
    readings = []
    for _ in range(5):
        readings.append(meminfo()["MemAvailable"])
        time.sleep(0.2)
    return sorted(readings)[2]


@pytest.mark.parametrize("direct_io", [False, True], ids=["buffered", "direct-io"])
def test_memory_cost_is_the_compressed_size(registry: Resources, direct_io: bool) -> None:
    m = registry.mount_zramfs(size="512M")
    dev = registry.loop(m.image(), direct_io=direct_io)
    dio = Path(f"/sys/block/{os.path.basename(dev)}/loop/dio").read_text().strip()
    assert dio == ("1" if direct_io else "0")
    pid = m.pid()

    idle = settled_available()
    available_before = settled_available()
    drift = abs(available_before - idle)  # how much the machine moves with nothing from us
    rss_before = vm_rss(pid)
    first = last = b""
    watch = os.open(m.image(), os.O_RDONLY)  # for cachestat, opened before the data goes in
    try:
        with open(dev, "r+b", buffering=0) as f:
            for chunk in compressible_chunks(TOTAL, seed=41):
                first = first or chunk
                last = chunk
                f.write(chunk)
            os.fsync(f.fileno())
        image_cache = cached_pages(watch)
    finally:
        os.close(watch)
    rss_growth = vm_rss(pid) - rss_before
    s = m.mm_stat()
    used = s.mem_used_total

    growth = available_before - settled_available()
    for _ in range(2):  # someone else's passing allocation is not ours: look again
        if growth <= used + SLACK:
            break
        time.sleep(2)
        growth = min(growth, available_before - settled_available())
    figures = (
        f"memory honesty ({'direct-io' if direct_io else 'buffered'} loop): wrote "
        f"{TOTAL // MiB} MiB; orig_data_size {s.orig_data_size / MiB:.1f} MiB, compr_data_size "
        f"{s.compr_data_size / MiB:.1f} MiB, mem_used_total {used / MiB:.1f} MiB; "
        f"MemAvailable fell by {growth / MiB:.1f} MiB (idle drift {drift / MiB:.1f} MiB); "
        f"daemon VmRSS grew by {rss_growth / MiB:.1f} MiB; image pages in the page cache "
        f"before drop_caches: {image_cache}"
    )
    print("\n" + figures)

    assert s.orig_data_size == TOTAL, s
    assert used < TOTAL * 0.6, s  # the data did compress: the checks below mean something
    assert m.pread(MiB, 0) == first
    assert m.pread(MiB, TOTAL - MiB) == last
    # No copy of the data anywhere.
    if image_cache is not None:
        assert image_cache <= 16, f"{image_cache} pages of the image are in the page cache"
    assert rss_growth <= used + COPY_BOUND, f"the daemon keeps a copy: {figures}"
    noisy = drift > NOISE
    if not noisy:
        assert growth <= used + COPY_BOUND, f"an uncompressed copy is kept somewhere: {figures}"
    # The working-memory budget.
    over = []
    if rss_growth > used + SLACK:
        over.append(
            f"the daemon's VmRSS grew {(rss_growth - used) / MiB:.0f} MiB beyond mem_used_total"
        )
    if growth > used + SLACK:
        over.append(
            f"MemAvailable fell {(growth - used) / MiB:.0f} MiB beyond mem_used_total"
            + (" on a noisy machine" if noisy else "")
        )
    if over:
        pytest.xfail(f"over the {SLACK // MiB} MiB budget: {'; '.join(over)} ({figures})")
