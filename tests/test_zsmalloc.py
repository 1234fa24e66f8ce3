"""Tests for zramfs.zsmalloc: the class table, handles, memory release and compaction."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from zramfs import zsmalloc
from zramfs.zsmalloc import (
    CLASSES,
    HUGE_CLASS_SIZE,
    PAGE_SIZE,
    ClassStatistics,
    InvalidHandle,
    PoolStatistics,
    SizeClass,
    ZsPool,
)

RAW_SIZES = [32 + 16 * i for i in range(255)]


def used_pct(size: int, pages: int) -> int:
    span = pages * PAGE_SIZE
    return (span - span % size) * 100 // span


def kernel_chain(size: int) -> int:
    """get_pages_per_zspage(), written independently: first n with the best used percent."""
    pcts = [used_pct(size, n) for n in range(1, 9)]
    return pcts.index(max(pcts)) + 1


def class_of(size: int) -> SizeClass:
    return CLASSES[zsmalloc._LUT[size]]


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------- class table


def test_class_table_shape() -> None:
    assert PAGE_SIZE == 4096
    assert len(CLASSES) == 123
    assert [c.index for c in CLASSES] == list(range(123))
    sizes = [c.size for c in CLASSES]
    assert sizes == sorted(set(sizes))
    assert sizes[0] == 32 and sizes[-1] == 4096
    assert all(s in RAW_SIZES for s in sizes)
    for c in CLASSES:
        assert 1 <= c.pages_per_zspage <= 8
        assert c.objs_per_zspage == c.pages_per_zspage * PAGE_SIZE // c.size


def test_chain_length_has_least_tail_waste() -> None:
    for c in CLASSES:
        assert c.pages_per_zspage == kernel_chain(c.size), c
        best = max(used_pct(c.size, n) for n in range(1, 9))
        assert used_pct(c.size, c.pages_per_zspage) == best
        # the integer-percent rule is within 1% of the true minimum waste fraction
        waste = (c.pages_per_zspage * PAGE_SIZE) % c.size / (c.pages_per_zspage * PAGE_SIZE)
        least = min((n * PAGE_SIZE) % c.size / (n * PAGE_SIZE) for n in range(1, 9))
        assert waste - least < 0.01
    # a few values worked out by hand
    assert (class_of(3632).pages_per_zspage, class_of(3632).objs_per_zspage) == (8, 9)
    assert (class_of(2048).pages_per_zspage, class_of(2048).objs_per_zspage) == (1, 2)
    assert (class_of(48).pages_per_zspage, class_of(48).objs_per_zspage) == (3, 256)


def test_merge_rule() -> None:
    shape = {s: (kernel_chain(s), kernel_chain(s) * PAGE_SIZE // s) for s in RAW_SIZES}
    # adjacent merged classes always differ, else they would have been merged
    for lo, hi in zip(CLASSES, CLASSES[1:], strict=False):
        assert (lo.pages_per_zspage, lo.objs_per_zspage) != (
            hi.pages_per_zspage,
            hi.objs_per_zspage,
        )
    for s in RAW_SIZES:
        c = class_of(s)
        # the class serving s is the smallest merged class >= s and has s's own shape ...
        assert c.size >= s
        assert all(other.size < s for other in CLASSES[: c.index])
        assert (c.pages_per_zspage, c.objs_per_zspage) == shape[s]
        # ... and every raw size in between has that shape too (a run merged upwards)
        assert all(shape[t] == shape[s] for t in RAW_SIZES if s <= t <= c.size)


def test_lookup_table_rounds_up() -> None:
    assert len(zsmalloc._LUT) == PAGE_SIZE + 1
    for n in range(1, PAGE_SIZE + 1):
        c = class_of(n)
        assert c.size >= n
        assert c.index == 0 or CLASSES[c.index - 1].size < n


def test_huge_class_size() -> None:
    assert HUGE_CLASS_SIZE == 3633
    huge = class_of(HUGE_CLASS_SIZE)
    assert (huge.pages_per_zspage, huge.objs_per_zspage) == (1, 1)
    for n in range(1, HUGE_CLASS_SIZE):
        c = class_of(n)
        assert (c.pages_per_zspage, c.objs_per_zspage) != (1, 1), n


# ------------------------------------------------------------------------------ basics


def test_roundtrip_all_sizes() -> None:
    pool = ZsPool()
    handles = {}
    for n in range(1, PAGE_SIZE + 1):
        h = pool.alloc(n)
        assert h > 0 and h not in handles
        pool.write(h, payload(n, n))
        handles[h] = n
    for h, n in handles.items():
        assert pool.size_of(h) == n
        assert pool.read(h) == payload(n, n)
    assert pool.statistics().classes[122].objs_used == PAGE_SIZE - 3632
    for h in handles:
        pool.free(h)
    assert pool.total_pages == 0


def test_write_accepts_buffers_and_checks_length() -> None:
    pool = ZsPool()
    h = pool.alloc(100)
    pool.write(h, bytearray(b"a" * 100))
    assert pool.read(h) == b"a" * 100
    pool.write(h, memoryview(b"b" * 200)[50:150])
    assert pool.read(h) == b"b" * 100
    with pytest.raises(ValueError):
        pool.write(h, b"x" * 99)
    with pytest.raises(ValueError):
        pool.write(h, b"x" * 101)
    assert pool.read(h) == b"b" * 100
    for bad in (0, -1, PAGE_SIZE + 1):
        with pytest.raises(ValueError):
            pool.alloc(bad)


def test_handle_misuse_raises() -> None:
    pool = ZsPool()
    live = pool.alloc(64)
    dead = pool.alloc(64)
    pool.free(dead)
    for bad in (0, -1, -live, dead, 10**6, 2**70):
        for op in (pool.read, pool.size_of, pool.free):
            with pytest.raises(InvalidHandle):
                op(bad)
        with pytest.raises(InvalidHandle):
            pool.write(bad, b"x" * 64)
    assert issubclass(InvalidHandle, ValueError)
    # the failed calls changed nothing
    assert pool.size_of(live) == 64
    assert pool.statistics().classes[class_of(64).index].objs_used == 1
    # a freed handle is reused by a later alloc
    assert pool.alloc(10) == dead


def test_straddling_objects_on_scattered_pages() -> None:
    pool = ZsPool()
    # 1-page zspages, then free every other: the free page list is now non-contiguous
    singles = [pool.alloc(PAGE_SIZE) for _ in range(20)]
    for h in singles[::2]:
        pool.free(h)
    objs = class_of(3632).objs_per_zspage
    hs = [pool.alloc(3632) for _ in range(objs)]
    zids = {pool._location(h)[0] for h in hs}
    assert len(zids) == 1
    _, inuse, pages = pool._zspage_info(zids.pop())
    assert inuse == objs and len(pages) == 8
    assert any(b != a + 1 for a, b in zip(pages, pages[1:], strict=False))
    straddlers = [h for h in hs if pool._location(h)[1] % PAGE_SIZE + 3632 > PAGE_SIZE]
    assert len(straddlers) == 7
    for i, h in enumerate(hs):
        pool.write(h, payload(i, 3632))
    for i, h in enumerate(hs):
        assert pool.read(h) == payload(i, 3632)


def test_alloc_prefers_fullest_zspage() -> None:
    pool = ZsPool()
    size = 256  # 16 objects on 1 page
    objs = class_of(size).objs_per_zspage
    assert objs == 16
    hs = [pool.alloc(size) for _ in range(3 * objs)]
    by_zspage: dict[int, list[int]] = {}
    for h in hs:
        by_zspage.setdefault(pool._location(h)[0], []).append(h)
    a, b, c = by_zspage.values()
    for h in a[:8]:  # 50%
        pool.free(h)
    for h in b[:2]:  # 87%
        pool.free(h)
    for h in c[:12]:  # 25%
        pool.free(h)
    zid_a, zid_b = pool._location(a[-1])[0], pool._location(b[-1])[0]
    assert [pool._location(pool.alloc(size))[0] for _ in range(2)] == [zid_b, zid_b]
    assert pool._location(pool.alloc(size))[0] == zid_a
    assert pool.total_pages == 3


def test_free_into_full_zspage_beats_emptier_current_one() -> None:
    pool = ZsPool()
    full = [pool.alloc(256) for _ in range(16)]
    current = [pool.alloc(256) for _ in range(2)]  # 2 of 16: the 10% group
    zid_full, zid_cur = pool._location(full[0])[0], pool._location(current[0])[0]
    assert zid_full != zid_cur
    assert pool._location(pool.alloc(256))[0] == zid_cur
    pool.free(full[3])  # 15 of 16: the 99% group, fuller than the current zspage
    assert pool._location(pool.alloc(256))[0] == zid_full
    assert pool._location(pool.alloc(256))[0] == zid_cur


# ------------------------------------------------------------------- memory and release


def test_emptied_zspages_are_released_and_rss_follows() -> None:
    pool = ZsPool()
    rng = random.Random(7)
    blob = rng.randbytes(2 * PAGE_SIZE)
    sizes: list[int] = []
    target = 64 << 20
    while sum(sizes) < target:
        sizes.append(rng.randint(800, PAGE_SIZE))
    handles = [0] * len(sizes)
    gc.collect()
    before = rss_bytes()
    for i, n in enumerate(sizes):
        h = pool.alloc(n)
        pool.write(h, blob[i % PAGE_SIZE : i % PAGE_SIZE + n])
        handles[i] = h
    held = pool.total_pages * PAGE_SIZE
    grown = rss_bytes() - before
    assert held >= sum(sizes)
    assert abs(grown - held) < 0.05 * held, (grown, held)
    for h in handles:
        pool.free(h)
    assert pool.total_pages == 0
    stats = pool.statistics()
    assert stats.total_pages == 0
    assert all(c.objs_allocated == 0 and c.pages_used == 0 for c in stats.classes)
    assert rss_bytes() - before < 0.05 * held
    # pages are reused after release: refilling needs no more address space
    mapped = pool._next_page
    for i, n in enumerate(sizes[: len(sizes) // 2]):
        pool.write(pool.alloc(n), blob[i % PAGE_SIZE : i % PAGE_SIZE + n])
    assert pool._next_page == mapped


def test_release_batch_gives_pages_back_in_runs_and_rss_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A discard of many huge pages (one one-page zspage each) used to make one madvise (three
    syscalls under mlockall) per page: a 12 GiB-of-huge-pages blkdiscard held the loop
    device's queue for 15.7 s. Inside release_batch() the emptied zspages go back together."""
    calls: list[int] = []
    real = ZsPool._dontneed

    def counting(self: ZsPool, first: int, count: int) -> None:
        calls.append(count)
        real(self, first, count)

    monkeypatch.setattr(ZsPool, "_dontneed", counting)
    pool = ZsPool()
    rng = random.Random(11)
    n = 8192  # 32 MiB of huge objects
    gc.collect()
    before = rss_bytes()
    handles = []
    for _ in range(n):
        h = pool.alloc(PAGE_SIZE)
        pool.write(h, rng.randbytes(PAGE_SIZE))
        handles.append(h)
    held = pool.total_pages * PAGE_SIZE
    with pool.release_batch():
        for h in handles:
            pool.free(h)
        assert not calls  # nothing given back until the batch closes
    assert pool.total_pages == 0
    assert sum(calls) == n
    arena_pages = zsmalloc._ARENA_MASK + 1
    assert len(calls) == n // arena_pages, calls  # contiguous pages: one call per arena
    assert rss_bytes() - before < 0.05 * held


