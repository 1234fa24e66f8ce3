"""PageStore: contents against a bytearray oracle, mm_stat/io_stat semantics, mem_limit,
idle marks, the prepare/commit and fetch/finish batch API, and memory bounds."""

from __future__ import annotations

import errno
import gc
import os
import random
import threading
import tracemalloc
from collections.abc import Callable
from typing import TYPE_CHECKING

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

from zramfs.codecs import ALGORITHMS, Codec, DecompressError, make_codec
from zramfs.pagestore import (
    CHUNK_PAGES,
    FLAG_HUGE,
    FLAG_IDLE,
    FLAG_SAME,
    FLAG_STORED,
    PAGE_SIZE,
    MemLimitExceeded,
    OutOfRange,
    PageCorrupt,
    PageStore,
    StoreStatistics,
)
from zramfs.zsmalloc import HUGE_CLASS_SIZE

if TYPE_CHECKING:
    from typing_extensions import Buffer

PAGE = PAGE_SIZE
MiB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def text_bytes(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"zram", b"block", b"device", b"compressed", b"page", b"swap", b"\n", b"0123"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def store(pages: int = 64, algo: str = "lz4", **kw: object) -> PageStore:
    return PageStore(pages * PAGE, make_codec(algo), **kw)  # type: ignore[arg-type]


def is_same_filled(page: bytes) -> bool:
    return page == page[:8] * (PAGE // 8)


def snapshot(s: PageStore) -> tuple[StoreStatistics, bytes]:
    return s.statistics(), b"".join(s._page(i) for i in range(s.disksize // PAGE))


# -- basics ---------------------------------------------------------------------------------------


def test_unwritten_device_reads_zeros() -> None:
    s = store()
    assert s.read(0, 64 * PAGE) == bytes(64 * PAGE)
    assert s.read(12345, 777) == bytes(777)
    assert s.read(64 * PAGE, 0) == b""
    st_ = s.statistics()
    assert st_.pages_stored == st_.orig_data_size == st_.mem_used_total == 0
    assert st_.reads == 64 + 1  # pages: the 777-byte read sits inside one page


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_round_trip_at_odd_offsets(algo: str) -> None:
    s = store(algo=algo)
    oracle = bytearray(64 * PAGE)
    rng = random.Random(1)
    for i in range(40):
        n = rng.randrange(1, 3 * PAGE)
        off = rng.randrange(0, 64 * PAGE - n)
        data = text_bytes(n, i) if i % 3 else noise(n, i)
        s.write(off, data)
        oracle[off : off + n] = data
        a = rng.randrange(0, 64 * PAGE)
        b = rng.randrange(a, 64 * PAGE + 1)
        assert s.read(a, b - a) == oracle[a:b]
    assert s.read(0, len(oracle)) == oracle


def test_write_accepts_buffers() -> None:
    s = store()
    data = text_bytes(3 * PAGE, 2)
    s.write(0, bytearray(data))
    s.write(3 * PAGE, memoryview(data))
    s.write(6 * PAGE, memoryview(b"ab" + data)[2:])
    import array

    s.write(9 * PAGE, array.array("Q", data))  # a multi-byte format is cast to bytes
    assert s.read(0, 12 * PAGE) == data * 4


def test_overwrite_does_not_count_twice() -> None:
    s = store()
    s.write(0, text_bytes(4 * PAGE, 1))
    s.write(0, text_bytes(4 * PAGE, 2))
    st_ = s.statistics()
    assert st_.pages_stored == 4 and st_.orig_data_size == 4 * PAGE
    assert st_.writes == 8


# -- same-filled and huge pages -------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("pages", [1, 8])  # the per-page and the vectorised check
def test_same_filled_pages_store_no_data(algo: str, pages: int) -> None:
    s = store(algo=algo)
    word = b"\x01\x02\x03\x04\x05\x06\x07\x08" * (PAGE // 8)
    zero = bytes(PAGE)
    fill = b"\xab" * PAGE
    s.write(0, word * pages)
    s.write(16 * PAGE, zero * pages)
    s.write(32 * PAGE, fill * pages)
    st_ = s.statistics()
    assert st_.same_pages == 3 * pages
    assert st_.pages_stored == 3 * pages
    assert st_.orig_data_size == 3 * pages * PAGE
    assert st_.compr_data_size == 0
    assert st_.mem_used_total == 0
    assert s.page_flags(0) == FLAG_STORED | FLAG_SAME
    assert s.read(0, pages * PAGE) == word * pages
    assert s.read(16 * PAGE, pages * PAGE) == zero * pages
    assert s.read(32 * PAGE, pages * PAGE) == fill * pages
    # A page that is almost same-filled is not.
    almost = bytearray(word)
    almost[PAGE - 1] ^= 1
    s.write(48 * PAGE, bytes(almost))
    assert s.statistics().same_pages == 3 * pages
    assert s.page_flags(48) == FLAG_STORED
    # Real data replaces a same-filled page.
    s.write(0, text_bytes(PAGE, 3))
    assert s.statistics().same_pages == 3 * pages - 1
    assert s.statistics().compr_data_size > 0


def test_same_fill_in_a_mixed_batch() -> None:
    s = store()
    word = os.urandom(8) * (PAGE // 8)
    pages = [text_bytes(PAGE, 1), word, noise(PAGE, 2), bytes(PAGE), word, text_bytes(PAGE, 5)]
    s.write(PAGE, b"".join(pages))
    assert s.statistics().same_pages == 3
    assert [s.page_flags(1 + i) & FLAG_SAME for i in range(6)] == [0, 1, 0, 1, 1, 0]
    assert s.read(PAGE, 6 * PAGE) == b"".join(pages)


@pytest.mark.parametrize("level", [-7, -3, 1])
def test_same_fill_is_found_whatever_the_codec_makes_of_it(level: int) -> None:
    # Fast zstd levels compress a repeated random word to hundreds of bytes, so a
    # "compress first, check short outputs" shortcut would miss these pages.
    s = PageStore(64 * PAGE, make_codec("zstd", level=level))
    word = bytes.fromhex("8f3a5c7e19d2b406") * (PAGE // 8)
    s.write(0, word)
    s.write(PAGE, word * 8)
    assert s.statistics().same_pages == 9
    assert s.statistics().mem_used_total == 0


def test_vectorised_same_fill_on_an_unaligned_buffer() -> None:
    s = store()
    word = b"\x11\x22\x33\x44\x55\x66\x77\x88" * (PAGE // 8)
    pages = [word, text_bytes(PAGE, 1), bytes(PAGE), word, noise(PAGE, 3), word, word, word]
    data = b"".join(pages)
    s.write(0, memoryview(b"abc" + data)[3:])
    assert s.statistics().same_pages == 6
    assert s.read(0, len(data)) == data


def test_partial_write_can_make_a_page_same_filled() -> None:
    s = store()
    s.write(0, text_bytes(PAGE))
    s.write(0, bytes(PAGE - 100))
    assert s.statistics().same_pages == 0
    s.write(PAGE - 100, bytes(100))
    assert s.statistics().same_pages == 1
    assert s.statistics().compr_data_size == 0


def test_incompressible_pages_are_huge() -> None:
    s = store()
    data = os.urandom(8 * PAGE)
    s.write(16 * PAGE, data)
    st_ = s.statistics()
    assert (st_.huge_pages, st_.huge_pages_since) == (8, 8)
    assert st_.compr_data_size == 8 * PAGE
    assert st_.mem_used_total == 8 * PAGE  # one pool page each
    assert s.page_flags(16) == FLAG_STORED | FLAG_HUGE
    assert s.read(16 * PAGE, len(data)) == data
    s.write(16 * PAGE, text_bytes(4 * PAGE))
    st_ = s.statistics()
    assert (st_.huge_pages, st_.huge_pages_since) == (4, 8)
    s.discard(16 * PAGE, 8 * PAGE)
    st_ = s.statistics()
    assert (st_.huge_pages, st_.huge_pages_since) == (0, 8)  # "since" only grows
    assert st_.orig_data_size == st_.compr_data_size == 0


def test_huge_threshold_is_the_pool_s() -> None:
    class Fixed(Codec):
        """Compresses every page to a block of a chosen size (stores it raw after it)."""

        def __init__(self) -> None:
            super().__init__("lz4", None, None)
            self.size = 100

        def compress(self, data: Buffer) -> bytes:
            raw = bytes(data)
            return self.size.to_bytes(2, "little") + raw[: self.size - 2]

        def decompress(self, data: Buffer, size: int = PAGE) -> bytes:
            raise AssertionError("not reached in this test")

    codec = Fixed()
    s = PageStore(8 * PAGE, codec)
    page = noise(PAGE, 9)
    codec.size = HUGE_CLASS_SIZE - 1
    s.write(0, page)
    codec.size = HUGE_CLASS_SIZE
    s.write(PAGE, page)
    assert s.page_flags(0) == FLAG_STORED
    assert s.page_flags(1) == FLAG_STORED | FLAG_HUGE
    assert s.statistics().compr_data_size == HUGE_CLASS_SIZE - 1 + PAGE


# -- range checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, 10), (-PAGE, PAGE), (0, 64 * PAGE + 1), (64 * PAGE, 1), (63 * PAGE + 1, PAGE), (0, -1)],
)
def test_out_of_range_changes_nothing(offset: int, length: int) -> None:
    s = store()
    s.write(0, text_bytes(8 * PAGE, 4))
    before = snapshot(s)
    calls: list[Callable[[], object]] = [
        lambda: s.read(offset, length),
        lambda: s.fetch(offset, length),
        lambda: s.discard(offset, length),
    ]
    if length >= 0:
        calls += [
            lambda: s.write(offset, b"x" * length),
            lambda: s.prepare_write(offset, b"x" * length),
        ]
    for call in calls:
        with pytest.raises(OutOfRange):
            call()
    assert snapshot(s) == before
    assert issubclass(OutOfRange, ValueError)


def test_bad_disksize() -> None:
    for size in (0, -PAGE, PAGE + 1):
        with pytest.raises(ValueError):
            PageStore(size, make_codec("lz4"))


# -- mem_limit ------------------------------------------------------------------------------------


def test_mem_limit_failure_keeps_old_data_and_counts() -> None:
    # (56 pages: room for the text below, whose pool layout depends on the exact lz4
    # output, plus a few huge pages of the failing write)
    s = store(256, mem_limit=56 * PAGE)
    old = text_bytes(64 * PAGE, 7)
    s.write(0, old)
    used_before = s.statistics().mem_used_total
    assert used_before <= 56 * PAGE
    new = noise(64 * PAGE, 8)  # huge pages: one pool page each
    with pytest.raises(MemLimitExceeded) as info:
        s.write(PAGE // 2, new)  # a partial head page first
    exc = info.value
    assert exc.errno == errno.ENOMEM and isinstance(exc, OSError)
    written = exc.written
    assert 0 < written < len(new) and (PAGE // 2 + written) % PAGE == 0
    expect = bytearray(old + bytes(192 * PAGE))
    expect[PAGE // 2 : PAGE // 2 + written] = new[:written]
    assert s.read(0, 256 * PAGE) == expect
    st_ = s.statistics()
    assert st_.failed_writes == 1
    assert st_.mem_used_total <= 56 * PAGE
    assert st_.mem_limit == 56 * PAGE
    # Raising the limit lets the same write go through.
    s.mem_limit = 0
    s.write(PAGE // 2, new)
    expect[PAGE // 2 : PAGE // 2 + len(new)] = new
    assert s.read(0, 256 * PAGE) == expect
    assert s.statistics().failed_writes == 1


def test_mem_limit_allocates_before_freeing() -> None:
    # The pool is exactly at the limit with huge pages (a page each); rewriting one of them
    # needs a new page before the old one is freed, so it fails, as in the kernel.
    s = store(16, mem_limit=4 * PAGE)
    old = noise(4 * PAGE, 1)
    s.write(0, old)
    assert s.statistics().mem_used_total == 4 * PAGE
    with pytest.raises(MemLimitExceeded) as info:
        s.write(0, noise(PAGE, 2))
    assert info.value.written == 0
    assert s.read(0, 4 * PAGE) == old
    st_ = s.statistics()
    # mem_used_max saw the transient extra page, as the kernel's update_used_max() does.
    assert st_.mem_used_max == 5 * PAGE and st_.mem_used_total == 4 * PAGE
    # Same-filled pages need no memory and always succeed.
    s.write(0, bytes(PAGE))
    assert s.statistics().same_pages == 1


def test_mem_limit_is_page_rounded_and_settable() -> None:
    s = store()
    s.mem_limit = 1
    assert s.mem_limit == PAGE
    s.mem_limit = 0
    assert s.mem_limit == 0
    with pytest.raises(ValueError):
        s.mem_limit = -1


def test_mem_used_max_and_reset() -> None:
    s = store()
    s.write(0, noise(8 * PAGE))
    s.discard(0, 8 * PAGE)
    st_ = s.statistics()
    assert st_.mem_used_total == 0 and st_.mem_used_max == 8 * PAGE
    s.reset_mem_used_max()
    assert s.statistics().mem_used_max == 0


# -- discard --------------------------------------------------------------------------------------


def test_discard_frees_whole_pages_and_zeroes_edges() -> None:
    s = store()
    data = text_bytes(10 * PAGE, 3)
    s.write(0, data)
    s.discard(PAGE + 100, 5 * PAGE)  # pages 2..5 whole, partial 1 and 6
    expect = bytearray(data)
    expect[PAGE + 100 : 6 * PAGE + 100] = bytes(5 * PAGE)
    assert s.read(0, 10 * PAGE) == expect
    st_ = s.statistics()
    assert st_.notify_free == 4
    assert st_.pages_stored == 6
    assert [s.page_flags(i) != 0 for i in range(10)] == [True] * 2 + [False] * 4 + [True] * 4


def test_discard_counts_every_whole_page_like_the_kernel() -> None:
    s = store()
    s.write(0, text_bytes(PAGE))
    s.discard(0, 64 * PAGE)
    st_ = s.statistics()
    assert st_.notify_free == 64 and st_.pages_stored == 0
    s.discard(10, 100)  # inside one unwritten page: nothing freed, nothing counted
    assert s.statistics().notify_free == 64


def test_discard_empties_chunks() -> None:
    s = PageStore(4 * CHUNK_PAGES * PAGE, make_codec("lz4"))
    s.write(CHUNK_PAGES * PAGE, text_bytes(2 * CHUNK_PAGES * PAGE))
    assert len(s._chunks) == 2
    s.discard(0, 4 * CHUNK_PAGES * PAGE)
    assert len(s._chunks) == 0
    assert s.statistics().mem_used_total == 0


def test_discard_ignores_mem_limit_on_edges() -> None:
    s = store(mem_limit=2 * PAGE)
    s.write(0, noise(2 * PAGE))
    s.discard(100, 10)
    assert s.read(100, 10) == bytes(10)


# -- idle -----------------------------------------------------------------------------------------


def test_idle_all_and_access_clears() -> None:
    s = store()
    s.write(0, text_bytes(4 * PAGE))
    s.write(4 * PAGE, bytes(2 * PAGE))  # same-filled: never idle (mainline zram)
    assert s.mark_idle() == 4
    st_ = s.statistics()
    assert st_.idle_pages == 4
    assert s.page_flags(0) & FLAG_IDLE and not s.page_flags(4) & FLAG_IDLE
    s.read(100, 10)
    s.write(PAGE, b"x")
    assert s.statistics().idle_pages == 2
    assert not s.page_flags(0) & FLAG_IDLE and not s.page_flags(1) & FLAG_IDLE
    s.discard(2 * PAGE, PAGE)
    assert s.statistics().idle_pages == 1


def test_idle_with_age() -> None:
    clock = FakeClock()
    s = store(clock=clock)
    s.write(0, text_bytes(PAGE, 1))
    clock.t += 100
    s.write(PAGE, text_bytes(PAGE, 2))
    clock.t += 50
    s.write(2 * PAGE, text_bytes(PAGE, 3))
    assert s.mark_idle(120) == 1  # page 0 (150 s) only
    assert s.mark_idle(50) == 2  # pages 0 and 1
    assert s.mark_idle(0) == 3
    assert s.mark_idle(60) == 1  # a stricter age clears the marks it does not match
    assert [bool(s.page_flags(i) & FLAG_IDLE) for i in range(3)] == [True, False, False]
    assert s.statistics().idle_pages == 1
    clock.t += 1000
    s.read(0, PAGE)
    assert s.mark_idle(500) == 2


# -- batch API ------------------------------------------------------------------------------------


def test_prepare_then_commit_merges_edges_with_current_contents() -> None:
    s = store()
    base = text_bytes(4 * PAGE, 1)
    s.write(0, base)
    prepared = s.prepare_write(PAGE + 10, b"A" * (2 * PAGE))  # edges on pages 1 and 3
    s.write(PAGE, b"B" * 10)  # lands on page 1 before the prepared write commits
    s.write(3 * PAGE + 10, b"C" * 10)
    s.commit_write(prepared)
    expect = bytearray(base)
    expect[PAGE : PAGE + 10] = b"B" * 10
    expect[3 * PAGE + 10 : 3 * PAGE + 20] = b"C" * 10
    expect[PAGE + 10 : 3 * PAGE + 10] = b"A" * (2 * PAGE)
    assert s.read(0, 4 * PAGE) == expect


def test_fetch_is_a_snapshot() -> None:
    s = store()
    old = text_bytes(8 * PAGE, 1)
    s.write(0, old)
    pending = s.fetch(100, 6 * PAGE)
    s.write(0, noise(8 * PAGE))
    s.discard(0, 8 * PAGE)
    s.compact()
    assert s.finish_read(pending) == old[100 : 100 + 6 * PAGE]


def test_prepare_and_finish_run_on_threads() -> None:
    s = store(512, algo="zstd")
    blocks = [text_bytes(64 * PAGE, i) if i % 2 else noise(64 * PAGE, i) for i in range(8)]
    prepared: list[object] = [None] * 8
    errors: list[BaseException] = []

    def prep(i: int) -> None:
        try:
            prepared[i] = s.prepare_write(i * 64 * PAGE, blocks[i])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=prep, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in prepared:
        s.commit_write(p)  # type: ignore[arg-type]
    pendings = [s.fetch(i * 64 * PAGE, 64 * PAGE) for i in range(8)]
    results: list[bytes] = [b""] * 8

    def finish(i: int) -> None:
        results[i] = s.finish_read(pendings[i])

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == blocks


def test_prepared_write_belongs_to_its_store() -> None:
    a, b = store(), store()
    with pytest.raises(ValueError):
        b.commit_write(a.prepare_write(0, b"x"))


# -- failures, compaction, close ------------------------------------------------------------------


class Flaky(Codec):
    """lz4 whose decompress can be told to fail."""

    def __init__(self) -> None:
        super().__init__("lz4", None, None)
        self.inner = make_codec("lz4")
        self.fail = False

    def compress(self, data: Buffer) -> bytes:
        return self.inner.compress(data)

    def decompress(self, data: Buffer, size: int = PAGE) -> bytes:
        if self.fail:
            raise DecompressError("lz4: injected")
        return self.inner.decompress(data, size)


def test_corrupt_page_fails_the_read_and_counts() -> None:
    codec = Flaky()
    s = PageStore(16 * PAGE, codec)
    s.write(0, text_bytes(4 * PAGE))
    codec.fail = True
    with pytest.raises(PageCorrupt) as info:
        s.read(PAGE, 100)
    assert info.value.errno == errno.EIO and info.value.index == 1
    assert s.statistics().failed_reads == 1
    with pytest.raises(PageCorrupt):
        s.write(PAGE + 5, b"x")  # a partial write needs the old page
    assert s.statistics().failed_writes == 1
    s.write(PAGE, bytes(PAGE))  # whole pages do not
    codec.fail = False
    assert s.read(PAGE, PAGE) == bytes(PAGE)


def test_compaction_frees_pages_and_keeps_data() -> None:
    s = store(1024)
    data = b"".join(
        text_bytes(PAGE, i)[: 700 + (i % 7) * 300] + noise(PAGE)[: PAGE - 700 - (i % 7) * 300]
        for i in range(1024)
    )
    s.write(0, data)
    for i in range(0, 1024, 2):
        s.discard(i * PAGE, PAGE)
    expect = bytearray(data)
    for i in range(0, 1024, 2):
        expect[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
    before = s.statistics().mem_used_total
    freed = s.compact()
    st_ = s.statistics()
    assert freed > 0 and st_.pages_compacted == freed
    assert st_.mem_used_total == before - freed * PAGE
    assert s.read(0, 1024 * PAGE) == expect


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("how", ["close", "drop"])
def test_close_or_drop_releases_pool_memory(how: str) -> None:
    data = os.urandom(64 * MiB)  # huge pages: 64 MiB of pool
    gc.collect()
    base = _rss()
    s = PageStore(64 * MiB, make_codec("lz4"))
    for off in range(0, len(data), MiB):
        s.write(off, memoryview(data)[off : off + MiB])
    assert _rss() - base > 60 * MiB
    if how == "close":
        s.close()
        with pytest.raises(ValueError):
            s.read(0, 1)
    else:
        del s
    gc.collect()
    assert _rss() - base < 8 * MiB


# -- memory bounds --------------------------------------------------------------------------------


def test_empty_terabyte_device_is_cheap() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        s = PageStore(1 << 40, make_codec("lz4"))
        assert s.read((1 << 40) - PAGE, PAGE) == bytes(PAGE)
        assert s.read(0, MiB) == bytes(MiB)
        s.mark_idle()
        s.statistics()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 32 * MiB and peak < 32 * MiB
    assert current < 1 * MiB  # in fact the directory is sparse: almost nothing
    s.write((1 << 40) - PAGE, text_bytes(PAGE))
    assert s.read((1 << 40) - PAGE, PAGE) == text_bytes(PAGE)
    assert len(s._chunks) == 1


def test_page_table_costs_at_most_16_bytes_a_page() -> None:
    pages = 64 * CHUNK_PAGES
    s = PageStore(pages * PAGE, make_codec("lz4"))
    data = b"\x07" * (pages * PAGE)  # same-filled: no pool objects, only the table
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for off in range(0, len(data), MiB):
            s.write(off, memoryview(data)[off : off + MiB])
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.statistics().same_pages == pages
    per_page = (after - before) / pages
    assert per_page <= 16, per_page


# -- the model-based test -------------------------------------------------------------------------

NPAGES = 64
SIZE = NPAGES * PAGE


def _word_fill(word: bytes, n: int) -> bytes:
    return (word * (n // 8 + 1))[:n]


pieces = st.one_of(
    st.builds(noise, st.integers(0, 2 * PAGE), st.integers(0, 1000)),
    st.builds(text_bytes, st.integers(0, 3 * PAGE), st.integers(0, 1000)),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 3 * PAGE), st.integers(0, 255)),
    st.builds(_word_fill, st.binary(min_size=8, max_size=8), st.integers(0, 3 * PAGE)),
)
payloads = st.lists(pieces, min_size=1, max_size=3).map(b"".join)
offsets = st.one_of(
    st.integers(0, NPAGES).map(lambda p: p * PAGE),
    st.integers(0, SIZE),
)


class StoreMachine(RuleBasedStateMachine):
    """Random writes, reads and discards against a bytearray, with compaction, idle marks,
    clock steps and mem_limit changes in between."""

    @initialize(algo=st.sampled_from(ALGORITHMS))
    def setup(self, algo: str) -> None:
        self.clock = FakeClock()
        self.store = PageStore(SIZE, make_codec(algo), clock=self.clock)
        self.oracle = bytearray(SIZE)
        self.stored = [False] * NPAGES
        self.atime = [0] * NPAGES
        self.idle = [False] * NPAGES
        self.failed_writes = 0
        self.notify_free = 0

    def now(self) -> int:
        return int(self.clock.t - 1000.0)

    def touch(self, first: int, stop: int) -> None:
        for i in range(first, stop):
            self.stored[i] = True
            self.atime[i] = self.now()
            self.idle[i] = False

    def _apply_write(self, offset: int, data: bytes, commit: Callable[[], None]) -> None:
        """Run one store write and mirror what it stored (all of it, or up to the limit)."""
        try:
            commit()
            n = len(data)
        except MemLimitExceeded as exc:
            n = exc.written
            self.failed_writes += 1
        self.oracle[offset : offset + n] = data[:n]
        if n:
            self.touch(offset // PAGE, -(-(offset + n) // PAGE))

    @rule(offset=offsets, data=payloads)
    def write(self, offset: int, data: bytes) -> None:
        data = data[: SIZE - offset]
        self._apply_write(offset, data, lambda: self.store.write(offset, data))

    @rule(offset=offsets, data=payloads)
    def write_in_two_steps(self, offset: int, data: bytes) -> None:
        data = data[: SIZE - offset]
        prepared = self.store.prepare_write(offset, data)
        self._apply_write(offset, data, lambda: self.store.commit_write(prepared))

    @rule(offset=offsets, length=st.integers(0, 5 * PAGE))
    def read(self, offset: int, length: int) -> None:
        length = min(length, SIZE - offset)
        assert self.store.read(offset, length) == self.oracle[offset : offset + length]
        if length:
            for i in range(offset // PAGE, -(-(offset + length) // PAGE)):
                if self.stored[i]:
                    self.atime[i] = self.now()
                    self.idle[i] = False

    @precondition(lambda self: any(self.idle))
    @rule(data=st.data(), write=st.booleans())
    def touch_an_idle_page(self, data: st.DataObject, write: bool) -> None:
        i = data.draw(st.sampled_from([i for i in range(NPAGES) if self.idle[i]]))
        at = data.draw(st.integers(0, PAGE - 1))
        if write:
            try:
                self.store.write(i * PAGE + at, b"\x5a")
            except MemLimitExceeded as exc:
                assert exc.written == 0
                self.failed_writes += 1
                return
            self.oracle[i * PAGE + at] = 0x5A
            self.touch(i, i + 1)
        else:
            assert (
                self.store.read(i * PAGE + at, 1) == self.oracle[i * PAGE + at : i * PAGE + at + 1]
            )
            self.atime[i] = self.now()
            self.idle[i] = False

    @rule(offset=offsets, length=st.integers(0, 5 * PAGE), extra=st.integers(1, PAGE))
    def out_of_range(self, offset: int, length: int, extra: int) -> None:
        length = SIZE - offset + extra
        before = snapshot(self.store)
        with pytest.raises(OutOfRange):
            self.store.write(offset, bytes(length))
        with pytest.raises(OutOfRange):
            self.store.read(offset, length)
        with pytest.raises(OutOfRange):
            self.store.discard(offset, length)
        assert snapshot(self.store) == before

    @rule(offset=offsets, length=st.integers(0, 8 * PAGE))
    def discard(self, offset: int, length: int) -> None:
        length = min(length, SIZE - offset)
        self.store.discard(offset, length)
        if not length:
            return
        end = offset + length
        first, stop = -(-offset // PAGE), end // PAGE
        for i in range(first, stop):
            self.stored[i] = False
            self.idle[i] = False
        self.notify_free += max(0, stop - first)
        edges = []
        if offset % PAGE:
            edges.append(offset // PAGE)
        if end % PAGE and stop >= first:
            edges.append(stop)
        self.oracle[offset:end] = bytes(length)
        for i in edges:
            if self.stored[i]:
                self.touch(i, i + 1)

    @rule()
    def compact(self) -> None:
        self.store.compact()

    @rule(seconds=st.integers(0, 30))
    def tick(self, seconds: int) -> None:
        self.clock.t += seconds

    @rule(age=st.one_of(st.none(), st.integers(0, 40)))
    def mark_idle(self, age: int | None) -> None:
        count = self.store.mark_idle(age)
        now = self.now()
        for i in range(NPAGES):
            page = bytes(self.oracle[i * PAGE : (i + 1) * PAGE])
            if self.stored[i] and not is_same_filled(page):
                self.idle[i] = age is None or now - self.atime[i] >= age
        assert count == sum(self.idle)

    @rule(pages=st.one_of(st.just(0), st.integers(1, 40)))
    def set_mem_limit(self, pages: int) -> None:
        self.store.mem_limit = pages * PAGE

    @rule()
    def reset_max(self) -> None:
        self.store.reset_mem_used_max()
        st_ = self.store.statistics()
        assert st_.mem_used_max == st_.mem_used_total

    @precondition(lambda self: hasattr(self, "store"))
    @invariant()
    def contents_match(self) -> None:
        # _page() reads without access bookkeeping, so the idle model stays exact.
        for i in range(NPAGES):
            assert self.store._page(i) == self.oracle[i * PAGE : (i + 1) * PAGE], i

    @precondition(lambda self: hasattr(self, "store"))
    @invariant()
    def statistics_agree(self) -> None:
        s = self.store
        st_ = s.statistics()
        stored = sum(self.stored)
        assert st_.pages_stored == stored
        assert st_.orig_data_size == stored * PAGE
        same = 0
        huge = 0
        compr = 0
        for i in range(NPAGES):
            f = s.page_flags(i)
            assert bool(f & FLAG_STORED) == self.stored[i], i
            if not self.stored[i]:
                assert f == 0
                continue
            page = bytes(self.oracle[i * PAGE : (i + 1) * PAGE])
            assert bool(f & FLAG_SAME) == is_same_filled(page), i
            assert bool(f & FLAG_IDLE) == self.idle[i], i
            if f & FLAG_SAME:
                same += 1
                continue
            handle = s._chunks[i // CHUNK_PAGES].vals[i % CHUNK_PAGES]
            size = s._pool.size_of(handle)
            compr += size
            if f & FLAG_HUGE:
                huge += 1
                assert size == PAGE
            else:
                assert size < HUGE_CLASS_SIZE
        assert st_.same_pages == same
        assert st_.huge_pages == huge <= st_.huge_pages_since
        assert st_.compr_data_size == compr
        assert st_.mem_used_total == s._pool.total_pages * PAGE
        assert st_.mem_used_max >= st_.mem_used_total
        assert st_.idle_pages == sum(self.idle)
        assert st_.failed_writes == self.failed_writes
        assert st_.notify_free == self.notify_free
        assert st_.invalid_io == st_.failed_reads == 0
        assert st_.mem_limit == s.mem_limit
        assert st_.pages_compacted == st_.pool.pages_compacted


StoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStoreMachine = StoreMachine.TestCase


def test_cheap_figures_match_statistics() -> None:
    """pages_stored and mem_used_total (what getattr and statfs read) agree with
    statistics() as data comes and goes."""
    store = PageStore(64 * PAGE, make_codec("lz4"))
    rnd = random.Random(7)
    for _ in range(50):
        off = rnd.randrange(0, 60) * PAGE
        if rnd.random() < 0.3:
            store.discard(off, rnd.randrange(1, 4) * PAGE)
        else:
            store.write(off, rnd.randbytes(rnd.randrange(1, 3 * PAGE)))
        s = store.statistics()
        assert store.pages_stored == s.pages_stored
        assert store.mem_used_total == s.mem_used_total
    assert store.pages_stored > 0 and store.mem_used_total > 0
