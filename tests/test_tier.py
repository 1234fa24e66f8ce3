"""The writeback tier's core without files: the tiered PageStore against a bytearray oracle
(writeback of every kind, in-flight writebacks racing overwrites and discards, failed
backing writes and reads, recompression, automatic writeback's choice of pages), the
BlockMap, and the pure decisions of tierpolicy. The backing store is MemoryBacking."""

from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zramfs.backing import MemoryBacking
from zramfs.blockmap import BlockMap
from zramfs.codecs import make_codec
from zramfs.device import ControlError, DeviceTable
from zramfs.pagestore import (
    CHUNK_PAGES,
    FLAG_HUGE,
    FLAG_IDLE,
    FLAG_INCOMPRESSIBLE,
    FLAG_PP,
    FLAG_RECOMPRESSED,
    FLAG_SAME,
    FLAG_STORED,
    FLAG_WB,
    WB_HUGE,
    WB_IDLE,
    WB_INCOMPRESSIBLE,
    BackingReadError,
    PageStore,
    coldest_first,
)
from zramfs.tierpolicy import (
    compaction_due,
    marks,
    pages_to_write_back,
    parse_psi_some_avg10,
)

PAGE = 4096
NPAGES = CHUNK_PAGES + 40  # two chunks of the page table
SIZE = NPAGES * PAGE


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def page_of(kind: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == 0:
        return bytes(PAGE)
    if kind == 1:
        return bytes([seed & 0xFF]) * PAGE  # same-filled
    if kind == 2:
        return rng.randbytes(PAGE)  # huge
    words = [b"zram ", b"page ", b"tier ", b"writeback ", str(seed).encode() + b" "]
    text = b"".join(rng.choice(words) for _ in range(PAGE // 4))
    return text[:PAGE]


def tiered(nblocks: int = 64, clock: Clock | None = None) -> tuple[PageStore, MemoryBacking]:
    s = PageStore(SIZE, make_codec("lz4"), clock=clock or Clock())
    s.set_recompression({1: make_codec("zstd"), 2: make_codec("deflate")})
    backing = MemoryBacking(nblocks)
    s.attach_backing(nblocks, backing.read_block)
    return s, backing


def write_back(s: PageStore, backing: MemoryBacking, indices: list[int]) -> int:
    batch = s.begin_writeback(indices)
    failed = backing.write_blocks(batch.blocks, batch.data)
    s.end_writeback(batch, failed)
    return batch.stopped


def drain(s: PageStore, backing: MemoryBacking) -> None:
    assert s.blocks is not None
    blocks = s.blocks.take_discards()
    backing.discard_blocks(blocks)
    s.blocks.reuse(blocks)


# -- the state machine --------------------------------------------------------------------------


class TieredStore(RuleBasedStateMachine):
    @initialize(nblocks=st.integers(8, 80))
    def start(self, nblocks: int) -> None:
        self.clock = Clock()
        self.store, self.backing = tiered(nblocks, self.clock)
        self.oracle = bytearray(SIZE)
        self.failed_reads = 0

    pages = st.integers(0, NPAGES - 1)

    @rule(
        first=pages,
        kinds=st.lists(st.integers(0, 3), min_size=1, max_size=6),
        seed=st.integers(0, 9999),
        skew=st.integers(0, PAGE - 1),
    )
    def write(self, first: int, kinds: list[int], seed: int, skew: int) -> None:
        data = b"".join(page_of(k, seed + i) for i, k in enumerate(kinds))
        off = min(first * PAGE + skew, SIZE - 1)
        data = data[: SIZE - off]
        self.store.write(off, data)
        self.oracle[off : off + len(data)] = data

    @rule(first=pages, length=st.integers(1, 6 * PAGE), skew=st.integers(0, PAGE - 1))
    def discard(self, first: int, length: int, skew: int) -> None:
        off = min(first * PAGE + skew, SIZE - 1)
        length = min(length, SIZE - off)
        self.store.discard(off, length)
        self.oracle[off : off + length] = bytes(length)

    @rule(first=pages, length=st.integers(1, 5 * PAGE))
    def read(self, first: int, length: int) -> None:
        off = first * PAGE
        length = min(length, SIZE - off)
        assert self.store.read(off, length) == self.oracle[off : off + length]

    @rule(
        mode=st.sampled_from([0, WB_IDLE, WB_HUGE, WB_IDLE | WB_HUGE, WB_INCOMPRESSIBLE]),
        lo=pages,
        span=st.integers(1, NPAGES),
    )
    def writeback(self, mode: int, lo: int, span: int) -> None:
        hi = min(NPAGES, lo + span)
        chosen = self.store.select_writeback(mode, lo, hi)
        for i in chosen:
            f = self.store.page_flags(i)
            assert lo <= i < hi and f & FLAG_STORED and not f & (FLAG_SAME | FLAG_WB)
            if mode & WB_IDLE:
                assert f & FLAG_IDLE
            if mode & WB_HUGE:
                assert f & FLAG_HUGE
            if mode & WB_INCOMPRESSIBLE:
                assert f & FLAG_INCOMPRESSIBLE
        free = self.store.blocks.free_blocks  # type: ignore[union-attr]
        stopped = write_back(self.store, self.backing, chosen)
        moved = min(len(chosen), free)
        assert stopped == (errno.ENOSPC if len(chosen) > free else 0)
        for i in chosen[:moved]:
            assert self.store.page_flags(i) & FLAG_WB

    @rule(data=st.data())
    def writeback_races_rewrites(self, data: st.DataObject) -> None:
        """Pages rewritten, discarded or partly rewritten while their writeback is in
        flight keep the newest data; the others go to the backing store."""
        chosen = self.store.select_writeback(0)[:12]
        batch = self.store.begin_writeback(chosen)
        for k, i in enumerate(batch.indices):
            assert self.store.page_flags(i) & FLAG_PP
            what = data.draw(st.integers(0, 3), label=f"race {k}")
            if what == 1:
                new = page_of(3, 777 + i)
                self.store.write(i * PAGE, new)
                self.oracle[i * PAGE : (i + 1) * PAGE] = new
            elif what == 2:
                self.store.discard(i * PAGE, PAGE)
                self.oracle[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
            elif what == 3:
                self.store.write(i * PAGE + 100, b"racing")
                self.oracle[i * PAGE + 100 : i * PAGE + 106] = b"racing"
        failed = {
            k for k in range(len(batch)) if data.draw(st.booleans(), label="fails") and k % 3 == 0
        }
        written = self.backing.write_blocks(batch.blocks, batch.data)
        self.store.end_writeback(batch, written | failed)
        for i in batch.indices:
            assert not self.store.page_flags(i) & FLAG_PP

    @rule(age=st.integers(0, 50), count=st.integers(1, 40))
    def auto_writeback_coldest(self, age: int, count: int) -> None:
        cold = self.store.cold_pages(count, age)
        assert len(cold) <= count
        now = self.store._now()
        times = []
        for i in cold:
            f = self.store.page_flags(i)
            assert f & FLAG_STORED and not f & (FLAG_SAME | FLAG_WB | FLAG_PP)
            t = self.store._chunks[i // CHUNK_PAGES].atime[i % CHUNK_PAGES]
            assert now - t >= age
            times.append(t)
        assert times == sorted(times)  # oldest access first
        write_back(self.store, self.backing, cold)

    @rule(
        mode=st.sampled_from([0, WB_IDLE, WB_HUGE]),
        prio=st.integers(1, 2),
        prio_max=st.integers(2, 3),
        threshold=st.sampled_from([0, 0, 500, 2000]),
        max_pages=st.one_of(st.none(), st.integers(0, 20)),
    )
    def recompress(
        self, mode: int, prio: int, prio_max: int, threshold: int, max_pages: int | None
    ) -> None:
        if prio >= prio_max:
            return
        before = self.store.statistics().compr_data_size
        chosen = self.store.select_recompress(mode, prio_max)
        tried, replaced = self.store.recompress(chosen, prio, prio_max, threshold, max_pages)
        assert replaced <= tried and (max_pages is None or tried <= max_pages)
        after = self.store.statistics().compr_data_size
        assert after <= before
        if replaced:
            assert after < before

    @rule()
    def drain_discards(self) -> None:
        drain(self.store, self.backing)

    @rule(seconds=st.integers(0, 30))
    def tick(self, seconds: int) -> None:
        self.clock.t += seconds

    @rule(age=st.one_of(st.none(), st.integers(0, 40)))
    def mark_idle(self, age: int | None) -> None:
        self.store.mark_idle(age)

    @rule()
    def compact(self) -> None:
        self.store.compact()

    @precondition(lambda self: self.store.bd_count)
    @rule(data=st.data())
    def backing_read_error(self, data: st.DataObject) -> None:
        wb = [i for i in range(NPAGES) if self.store.page_flags(i) & FLAG_WB]
        i = data.draw(st.sampled_from(wb))
        block = self.store._chunks[i // CHUNK_PAGES].vals[i % CHUNK_PAGES] >> 13
        self.backing.fail_reads.add(block)
        with pytest.raises(BackingReadError) as info:
            self.store.read(i * PAGE, PAGE)
        assert info.value.errno == errno.EIO
        self.failed_reads += 1
        # The other pages still read; the failed one reads again once the disk recovers.
        self.backing.fail_reads.clear()
        assert self.store.read(i * PAGE, PAGE) == self.oracle[i * PAGE : (i + 1) * PAGE]

    @invariant()
    def contents_and_counters(self) -> None:
        s = self.store
        for i in range(NPAGES):
            assert s._page(i) == self.oracle[i * PAGE : (i + 1) * PAGE], i
        st_ = s.statistics()
        flags = [s.page_flags(i) for i in range(NPAGES)]
        wb = sum(1 for f in flags if f & FLAG_WB)
        assert st_.bd_count == wb
        bm = s.blocks
        assert bm is not None and bm.taken() == wb  # no block leaks, none shared
        blocks = [
            s._chunks[i // CHUNK_PAGES].vals[i % CHUNK_PAGES] >> 13
            for i in range(NPAGES)
            if flags[i] & FLAG_WB
        ]
        assert len(set(blocks)) == len(blocks)
        assert st_.pages_stored == sum(1 for f in flags if f & FLAG_STORED)
        assert st_.same_pages == sum(1 for f in flags if f & FLAG_SAME)
        assert st_.huge_pages == sum(1 for f in flags if f & FLAG_HUGE)
        assert st_.idle_pages == sum(1 for f in flags if f & FLAG_IDLE)
        assert st_.recompressed_pages == sum(1 for f in flags if f & FLAG_RECOMPRESSED)
        pool_bytes = 0
        for i, f in enumerate(flags):
            if f & FLAG_STORED and not f & (FLAG_SAME | FLAG_WB):
                pool_bytes += s._pool.size_of(s._chunks[i // CHUNK_PAGES].vals[i % CHUNK_PAGES])
            assert not f & FLAG_PP  # no writeback is left in flight between rules
        assert st_.compr_data_size == pool_bytes
        assert st_.failed_reads == self.failed_reads
        assert st_.bd_writes >= st_.bd_count


TieredStore.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_tiered_store = TieredStore.TestCase


# -- unit tests -------------------------------------------------------------------------------


def test_writeback_budget_and_full_backing_store() -> None:
    s, backing = tiered(nblocks=5)
    for i in range(10):
        s.write(i * PAGE, page_of(3, i))
    s.writeback_limit_enable = True
    s.writeback_limit = 3
    assert write_back(s, backing, s.select_writeback(0)) == errno.EIO
    assert s.statistics().bd_count == 3 and s.writeback_limit == 0
    s.writeback_limit_enable = False
    assert write_back(s, backing, s.select_writeback(0)) == errno.ENOSPC
    assert s.statistics().bd_count == 5
    st_ = s.statistics()
    assert (st_.bd_count, st_.bd_writes) == (5, 5)
    for i in range(10):
        assert s.read(i * PAGE, PAGE) == page_of(3, i)


def test_writeback_picks_largest_objects_first() -> None:
    s, backing = tiered()
    s.write(0, page_of(3, 1))
    s.write(PAGE, page_of(2, 2))  # huge
    s.write(2 * PAGE, page_of(1, 3))  # same-filled: never written back
    assert s.select_writeback(0) == [1, 0]
    assert s.select_writeback(WB_HUGE) == [1]
    assert s.select_writeback(WB_IDLE) == []
    s.mark_idle()
    assert s.select_writeback(WB_IDLE | WB_HUGE) == [1]


def test_freed_blocks_wait_for_their_discard() -> None:
    s, backing = tiered(nblocks=2)
    s.write(0, page_of(3, 1) + page_of(3, 2))
    write_back(s, backing, [0, 1])
    s.discard(0, 2 * PAGE)
    s.write(0, page_of(3, 5))
    # The freed blocks are not reused before the shell discarded them.
    assert write_back(s, backing, [0]) == errno.ENOSPC
    drain(s, backing)
    assert backing.discarded == 2
    assert write_back(s, backing, [0]) == 0
    assert s.read(0, PAGE) == page_of(3, 5)


def test_a_pinned_block_outlives_the_page_until_the_read_ends() -> None:
    s, backing = tiered(nblocks=1)
    s.write(0, page_of(3, 1))
    write_back(s, backing, [0])
    pending = s.fetch(0, PAGE)
    assert pending.blocks == [0]
    s.discard(0, PAGE)  # the page goes while its block is being read
    assert s.blocks is not None and s.blocks.take_discards() == []
    s.fill_backing(pending, backing.read_blocks(pending.blocks))
    assert s.finish_read(pending) == page_of(3, 1)  # the read saw the page as it was
    assert s.blocks.take_discards() == [0]


def test_recompression_replaces_only_smaller_and_flags_the_rest() -> None:
    s, _ = tiered()
    text = page_of(3, 1)
    noise = page_of(2, 2)
    s.write(0, text + noise)
    before = s.statistics()
    tried, replaced = s.recompress(s.select_recompress(0, 3), 1, 3)
    after = s.statistics()
    assert (tried, replaced) == (2, 1)
    assert s.page_flags(0) == FLAG_STORED | FLAG_RECOMPRESSED
    assert s.page_flags(1) & FLAG_INCOMPRESSIBLE and s.page_flags(1) & FLAG_HUGE
    assert after.compr_data_size < before.compr_data_size
    assert after.huge_pages == 1 and after.recompressed_pages == 1
    assert s.read(0, 2 * PAGE) == text + noise
    assert s.select_recompress(0, 3) == [0]  # priority 1 used: priority 2 may still try
    assert s.select_recompress(0, 2) == []
    s.write(PAGE, noise)  # a rewrite clears the incompressible mark
    assert not s.page_flags(1) & FLAG_INCOMPRESSIBLE


def test_recompressed_pages_write_back_and_read_back() -> None:
    s, backing = tiered()
    text = page_of(3, 4)
    s.write(0, text)
    s.recompress([0], 1, 2)
    write_back(s, backing, [0])
    assert s.page_flags(0) == FLAG_STORED | FLAG_WB | FLAG_RECOMPRESSED
    pending = s.fetch(0, PAGE)
    s.fill_backing(pending, backing.read_blocks(pending.blocks))
    assert s.finish_read(pending) == text
    s.write(10, b"abc")  # read-modify-write of a written-back page
    assert s.read(0, PAGE) == text[:10] + b"abc" + text[13:]
    assert s.statistics().bd_count == 0 and s.statistics().recompressed_pages == 0


def test_coldest_first_is_oldest_access_then_lowest_index() -> None:
    idx = np.array([5, 3, 9, 1, 7])
    t = np.array([10, 2, 2, 50, 0])
    assert coldest_first(idx, t, 3) == [7, 3, 9]
    assert coldest_first(idx, t, 10) == [7, 3, 9, 5, 1]
    assert coldest_first(idx, t, 0) == []


# -- the pure decisions ---------------------------------------------------------------------


def test_marks() -> None:
    m = marks(100 * PAGE * 10, 90)
    assert m.on and m.high == 900 * PAGE and m.low == 850 * PAGE
    assert not marks(0, 90).on and not marks(PAGE, 0).on
    assert marks(PAGE * 100, 3).low == 0


def test_pages_to_write_back() -> None:
    assert pages_to_write_back(100, 200, 1000, 10) == 0
    assert pages_to_write_back(10 * PAGE, 8 * PAGE, 10 * 1024, 10) == 8  # 1 KiB objects
    assert pages_to_write_back(8 * PAGE + 1, 8 * PAGE, 10 * 1024, 10) == 1
    assert pages_to_write_back(1 << 40, 0, 1 << 20, 1 << 10) == 4096  # one round's bound
    assert pages_to_write_back(10 * PAGE, 0, 0, 0) == 0


def test_compaction_due() -> None:
    assert compaction_due(100, 25, 25) and not compaction_due(100, 24, 25)
    assert not compaction_due(100, 50, 0) and not compaction_due(0, 0, 25)


def test_parse_psi() -> None:
    text = (
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\n"
        "full avg10=1.00 avg60=0.00 avg300=0.00 total=5\n"
    )
    assert parse_psi_some_avg10(text) == 12.5
    assert parse_psi_some_avg10("") == 0.0
    assert parse_psi_some_avg10("some avg10=x") == 0.0


def test_blockmap() -> None:
    bm = BlockMap(3)
    assert [bm.alloc(), bm.alloc(), bm.alloc(), bm.alloc()] == [0, 1, 2, -1]
    bm.pin(1)
    bm.free(1)
    bm.free(2)
    assert bm.take_discards() == [2] and bm.pending == 2
    bm.unpin(1)
    assert bm.take_discards() == [1]
    bm.reuse([2, 1])
    assert bm.free_blocks == 2 and bm.pending == 0 and bm.taken() == 1
    with pytest.raises(ValueError):
        bm.free(2)
    with pytest.raises(ValueError):
        BlockMap(0)


# -- the control files' parsing (device.py), without a mount -------------------------------------


def device_with_backing(nblocks: int = 64) -> tuple[DeviceTable, MemoryBacking]:
    backing = MemoryBacking(nblocks, path="/dev/fake")
    table = DeviceTable(open_backing=lambda path: backing)
    return table, backing


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except ControlError as exc:
        return exc.errno or 0
    return 0


def test_writeback_parsing_follows_the_kernel() -> None:
    table, _ = device_with_backing()
    d = table.hot_add()
    assert errno_of(d.parse_writeback, b"idle") == errno.EINVAL  # not initialised
    d.write_attr("disksize", b"1M")
    assert errno_of(d.parse_writeback, b"idle") == errno.ENODEV  # no backing_dev
    d.reset()
    d.write_attr("backing_dev", b"/dev/fake\n")
    assert d.read_attr("backing_dev") == b"/dev/fake\n"
    d.write_attr("disksize", b"1M")
    assert errno_of(d.write_attr, "backing_dev", b"/dev/fake") == errno.EBUSY
    assert d.parse_writeback(b"idle\n").scans == ((WB_IDLE, 0, 256),)
    assert d.parse_writeback(b"type=huge_idle").scans == ((WB_IDLE | WB_HUGE, 0, 256),)
    assert d.parse_writeback(b"incompressible").scans == ((WB_INCOMPRESSIBLE, 0, 256),)
    assert d.parse_writeback(b"page_index=7 page_index=9").scans == ((0, 7, 8), (0, 9, 10))
    assert d.parse_writeback(b"page_indexes=3-5").scans == ((0, 3, 6),)
    assert errno_of(d.parse_writeback, b"type=cold") == errno.EINVAL
    assert errno_of(d.parse_writeback, b"page_index=256") == errno.ERANGE
    assert errno_of(d.parse_writeback, b"page_index=x") == errno.EINVAL
    assert errno_of(d.parse_writeback, b"page_indexes=5") == errno.EINVAL
    assert errno_of(d.parse_writeback, b"page_indexes=5-3") == errno.ERANGE
    assert errno_of(d.parse_writeback, b"page_indexes=0-256") == errno.ERANGE


def test_recomp_algorithm_and_recompress_parsing() -> None:
    table, _ = device_with_backing()
    d = table.hot_add()
    assert d.read_attr("recomp_algorithm") == b""
    assert errno_of(d.write_attr, "recomp_algorithm", b"priority=1") == errno.EINVAL
    assert errno_of(d.write_attr, "recomp_algorithm", b"algo=zstd priority=4") == errno.EINVAL
    assert errno_of(d.write_attr, "recomp_algorithm", b"algo=zstd priority=0") == errno.EINVAL
    assert errno_of(d.write_attr, "recomp_algorithm", b"algo=lzma") == errno.EINVAL
    d.write_attr("recomp_algorithm", b"algo=zstd")
    d.write_attr("recomp_algorithm", b"algo=deflate priority=3")
    assert d.read_attr("recomp_algorithm") == (
        b"#1: lz4 lz4hc [zstd] deflate \n#3: lz4 lz4hc zstd [deflate] \n"
    )
    d.write_attr("algorithm_params", b"priority=1 level=9")
    assert errno_of(d.write_attr, "algorithm_params", b"priority=2 level=3") == errno.EINVAL
    assert errno_of(d.write_attr, "algorithm_params", b"priority=4 level=3") == errno.EINVAL
    assert errno_of(d.parse_recompress, b"") == errno.EINVAL  # not initialised
    d.write_attr("disksize", b"1M")
    assert errno_of(d.write_attr, "recomp_algorithm", b"algo=zstd") == errno.EBUSY
    r = d.parse_recompress(b"type=idle threshold=1000 max_pages=5")
    assert (r.mode, r.threshold, r.max_pages, r.prio, r.prio_max) == (WB_IDLE, 1000, 5, 1, 4)
    assert d.parse_recompress(b"algo=deflate").prio_max == 4
    assert d.parse_recompress(b"priority=1").prio_max == 2
    assert errno_of(d.parse_recompress, b"threshold=4096") == errno.EINVAL
    assert errno_of(d.parse_recompress, b"type=") == errno.EINVAL
    assert errno_of(d.parse_recompress, b"type=cold") == errno.EINVAL
    assert errno_of(d.parse_recompress, b"algo=lz4hc") == errno.EINVAL
    assert errno_of(d.parse_recompress, b"max_pages=-1") == errno.EINVAL


def test_our_control_files() -> None:
    table, _ = device_with_backing()
    d = table.hot_add()
    assert d.read_attr("auto_writeback") == b"0\n"
    d.write_attr("mem_limit", b"1M")
    assert d.read_attr("auto_writeback") == b"0\n"  # no backing store yet
    d.write_attr("backing_dev", b"/dev/fake")
    assert d.read_attr("auto_writeback") == b"90\n"  # both set: the default mark
    d.write_attr("auto_writeback", b"0")
    assert d.read_attr("auto_writeback") == b"0\n"  # written explicitly
    for bad in (b"101", b"-1", b"x", b""):
        assert errno_of(d.write_attr, "auto_writeback", bad) == errno.EINVAL
    assert d.read_attr("auto_compact") == b"25\n"
    assert errno_of(d.write_attr, "auto_compact", b"200") == errno.EINVAL
    for name in ("policy_interval", "recompress_after", "writeback_after"):
        assert d.read_attr(name) == b"0\n"
        d.write_attr(name, b"30\n")
        assert d.read_attr(name) == b"30\n"
        assert errno_of(d.write_attr, name, b"soon") == errno.EINVAL
    assert d.read_attr("writeback_limit_enable") == b"0\n"
    d.write_attr("writeback_limit", b"100")
    d.write_attr("writeback_limit_enable", b"1")
    d.write_attr("disksize", b"1M")
    assert d.store is not None and d.store.writeback_limit == 100
    assert d.read_attr("bd_stat") == b"       0        0        0\n"
    stats = d.statistics()
    assert stats.backing_dev == "/dev/fake" and stats.auto_writeback == 0
    d.reset()
    assert d.read_attr("backing_dev") == b"none\n"  # reset lets go of the backing store


def test_recompress_params_feed_the_policy() -> None:
    table, _ = device_with_backing()
    d = table.hot_add()
    assert d.read_attr("recompress_params") == b"\n"
    assert d.policy_recompress() is None  # not initialised, no algorithm
    d.write_attr("recomp_algorithm", b"algo=zstd")
    d.write_attr("disksize", b"1M")
    r = d.policy_recompress()
    assert r is not None and (r.mode, r.max_pages, r.prio, r.prio_max) == (0, None, 1, 2)
    assert errno_of(d.write_attr, "recompress_params", b"type=cold") == errno.EINVAL
    assert errno_of(d.write_attr, "recompress_params", b"threshold=5000") == errno.EINVAL
    d.write_attr("recompress_params", b"type=idle max_pages=10\n")
    assert d.read_attr("recompress_params") == b"type=idle max_pages=10\n"
    r = d.policy_recompress()
    assert r is not None and (r.mode, r.max_pages, r.prio, r.prio_max) == (WB_IDLE, 10, 1, 2)


def test_file_backing_runs_and_holes(tmp_path: os.PathLike[str]) -> None:
    from zramfs.backing import FileBacking

    path = os.path.join(tmp_path, "backing.img")
    with open(path, "wb") as f:
        f.truncate(64 * PAGE)
    b = FileBacking(path)
    try:
        assert b.nblocks == 64
        blocks = [7, 3, 4, 5, 20, 8]  # runs 3-5, 7-8 and 20, given out of order
        data = [bytes([i + 1]) * (100 + 500 * i) for i in range(len(blocks))]
        assert b.write_blocks(blocks, data) == set()
        got = b.read_blocks(blocks + [63])
        for k, blk in enumerate(blocks):
            d = got[k]
            assert isinstance(d, bytes) and d[: len(data[k])] == data[k]
            assert d[len(data[k]) :] == bytes(PAGE - len(data[k]))
            assert b.read_block(blk)[: len(data[k])] == data[k]
        assert got[-1] == bytes(PAGE)
        before = os.stat(path).st_blocks
        b.discard_blocks([3, 4, 5, 7, 8, 20])
        assert os.stat(path).st_blocks < before
        assert b.read_block(4) == bytes(PAGE)
        os.truncate(path, 10 * PAGE)  # blocks past the end now read short: an error each
        late = b.read_blocks([9, 20])
        assert isinstance(late[0], bytes) and isinstance(late[1], OSError)
        assert late[1].errno == errno.EIO
    finally:
        b.close()