def test_allocating_inside_a_release_batch_keeps_the_data() -> None:
    """A page freed in an open batch and reused before it closes must not be DONTNEED'd
    afterwards (that would zero an object written since)."""
    pool = ZsPool()
    rng = random.Random(12)
    old = [pool.alloc(PAGE_SIZE) for _ in range(64)]
    for h in old:
        pool.write(h, rng.randbytes(PAGE_SIZE))
    kept: dict[int, bytes] = {}
    with pool.release_batch():
        for h in old:
            pool.free(h)
        for _ in range(64):
            data = rng.randbytes(PAGE_SIZE)
            h = pool.alloc(PAGE_SIZE)
            pool.write(h, data)
            kept[h] = data
        with pytest.raises(RuntimeError):
            with pool.release_batch():
                pass
    assert all(pool.read(h) == data for h, data in kept.items())
    assert pool._next_page == 64  # the freed pages were reused, none newly mapped


# ---------------------------------------------------------------------------- compaction


def test_compaction_frees_fragmented_pages() -> None:
    pool = ZsPool()
    size = 1000  # class 1024: 4 objects per page
    hs = [pool.alloc(size) for _ in range(4000)]
    for i, h in enumerate(hs):
        pool.write(h, payload(i, size))
    assert pool.total_pages == 1000
    keep = {}
    for i, h in enumerate(hs):
        if i % 4 == 0:
            keep[h] = payload(i, size)
        else:
            pool.free(h)
    # each page now holds 1 of 4 objects
    assert pool.total_pages == 1000
    cls = pool.statistics().classes[class_of(size).index]
    assert (cls.objs_allocated, cls.objs_used, cls.freeable_pages) == (4000, 1000, 750)
    freed = pool.compact()
    assert freed == 750
    assert pool.total_pages == 250
    stats = pool.statistics()
    assert stats.pages_compacted == 750
    cls = stats.classes[class_of(size).index]
    assert (cls.objs_allocated, cls.objs_used, cls.freeable_pages) == (1000, 1000, 0)
    for h, data in keep.items():
        assert pool.read(h) == data
    assert pool.compact() == 0
    assert pool.statistics().pages_compacted == 750


def test_compaction_fills_never_used_slots_of_destination() -> None:
    pool = ZsPool()
    hs = [pool.alloc(256) for _ in range(3 * 16 + 14)]  # A, B, C full; D 14 of 16
    for i, h in enumerate(hs):
        pool.write(h, payload(i, 256))
    pages = [hs[i * 16 : i * 16 + 16] for i in range(4)]
    doomed = pages[0][:14] + pages[1][:15] + pages[2][:13]  # keep A 2, B 1, C 3
    for h in doomed:
        pool.free(h)
    zid_d = pool._location(pages[3][0])[0]
    assert pool.compact() == 2
    moved = pages[0][14:] + pages[1][15:]  # 3 objects: two go to D's untouched tail
    assert sorted(pool._location(h)[0] == zid_d for h in moved).count(True) == 2
    assert pool._zspage_info(zid_d)[1] == 16
    for i, h in enumerate(hs):
        if h not in doomed:
            assert pool.read(h) == payload(i, 256)
    offsets = [pool._location(h) for h in hs if h not in doomed]
    assert len(set(offsets)) == len(offsets)


def test_compaction_multi_page_zspages_mixed_classes() -> None:
    pool = ZsPool()
    rng = random.Random(3)
    live = {}
    for i in range(6000):
        n = rng.choice([100, 700, 2100, 3632, 3700])
        h = pool.alloc(n)
        pool.write(h, payload(i, n))
        live[h] = payload(i, n)
    for h in rng.sample(sorted(live), 4500):
        pool.free(h)
        del live[h]
    before = pool.total_pages
    freeable = sum(c.freeable_pages for c in pool.statistics().classes)
    freed = pool.compact()
    assert freed == before - pool.total_pages
    assert freed == freeable > 0
    assert sum(c.freeable_pages for c in pool.statistics().classes) == 0
    for h, data in live.items():
        assert pool.read(h) == data


def test_statistics_are_immutable() -> None:
    stats = ZsPool().statistics()
    assert isinstance(stats, PoolStatistics)
    assert isinstance(stats.classes, tuple) and len(stats.classes) == 123
    assert isinstance(stats.classes[0], ClassStatistics)
    with pytest.raises(AttributeError):
        stats.total_pages = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        stats.classes[0].objs_used = 1  # type: ignore[misc]


# ----------------------------------------------------------------- model-based testing

# sizes whose classes hold few objects per zspage, so a run of allocations spans many zspages
CROWDED_SIZES = st.sampled_from([100, 700, 1000, 2000, 2100, 3000, 3632, 3700])
SIZES = st.one_of(
    st.integers(1, PAGE_SIZE),
    st.sampled_from([1, 31, 32, 33, 256, 1000, 2048, 3632, HUGE_CLASS_SIZE, PAGE_SIZE]),
)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = ZsPool()
        self.oracle: dict[int, bytes] = {}
        self.compacted = 0

    def _pick(self, index: int) -> int:
        handles = sorted(self.oracle)
        return handles[index % len(handles)]

    def _store(self, size: int, seed: int) -> int:
        h = self.pool.alloc(size)
        assert h > 0 and h not in self.oracle
        data = payload(seed, size)
        self.pool.write(h, data)
        self.oracle[h] = data
        return h

    @rule(size=SIZES, seed=st.integers(0, 2**32))
    def alloc(self, size: int, seed: int) -> None:
        self._store(size, seed)

    @rule(
        size=st.one_of(CROWDED_SIZES, SIZES), count=st.integers(1, 120), seed=st.integers(0, 2**32)
    )
    def alloc_many(self, size: int, count: int, seed: int) -> None:
        for i in range(count):
            self._store(size, seed + i)

    @precondition(lambda self: self.oracle)
    @rule(index=st.integers(0, 2**16), seed=st.integers(0, 2**32))
    def rewrite(self, index: int, seed: int) -> None:
        h = self._pick(index)
        data = payload(seed, len(self.oracle[h]))
        self.pool.write(h, data)
        self.oracle[h] = data

    @precondition(lambda self: self.oracle)
    @rule(index=st.integers(0, 2**16))
    def free(self, index: int) -> None:
        h = self._pick(index)
        self.pool.free(h)
        del self.oracle[h]
        with pytest.raises(InvalidHandle):
            self.pool.read(h)

    @precondition(lambda self: self.oracle)
    @rule(keep_one_in=st.integers(2, 5), phase=st.integers(0, 4))
    def free_fragmenting(self, keep_one_in: int, phase: int) -> None:
        for i, h in enumerate(sorted(self.oracle)):
            if (i + phase) % keep_one_in:
                self.pool.free(h)
                del self.oracle[h]

    @rule()
    def compact(self) -> None:
        before = self.pool.total_pages
        freeable = sum(c.freeable_pages for c in self.pool.statistics().classes)
        freed = self.pool.compact()
        assert freed == before - self.pool.total_pages
        assert freed == freeable
        self.compacted += freed
        event("compaction freed pages" if freed else "compaction freed nothing")
        assert self.pool.statistics().pages_compacted == self.compacted

    @invariant()
    def contents_match(self) -> None:
        for h, data in self.oracle.items():
            assert self.pool.size_of(h) == len(data)
            assert self.pool.read(h) == data

    @invariant()
    def layout_is_sound(self) -> None:
        pool = self.pool
        slots: dict[int, set[int]] = {}
        for h, data in self.oracle.items():
            zid, off = pool._location(h)
            c, _, pages = pool._zspage_info(zid)
            sc = CLASSES[c]
            assert class_of(len(data)) == sc
            assert off % sc.size == 0
            assert off + sc.size <= sc.pages_per_zspage * PAGE_SIZE
            assert off not in slots.setdefault(zid, set()), "two objects share a slot"
            slots[zid].add(off)
        all_pages: list[int] = []
        for zid, offs in slots.items():
            c, inuse, pages = pool._zspage_info(zid)
            assert inuse == len(offs)
            assert len(pages) == CLASSES[c].pages_per_zspage
            all_pages.extend(pages)
        assert len(all_pages) == len(set(all_pages)), "two zspages share a page"
        assert len(all_pages) == pool.total_pages, "a zspage without objects is held"

    @invariant()
    def statistics_agree(self) -> None:
        stats = self.pool.statistics()
        per_class = Counter(class_of(len(d)).index for d in self.oracle.values())
        assert stats.total_pages == self.pool.total_pages
        assert sum(c.pages_used for c in stats.classes) == stats.total_pages
        for sc, cs in zip(CLASSES, stats.classes, strict=True):
            assert cs.size == sc.size
            assert cs.objs_used == per_class[sc.index]
            assert cs.objs_allocated >= cs.objs_used
            assert cs.objs_allocated % sc.objs_per_zspage == 0
            zspages = cs.objs_allocated // sc.objs_per_zspage
            assert cs.pages_used == zspages * sc.pages_per_zspage
            # zspages are freed when empty: each one holds at least one object
            assert zspages <= cs.objs_used
        if not self.oracle:
            assert self.pool.total_pages == 0

    @invariant()
    def kept_counters_equal_a_full_recount(self) -> None:
        # statistics() reads per-class counters kept as objects and zspages come and go;
        # a walk over every zspage must find the same figures after any sequence of ops.
        assert self.pool.statistics() == self.pool._recount()


PoolMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_state_machine = PoolMachine.TestCase


_MLOCKED_POOL = """
import ctypes
from zramfs.zsmalloc import ZsPool
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mlockall(1 | 2 | 4) == 0, ctypes.get_errno()  # CURRENT | FUTURE | ONFAULT
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
pool = ZsPool()
base = rss()
handles = [pool.alloc(2000) for _ in range(20000)]
for h in handles:
    pool.write(h, b"x" * 2000)
grown = rss() - base
for h in handles:
    pool.free(h)
import zramfs.zsmalloc as zs
print(pool.total_pages, grown, rss() - base, zs._memory_locked)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mlockall of a large pool needs root")
def test_pages_are_released_under_mlockall() -> None:
    """The daemon locks its memory; freed zspages must still go back to the OS."""
    out = subprocess.run(
        [sys.executable, "-c", _MLOCKED_POOL], check=True, capture_output=True, text=True
    ).stdout.split()
    pages_left, grown, left = (int(x) for x in out[:3])
    # the pool found out at its first release that memory is locked, and kept the answer
    assert out[3] == "True"
    assert pages_left == 0
    assert grown > 35 << 20  # 20000 objects of 2000 bytes really were resident
    assert left < 8 << 20  # and the ~40 MiB came back after the frees


_DECLARED_LOCKED_POOL = """
import ctypes
import zramfs.zsmalloc as zs
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mlockall(1 | 2 | 4) == 0, ctypes.get_errno()
zs.set_memory_locked(True)
pool = zs.ZsPool()
handles = [pool.alloc(2000) for _ in range(4000)]
for h in handles:
    pool.write(h, b"y" * 2000)
for h in handles:
    pool.free(h)
print(pool.total_pages, zs._memory_locked)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mlockall needs root")
def test_declared_lock_mode_releases_pages() -> None:
    """With the mode declared once (as the daemon does), releases take the locked path
    directly and every zspage still goes back."""
    out = subprocess.run(
        [sys.executable, "-c", _DECLARED_LOCKED_POOL], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["0", "True"]


def test_statistics_cost_does_not_grow_with_the_pool() -> None:
    """statistics() reads kept counters: it must not look at the zspage columns at all."""
    pool = ZsPool()
    for _ in range(3000):
        pool.write(pool.alloc(700), b"z" * 700)
    before = pool.statistics()
    pool._zinuse = None  # type: ignore[assignment]  # a walk would now fail
    pool._zcls = None  # type: ignore[assignment]
    assert pool.statistics() == before
