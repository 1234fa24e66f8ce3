"""PageStore: one zram device's pages, compressed into a zsmalloc pool, with the kernel's
accounting.

The device is an array of 4 KiB pages behind a two-level page table: a dict maps a chunk
number to a chunk of 512 slots, created on the first write into it and dropped when a
discard empties it, so an unwritten device of any size costs nothing and a written page
costs 13 bytes of table (a uint64 handle or same-fill word, a uint8 flags byte, a uint32
last-access second) in flat arrays, with no Python object per page. Writes compress whole
pages; a page whose 8-byte words are all equal (zero included) stores only that word (SAME),
and a page that compresses to zsmalloc.HUGE_CLASS_SIZE bytes or more is stored raw (HUGE),
as drivers/block/zram/zram_drv.c does. Any byte offset and length work: partial pages are
read-modify-written, unwritten pages read as zeros, and an I/O past the disk size raises
OutOfRange before anything changes. mem_limit and the peak (mem_used_max) are kept here, as
zram_write_page does (allocate, compare the pool's pages to the limit, free the new object
and fail with MemLimitExceeded (ENOMEM) when it is over, leaving that page and the later
ones of the call untouched), except that the pool says beforehand how many pages an
allocation would add, so a refusal allocates and frees nothing. The counters are those of
mm_stat, io_stat and bd_stat with the kernel's semantics. The writeback tier lives in the
same table: a written-back page (WB) holds the number of its block on a backing store and
the size of the object written there; which pages go is chosen here (select_writeback,
cold_pages) and the move is two steps around the I/O, begin_writeback (snapshot the objects,
allocate blocks, mark the slots PP) and end_writeback (switch a slot to WB only if it is
still marked, so a page overwritten or discarded meanwhile keeps its newest data).
Recompression with secondary algorithms (recompress) replaces an object only by a smaller
one, else flags it incompressible. For the FUSE mount the work is split so that compression,
decompression and backing I/O can run on worker threads (prepare_write, finish_read: CPU
only, thread-safe, no state touched; fetch lists the blocks a read needs, fill_backing takes
them) while the page table and the pool are only touched by one owner thread (commit_write,
fetch, discard and the rest, which never block; the one exception is read_block, a callable
the shell attaches for the rare read-modify-write of part of a written-back page).
"""

from __future__ import annotations

import errno
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .blockmap import BlockMap
from .codecs import BatchDecompressError, Codec, DecompressError
from .zsmalloc import HUGE_CLASS_SIZE, PoolStatistics, ZsPool, size_class

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = [
    "CHUNK_PAGES",
    "FLAG_HUGE",
    "FLAG_IDLE",
    "FLAG_INCOMPRESSIBLE",
    "FLAG_PP",
    "FLAG_RECOMPRESSED",
    "FLAG_SAME",
    "FLAG_STORED",
    "FLAG_WB",
    "PAGE_SIZE",
    "MAX_PRIORITY",
    "WB_HUGE",
    "WB_IDLE",
    "WB_INCOMPRESSIBLE",
    "BackingReadError",
    "MemLimitExceeded",
    "OutOfRange",
    "PageCorrupt",
    "PageStore",
    "PendingRead",
    "PreparedWrite",
    "StoreStatistics",
    "WritebackBatch",
]

PAGE_SIZE = 4096
_PAGE_SHIFT = 12
_PAGE_MASK = PAGE_SIZE - 1
_CHUNK_SHIFT = 9
CHUNK_PAGES = 1 << _CHUNK_SHIFT  # 512 pages (2 MiB of device) per page-table chunk
_CHUNK_MASK = CHUNK_PAGES - 1

# Per-page flags (one byte). STORED marks an allocated slot.
FLAG_SAME = 0x01  # the value is the fill word; no pool object
FLAG_HUGE = 0x02  # the pool object is the raw 4096-byte page
FLAG_IDLE = 0x04  # marked by mark_idle(), cleared by any access
FLAG_WB = 0x08  # on the backing store: value = block << _WB_SHIFT | object size
FLAG_RECOMPRESSED = 0x10  # compressed with a secondary algorithm (its priority: _prio)
FLAG_INCOMPRESSIBLE = 0x20  # recompression found nothing smaller: skipped next time
FLAG_PP = 0x40  # under post-processing: a writeback is in flight (any rewrite clears it)
FLAG_STORED = 0x80
_WB_SHIFT = 13  # a WB value keeps the object size (1..4096) in its low 13 bits
_WB_SIZE = (1 << _WB_SHIFT) - 1
# Flags that keep a page out of writeback and recompression (kernel: ZRAM_WB, ZRAM_SAME and
# slots already being post-processed).
_NOT_MOVABLE = FLAG_SAME | FLAG_WB | FLAG_PP
_SPECIAL = FLAG_WB | FLAG_RECOMPRESSED  # pages a read cannot serve from the primary codec

# writeback's modes (the kernel's IDLE_WRITEBACK etc.); 0 = any page
WB_HUGE = 1
WB_IDLE = 2
WB_INCOMPRESSIBLE = 4
MAX_PRIORITY = 3  # recompression algorithms have priorities 1..3 (ZRAM_MAX_COMPS - 1)
_NOT_IDLE = 0xFF ^ FLAG_IDLE
_FLAGS_STORED_SAME = FLAG_STORED | FLAG_SAME
_FLAGS_STORED_HUGE = FLAG_STORED | FLAG_HUGE
_STORED_OR_SAME = FLAG_STORED | FLAG_SAME
_POOL_MASK = FLAG_STORED | FLAG_SAME | _SPECIAL  # == FLAG_STORED: a primary-codec pool object

_MAX_ZSPAGE_PAGES = 8  # the longest zspage chain (CONFIG_ZSMALLOC_CHAIN_SIZE)
# Below this many full pages a request checks for same-filled pages page by page; from it
# on, one numpy pass over the whole request finds the candidates (about 0.04 us a page).
_NUMPY_SAME_MIN = 4

_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_Q = bytes(8 * CHUNK_PAGES)
_ZERO_I = bytes(4 * CHUNK_PAGES)
_WORDS_PER_PAGE = PAGE_SIZE // 8
_NO_Q = array("Q")  # placeholders before the first chunk is looked up
_NO_B = bytearray()


class OutOfRange(ValueError):
    """An I/O with a negative offset or length, or one that ends past the disk size."""


class MemLimitExceeded(OSError):
    """A page could not be stored without taking the pool over mem_limit (errno ENOMEM).

    ``written`` is how many bytes of the failed call, from its start, were stored."""

    def __init__(self, written: int, limit: int) -> None:
        super().__init__(errno.ENOMEM, f"zram mem_limit of {limit} bytes reached")
        self.written = written
        self.limit = limit


class BackingReadError(OSError):
    """A written-back page whose block could not be read (errno EIO); counted in
    failed_reads."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(errno.EIO, f"page {index}: backing store read failed: {reason}")
        self.index = index


class PageCorrupt(OSError):
    """A stored page that no longer decompresses (errno EIO); counted in failed_reads."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(errno.EIO, f"page {index} cannot be decompressed: {reason}")
        self.index = index


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of mm_stat, io_stat and a few more counters.

    reads and writes count pages (a partial page counts as one), as the kernel's num_reads
    and num_writes count bio segments."""

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int
    failed_reads: int
    failed_writes: int
    invalid_io: int
    notify_free: int
    reads: int
    writes: int
    pages_stored: int
    idle_pages: int
    pool: PoolStatistics
    # The writeback and recompression tier (bd_stat's columns are in 4 KiB pages).
    bd_count: int = 0  # pages now on the backing store
    bd_reads: int = 0  # pages read from it
    bd_writes: int = 0  # pages written to it
    recompressed_pages: int = 0  # pages now stored with a secondary algorithm
    writeback_limit: int = 0  # pages the writeback budget has left
    writeback_limit_enable: bool = False


class PreparedWrite:
    """A write with its whole pages already compressed (made by PageStore.prepare_write).

    A payload is an int (the fill word of a same-filled page), a PAGE_SIZE bytes object (a
    huge page, stored raw) or a shorter bytes object (the compressed page)."""

    __slots__ = ("offset", "length", "first", "payloads", "head", "tail", "codec")

    def __init__(
        self,
        offset: int,
        length: int,
        first: int,
        payloads: list[int | bytes],
        head: tuple[int, int, bytes] | None,
        tail: tuple[int, int, bytes] | None,
        codec: Codec,
    ) -> None:
        self.offset = offset
        self.length = length
        self.first = first  # page index of payloads[0]
        self.payloads = payloads
        self.head = head  # (page index, offset in page, bytes) of a partial first page
        self.tail = tail  # the same for a partial last page
        self.codec = codec


class PendingRead:
    """A read whose pages were copied out of the pool (made by PageStore.fetch).

    A payload is an int (fill word; 0 also for unwritten pages), PAGE_SIZE raw bytes or a
    shorter compressed block."""

    __slots__ = ("offset", "length", "first", "payloads", "backing")

    def __init__(self, offset: int, length: int, first: int, payloads: list[int | bytes]) -> None:
        self.offset = offset
        self.length = length
        self.first = first
        self.payloads = payloads
        # Written-back pages still to read: (position in payloads, block, size, priority);
        # the shell reads the blocks and hands them to PageStore.fill_backing().
        self.backing: list[tuple[int, int, int, int]] | None = None

    @property
    def blocks(self) -> list[int]:
        """The backing blocks this read needs (empty: none)."""
        return [b for _, b, _, _ in self.backing] if self.backing else []


class WritebackBatch:
    """Pages on their way to the backing store (made by PageStore.begin_writeback).

    ``blocks[k]`` receives ``data[k]``, the compressed object of page ``indices[k]`` as it
    was when the batch began; ``stopped`` is the errno that cut the batch short (EIO: the
    writeback_limit budget is used up; ENOSPC: the backing store is full), else 0."""

    __slots__ = ("indices", "handles", "blocks", "data", "stopped", "consumed")

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.handles: list[int] = []
        self.blocks: list[int] = []
        self.data: list[bytes] = []
        self.stopped = 0
        self.consumed = 0  # how many of the given indices were looked at

    def __len__(self) -> int:
        return len(self.indices)


class _Chunk:
    """Page-table slots for CHUNK_PAGES consecutive pages: 13 bytes a page."""

    __slots__ = ("vals", "flags", "atime", "used")

    def __init__(self) -> None:
        self.vals = array("Q", _ZERO_Q)  # pool handle, fill word (SAME) or block (WB)
        self.flags = bytearray(CHUNK_PAGES)
        self.atime = array("I", _ZERO_I)  # last access, seconds since the store was made
        self.used = 0  # slots with FLAG_STORED


def _fill_page(word: int) -> bytes:
    return _ZERO_PAGE if word == 0 else word.to_bytes(8, "little") * _WORDS_PER_PAGE


class PageStore:
    """One device's pages. Not thread-safe except prepare_write and finish_read."""

    def __init__(
        self,
        disksize: int,
        codec: Codec,
        mem_limit: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if disksize <= 0 or disksize & _PAGE_MASK:
            raise ValueError(f"disksize {disksize} is not a positive multiple of {PAGE_SIZE}")
        self._disksize = disksize
        self._codec = codec
        self._compress = codec.compress
        self._decompress = codec.decompress
        self._clock = clock
        self._t0 = clock()
        self._pool = ZsPool()
        self._chunks: dict[int, _Chunk] = {}
        self._limit_pages = 0
        self.mem_limit = mem_limit
        self._closed = False
        self._error_lock = threading.Lock()  # failed_reads may be counted on worker threads
        # mm_stat / io_stat counters
        self._stored = 0
        self._same = 0
        self._huge = 0
        self._huge_since = 0
        self._compr = 0
        self._idle = 0
        self._max_pages = 0  # mem_used_max, in pages
        self._failed_reads = 0
        self._failed_writes = 0
        self._notify_free = 0
        self._reads = 0
        self._writes = 0
        # The tier: backing blocks, bd_stat, the writeback budget, recompression.
        self._blocks: BlockMap | None = None
        self._read_block: Callable[[int], bytes] | None = None
        self._batch: WritebackBatch | None = None
        self._bd_count = 0
        self._bd_reads = 0
        self._bd_writes = 0
        self.writeback_limit_enable = False
        self.writeback_limit = 0  # pages the budget has left (counts down when enabled)
        self._recomp: dict[int, Codec] = {}  # priority (1..3) -> secondary codec
        self._prio: dict[int, int] = {}  # page index -> priority, for RECOMPRESSED pages
        self._recompressed = 0

    # ---------------------------------------------------------------- configuration

    @property
    def disksize(self) -> int:
        return self._disksize

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def mem_limit(self) -> int:
        """The limit in bytes (a multiple of PAGE_SIZE, rounded up); 0 means none."""
        return self._limit_pages << _PAGE_SHIFT

    @mem_limit.setter
    def mem_limit(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"mem_limit {value} is negative")
        self._limit_pages = (value + _PAGE_MASK) >> _PAGE_SHIFT

    @property
    def pages_stored(self) -> int:
        """Pages holding data (same-filled included): statistics().pages_stored, in O(1)."""
        return self._stored

    @property
    def mem_used_total(self) -> int:
        """statistics().mem_used_total in O(1), for getattr and statfs, which would
        otherwise walk every zspage for the pool's per-class figures."""
        return self._pool.total_pages << _PAGE_SHIFT

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def compr_data_size(self) -> int:
        return self._compr

    @property
    def pool_pages_stored(self) -> int:
        """Pages whose data is a pool object (neither same-filled nor written back)."""
        return self._stored - self._same - self._bd_count

    def pool_statistics(self) -> PoolStatistics:
        """The pool's figures alone (O(classes)), for the automatic compaction check."""
        return self._pool.statistics()

    def forgive_write_failure(self) -> None:
        """Take back one failed_writes count: the shell retries the refused write once
        automatic writeback has made room, so it has not failed (yet)."""
        self._failed_writes -= 1

    @property
    def bd_count(self) -> int:
        """Pages now on the backing store, in O(1) (the shell's read path asks it first)."""
        return self._bd_count

    @property
    def blocks(self) -> BlockMap | None:
        """The backing store's block map, once attach_backing() was called."""
        return self._blocks

    def attach_backing(self, nblocks: int, read_block: Callable[[int], bytes]) -> None:
        """Give the store a backing store of ``nblocks`` 4 KiB blocks. ``read_block(n)``
        returns block n (>= the object's size in bytes) and raises OSError on failure; it is
        only called for a partial write or discard of a written-back page and by read()."""
        if self._blocks is not None:
            raise ValueError("the store already has a backing store")
        self._blocks = BlockMap(nblocks)
        self._read_block = read_block

    def set_recompression(self, codecs: dict[int, Codec]) -> None:
        """The secondary algorithms by priority (1..MAX_PRIORITY)."""
        if any(not 1 <= p <= MAX_PRIORITY for p in codecs):
            raise ValueError(f"recompression priorities are 1..{MAX_PRIORITY}")
        self._recomp = dict(codecs)

    def _now(self) -> int:
        return int(self._clock() - self._t0) & 0xFFFFFFFF

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise ValueError("the page store is closed")
        if offset < 0 or length < 0 or offset + length > self._disksize:
            raise OutOfRange(
                f"I/O of {length} bytes at {offset} is outside the device (0..{self._disksize})"
            )

    # ----------------------------------------------------------------------- writes

    def write(self, offset: int, data: Buffer) -> None:
        """Store ``data`` at byte ``offset``; MemLimitExceeded if the pool would pass the
        limit (the pages before the failing one are written)."""
        if type(data) is bytes and len(data) == PAGE_SIZE and not offset & _PAGE_MASK:
            # One whole page (a 4 KiB request, the common small write): no batch objects.
            self._check(offset, PAGE_SIZE)
            if not self._put(offset >> _PAGE_SHIFT, [self._encode_one(data)], self._now()):
                raise self._write_failure(offset, offset)
            self._writes += 1
            return
        if self.near_limit:
            self._write_by_page(offset, data)
            return
        self.commit_write(self.prepare_write(offset, data))

    @property
    def near_limit(self) -> bool:
        """Whether the pool is within one zspage of mem_limit. Then a write is stored page
        by page (write() does so), compressing each page only when the ones before it
        were stored, so that a refused write costs one page's compression rather than the
        whole request's (a 1 MiB swap-out refused at the limit: one page, not 256)."""
        limit = self._limit_pages
        return bool(limit) and self._pool.total_pages + _MAX_ZSPAGE_PAGES > limit

    def _write_by_page(self, offset: int, data: Buffer) -> None:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        self._check(offset, mv.nbytes)
        pos = 0
        end = mv.nbytes
        while pos < end:
            at = offset + pos
            cut = min(end, pos + PAGE_SIZE - (at & _PAGE_MASK))
            piece = mv[pos:cut]
            try:
                if cut - pos == PAGE_SIZE:
                    self.write(at, piece.tobytes())  # the whole-page path
                else:
                    self.commit_write(self.prepare_write(at, piece))
            except MemLimitExceeded as exc:
                raise MemLimitExceeded(pos + exc.written, exc.limit) from None
            pos = cut

    def prepare_write(self, offset: int, data: Buffer) -> PreparedWrite:
        """Compress the whole pages of a write. CPU only and thread-safe: reads no state
        but the disk size and the codec, so it may run on a worker thread."""
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        length = mv.nbytes
        self._check(offset, length)
        end = offset + length
        first = -(-offset >> _PAGE_SHIFT)  # first whole page
        stop = end >> _PAGE_SHIFT  # end of the whole pages
        head = tail = None
        if offset & _PAGE_MASK and length:
            cut = min(end, (offset | _PAGE_MASK) + 1)
            head = (offset >> _PAGE_SHIFT, offset & _PAGE_MASK, mv[: cut - offset].tobytes())
        if end & _PAGE_MASK and stop >= first and length:
            tail = (stop, 0, mv[(stop << _PAGE_SHIFT) - offset :].tobytes())
        payloads: list[int | bytes] = []
        if stop > first:
            base = (first << _PAGE_SHIFT) - offset
            payloads = self._encode_pages(mv[base : base + ((stop - first) << _PAGE_SHIFT)])
        return PreparedWrite(offset, length, first, payloads, head, tail, self._codec)

    def _encode_pages(self, mv: memoryview) -> list[int | bytes]:
        """Payloads for consecutive whole pages (CPU only)."""
        if self._codec.batch_nogil:  # the whole loop in C, without the GIL
            return self._codec.encode_pages(mv, HUGE_CLASS_SIZE)
        npages = mv.nbytes >> _PAGE_SHIFT
        if npages < _NUMPY_SAME_MIN:
            encode_one = self._encode_one
            return [
                encode_one(mv[pos : pos + PAGE_SIZE].tobytes())
                for pos in range(0, npages << _PAGE_SHIFT, PAGE_SIZE)
            ]
        compress = self._compress
        huge = HUGE_CLASS_SIZE
        out: list[int | bytes] = []
        append = out.append
        same = _same_filled(mv, npages)
        for k, pos in enumerate(range(0, npages << _PAGE_SHIFT, PAGE_SIZE)):
            if same is not None:
                word_or_none = same.get(k)
                if word_or_none is not None:
                    append(word_or_none)
                    continue
            page = mv[pos : pos + PAGE_SIZE]
            c = compress(page)
            append(page.tobytes() if len(c) >= huge else c)  # (the rule of _encode_one)
        return out

    def _encode_one(self, raw: bytes) -> int | bytes:
        """The payload of one page: its fill word if same-filled, the raw page if it
        compresses to HUGE_CLASS_SIZE bytes or more, else the compressed bytes."""
        word = raw[:8]
        if raw[-8:] == word and raw == word * _WORDS_PER_PAGE:  # (last word: a cheap reject)
            return int.from_bytes(word, "little")
        c = self._compress(raw)
        return raw if len(c) >= HUGE_CLASS_SIZE else c

    def commit_write(self, prepared: PreparedWrite) -> None:
        """Apply a prepared write to the page table and pool (never blocks). Partial edge
        pages are merged here with the current contents, so a write prepared before another
        one committed still lands correctly."""
        if prepared.codec is not self._codec:
            raise ValueError("this write was prepared by a store with another codec")
        offset = prepared.offset
        self._check(offset, prepared.length)
        now = self._now()
        head, tail = prepared.head, prepared.tail
        done = 0
        try:
            if head is not None:
                index, at, piece = head
                if not self._put(index, [self._merge(index, at, piece)], now):
                    raise self._write_failure(offset, index << _PAGE_SHIFT)
                done += 1
            payloads = prepared.payloads
            if payloads:
                n = self._put(prepared.first, payloads, now)
                done += n
                if n < len(payloads):
                    raise self._write_failure(offset, (prepared.first + n) << _PAGE_SHIFT)
            if tail is not None:
                index, at, piece = tail
                if not self._put(index, [self._merge(index, at, piece)], now):
                    raise self._write_failure(offset, index << _PAGE_SHIFT)
                done += 1
        except (PageCorrupt, BackingReadError):
            self._failed_writes += 1
            raise
        finally:
            self._writes += done

    def _write_failure(self, offset: int, at: int) -> MemLimitExceeded:
        """Count a write refused at mem_limit at byte ``at`` of a call that began at
        ``offset`` (no logging, nothing else: refusing must cost next to nothing)."""
        self._failed_writes += 1
        return MemLimitExceeded(max(0, at - offset), self._limit_pages << _PAGE_SHIFT)

    def _merge(self, index: int, at: int, piece: bytes) -> int | bytes:
        """The payload for page ``index`` with ``piece`` written at byte ``at``."""
        cur = self._page(index)
        return self._encode_one(cur[:at] + piece + cur[at + len(piece) :])

    def _page(self, index: int, touch: bool = False) -> bytes:
        """The current contents of one page; with ``touch``, a read access: the page's
        idle mark is cleared and its access time refreshed."""
        chunk = self._chunks.get(index >> _CHUNK_SHIFT)
        if chunk is None:
            return _ZERO_PAGE
        j = index & _CHUNK_MASK
        f = chunk.flags[j]
        if not f:
            return _ZERO_PAGE
        if touch:
            chunk.atime[j] = self._now()
            if f & FLAG_IDLE:
                chunk.flags[j] = f & _NOT_IDLE
                self._idle -= 1
        val = chunk.vals[j]
        if f & FLAG_SAME:
            return _fill_page(val)
        if f & FLAG_WB:
            return self._decode(index, f, self._backing_object(index, val, touch), touch)
        return self._decode(index, f, self._pool.read(val), touch)

    def _backing_object(self, index: int, val: int, count_failure: bool) -> bytes:
        """The object of a written-back page, read through read_block (synchronously)."""
        read_block = self._read_block
        assert read_block is not None  # a WB page implies attach_backing()
        try:
            data = read_block(val >> _WB_SHIFT)
        except OSError as exc:
            if count_failure:  # (else a write's merge: the write counts as failed)
                with self._error_lock:
                    self._failed_reads += 1
            raise BackingReadError(index, str(exc)) from None
        self._bd_reads += 1
        return data[: val & _WB_SIZE]

    def _decode(self, index: int, f: int, data: bytes, count_failure: bool = True) -> bytes:
        """A page from its object: raw if huge, else decompressed with the algorithm that
        made it (the primary, or a recompression priority)."""
        if len(data) == PAGE_SIZE:
            return data
        try:
            if f & FLAG_RECOMPRESSED:
                return self._recomp[self._prio[index]].decompress(data, PAGE_SIZE)
            return self._decompress(data, PAGE_SIZE)
        except DecompressError as exc:
            if count_failure:
                with self._error_lock:
                    self._failed_reads += 1
            raise PageCorrupt(index, str(exc)) from None

    def _release(self, vals: array[int], j: int, f: int, index: int) -> None:
        """Free what slot ``j`` (page ``index``, flags ``f`` != 0) holds and take it out of
        the counters, as zram_free_page does; the caller overwrites or clears the slot."""
        if f & FLAG_SAME:
            self._same -= 1
        elif f & FLAG_WB:
            self._bd_count -= 1
            blocks = self._blocks
            assert blocks is not None
            blocks.free(vals[j] >> _WB_SHIFT)
        else:
            self._compr -= self._pool.free(vals[j])
            if f & FLAG_HUGE:
                self._huge -= 1
        if f & FLAG_IDLE:
            self._idle -= 1
        if f & FLAG_RECOMPRESSED:
            self._recompressed -= 1
            del self._prio[index]

    def _put(self, first: int, payloads: list[int | bytes], now: int) -> int:
        """Store payloads for pages first, first+1, ...; return how many were stored (fewer
        than given when the next allocation would take the pool over mem_limit: the
        outcome of zram_write_page's allocate, compare with the limit, free, including
        mem_used_max seeing the transient pages, from ZsPool.growth() without allocating)."""
        pool = self._pool
        store = pool.store
        growth = pool.growth
        release = self._release
        chunks = self._chunks
        limit = self._limit_pages
        peak = self._max_pages
        total = len(payloads)
        d_stored = d_same = d_huge = d_compr = 0
        done = 0  # payloads stored so far
        chunk: _Chunk | None = None
        ci = -1
        added = 0  # slots of ``chunk`` that went from empty to stored
        try:
            while done < total:
                idx = first + done
                ci = idx >> _CHUNK_SHIFT
                j0 = idx & _CHUNK_MASK
                count = min(CHUNK_PAGES - j0, total - done)
                chunk = chunks.get(ci)
                if chunk is None:
                    chunk = chunks[ci] = _Chunk()
                vals = chunk.vals
                flags = chunk.flags
                atime = chunk.atime
                added = 0
                batch = payloads if count == total else payloads[done : done + count]
                j = j0
                base = ci << _CHUNK_SHIFT
                for p in batch:
                    if type(p) is int:
                        new = p
                        nf = _FLAGS_STORED_SAME
                        d_same += 1
                    else:
                        n = len(p)  # type: ignore[arg-type]
                        if limit:
                            grow = growth(n)
                            if grow:
                                # The kernel allocates, finds the pool over the limit and
                                # frees again; the outcome (and mem_used_max seeing the
                                # transient pages) is the same without the allocation, so
                                # refusing costs no mmap, madvise or mlock call.
                                used = pool.total_pages + grow
                                if used > peak:
                                    peak = used
                                if used > limit:
                                    break  # this page and the rest stay as they were
                        new = store(p)  # type: ignore[arg-type]
                        used = pool.total_pages
                        if used > peak:
                            peak = used
                        d_compr += n
                        if n == PAGE_SIZE:
                            nf = _FLAGS_STORED_HUGE
                            d_huge += 1
                        else:
                            nf = FLAG_STORED
                    old = flags[j]
                    if old:
                        release(vals, j, old, base + j)
                    else:
                        added += 1
                    vals[j] = new
                    flags[j] = nf
                    atime[j] = now
                    j += 1
                stored_here = j - j0
                done += stored_here
                chunk.used += added
                d_stored += added
                added = 0
                if stored_here < count:
                    break
        finally:
            if added and chunk is not None:  # an exception in the middle of a chunk
                chunk.used += added
                d_stored += added
            self._max_pages = peak
            self._stored += d_stored
            self._same += d_same
            self._huge += d_huge
            self._huge_since += d_huge
            self._compr += d_compr
            if chunk is not None and not chunk.used:
                del chunks[ci]  # created for a page that could not be stored
        return done

    # ------------------------------------------------------------------------ reads

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; unwritten pages read as zeros. Written-back
        pages are read through read_block (the mount uses fetch/fill_backing instead)."""
        if length == PAGE_SIZE and not offset & _PAGE_MASK:
            # One whole page (a 4 KiB request, the common small read): no batch objects.
            self._check(offset, PAGE_SIZE)
            self._reads += 1
            return self._page(offset >> _PAGE_SHIFT, touch=True)
        pending = self.fetch(offset, length)
        if pending.backing:
            self.fill_backing(pending, [self._read_or_error(b) for b in pending.blocks])
        return self.finish_read(pending)

    def _read_or_error(self, block: int) -> bytes | OSError:
        read_block = self._read_block
        assert read_block is not None
        try:
            return read_block(block)
        except OSError as exc:
            return exc

    def fetch(self, offset: int, length: int) -> PendingRead:
        """Copy the compressed pages of a read out of the pool (no decompression, except of
        recompressed pages, which are rare and cold). Marks the pages accessed: clears their
        idle flag and refreshes their access time. Written-back pages are listed in the
        result's ``backing`` (their blocks pinned until fill_backing)."""
        self._check(offset, length)
        if not length:
            return PendingRead(offset, 0, 0, [])
        first = offset >> _PAGE_SHIFT
        stop = ((offset + length - 1) >> _PAGE_SHIFT) + 1
        now = self._now()
        chunks = self._chunks
        payloads: list[int | bytes] = []
        # Pool objects are read in one batch at the end; until then their slots in
        # ``payloads`` hold the handle (SAME and unwritten slots hold their value already).
        where: list[int] = []
        handles: list[int] = []
        special: list[tuple[int, int, int]] = []  # (position, page index, flags)
        tiered = self._bd_count or self._recompressed
        idle = self._idle
        idx = first
        while idx < stop:
            c = idx >> _CHUNK_SHIFT
            j0 = idx & _CHUNK_MASK
            j1 = min(CHUNK_PAGES, j0 + stop - idx)
            idx += j1 - j0
            chunk = chunks.get(c)
            if chunk is None:
                payloads.extend([0] * (j1 - j0))
                continue
            base = len(payloads) - j0
            payloads.extend(chunk.vals[j0:j1].tolist())  # unwritten slots hold 0
            flags = chunk.flags
            seg = flags[j0:j1]
            if tiered:
                for j, f in enumerate(seg, j0):
                    if f & _SPECIAL:
                        special.append((base + j, (c << _CHUNK_SHIFT) + j, f))
                pos = [base + j for j, f in enumerate(seg, j0) if f & _POOL_MASK == FLAG_STORED]
            else:
                pos = [
                    base + j for j, f in enumerate(seg, j0) if f & _STORED_OR_SAME == FLAG_STORED
                ]
            where += pos
            handles += [payloads[k] for k in pos]  # type: ignore[misc]
            atime = chunk.atime
            if j1 - j0 == 1:
                atime[j0] = now  # (a slot not stored gets a time too: nothing reads it)
            else:
                atime[j0:j1] = array("I", [now]) * (j1 - j0)
            if idle:
                for j, f in enumerate(seg, j0):
                    if f & FLAG_IDLE:
                        flags[j] = f & _NOT_IDLE
                        idle -= 1
        if handles:
            for k, data in zip(where, self._pool.read_many(handles), strict=True):
                payloads[k] = data
        self._idle = idle
        self._reads += stop - first
        pending = PendingRead(offset, length, first, payloads)
        if special:
            backing: list[tuple[int, int, int, int]] = []
            for k, index, f in special:
                val = payloads[k]
                assert type(val) is int
                prio = self._prio.get(index, 0) if f & FLAG_RECOMPRESSED else 0
                if f & FLAG_WB:
                    block = val >> _WB_SHIFT
                    assert self._blocks is not None
                    self._blocks.pin(block)
                    backing.append((k, block, val & _WB_SIZE, prio))
                    payloads[k] = 0
                else:  # recompressed, in the pool: decode it now with its algorithm
                    payloads[k] = self._decode(index, f, self._pool.read(val))
            pending.backing = backing or None
        return pending

    def fill_backing(self, pending: PendingRead, blocks: list[bytes | OSError]) -> None:
        """Put the blocks read for ``pending.backing`` (same order; an OSError for a block
        that could not be read) into the read, unpin them, count bd_reads; raise
        BackingReadError (EIO, counted in failed_reads) if any failed."""
        backing = pending.backing
        if not backing:
            return
        pending.backing = None
        bm = self._blocks
        assert bm is not None and len(blocks) == len(backing)
        failed: tuple[int, str] | None = None
        for (k, block, size, prio), data in zip(backing, blocks, strict=True):
            bm.unpin(block)
            if isinstance(data, OSError):
                if failed is None:
                    failed = (pending.first + k, str(data))
                continue
            self._bd_reads += 1
            obj = data[:size]
            if size == PAGE_SIZE or not prio:
                pending.payloads[k] = obj  # raw, or for finish_read's primary codec
            else:
                try:
                    pending.payloads[k] = self._recomp[prio].decompress(obj, PAGE_SIZE)
                except DecompressError as exc:
                    failed = failed or (pending.first + k, str(exc))
        if failed is not None:
            with self._error_lock:
                self._failed_reads += 1
            raise BackingReadError(*failed)

    def finish_read(self, pending: PendingRead) -> bytes:
        """Decompress and assemble a fetched read. CPU only and thread-safe."""
        if pending.backing:
            raise ValueError("the read still needs its backing blocks (fill_backing)")
        if not pending.payloads:
            return b""
        try:
            out = self._codec.decode_pages(pending.payloads)
        except BatchDecompressError as exc:
            with self._error_lock:
                self._failed_reads += 1
            raise PageCorrupt(pending.first + exc.index, str(exc)) from None
        skip = pending.offset & _PAGE_MASK
        if skip or len(out) != pending.length:
            out = out[skip : skip + pending.length]
        return out

    # ---------------------------------------------------------------------- discard

    def discard(self, offset: int, length: int) -> None:
        """Free every whole page in the range and zero the partial pages at its edges.

        notify_free counts every whole page of the range, as the kernel's discard does. The
        edge zeroing is not subject to mem_limit (a discard never fails for memory)."""
        self._check(offset, length)
        if not length:
            return
        end = offset + length
        first = -(-offset >> _PAGE_SHIFT)
        stop = end >> _PAGE_SHIFT
        if stop > first:
            self._notify_free += stop - first
            self._free_range(first, stop)
        now = self._now()
        if offset & _PAGE_MASK:
            cut = min(end, (offset | _PAGE_MASK) + 1)
            self._zero_part(offset >> _PAGE_SHIFT, offset & _PAGE_MASK, cut - offset, now)
        if end & _PAGE_MASK and stop >= first:
            self._zero_part(stop, 0, end & _PAGE_MASK, now)

    def _zero_part(self, index: int, at: int, count: int, now: int) -> None:
        chunk = self._chunks.get(index >> _CHUNK_SHIFT)
        if chunk is None or not chunk.flags[index & _CHUNK_MASK]:
            return  # unwritten: already reads as zeros
        limit, self._limit_pages = self._limit_pages, 0  # (never fails for memory)
        try:
            self._put(index, [self._merge(index, at, bytes(count))], now)
        finally:
            self._limit_pages = limit

    def _free_range(self, first: int, stop: int) -> None:
        chunks = self._chunks
        c0 = first >> _CHUNK_SHIFT
        c1 = (stop - 1) >> _CHUNK_SHIFT
        if c1 - c0 + 1 > len(chunks):
            targets = sorted(c for c in chunks if c0 <= c <= c1)
        else:
            targets = [c for c in range(c0, c1 + 1) if c in chunks]
        release = self._release
        d_stored = 0
        # Emptied zspages give their pages back to the OS together at the end: one
        # madvise per run rather than per zspage (each huge page is its own zspage).
        with self._pool.release_batch():
            for c in targets:
                chunk = chunks[c]
                lo = c << _CHUNK_SHIFT
                j0 = max(first - lo, 0)
                j1 = min(stop - lo, CHUNK_PAGES)
                vals = chunk.vals
                flags = chunk.flags
                atime = chunk.atime
                view = np.frombuffer(flags, dtype=np.uint8, count=j1 - j0, offset=j0)
                live = (np.flatnonzero(view) + j0).tolist()
                del view  # release the export of the bytearray
                for j in live:
                    release(vals, j, flags[j], lo + j)
                    vals[j] = 0
                    flags[j] = 0
                    atime[j] = 0
                d_stored += len(live)
                chunk.used -= len(live)
                if not chunk.used:
                    del chunks[c]
        self._stored -= d_stored

    # ------------------------------------------------------------ the writeback tier

    def _scan(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first page index, flags, atime, vals) numpy views of each chunk, in page
        order. The views export the arrays: drop them before the table changes."""
        for c in sorted(self._chunks):
            chunk = self._chunks[c]
            yield (
                c << _CHUNK_SHIFT,
                np.frombuffer(chunk.flags, dtype=np.uint8),
                np.frombuffer(chunk.atime, dtype=np.uint32),
                np.frombuffer(chunk.vals, dtype=np.uint64),
            )

    def largest_first(self, indices: list[int]) -> list[int]:
        """``indices`` (pool-object pages) ordered by object size, largest first, as the
        kernel's post-processing buckets pick them (ties: lower index first)."""
        chunks = self._chunks
        size_of = self._pool.size_of
        sizes = {i: size_of(chunks[i >> _CHUNK_SHIFT].vals[i & _CHUNK_MASK]) for i in set(indices)}
        return sorted(sizes, key=lambda i: (-sizes[i], i))

    def select_writeback(self, mode: int, lo: int = 0, hi: int | None = None) -> list[int]:
        """The pages the kernel's writeback would take among [lo, hi), largest objects
        first (its post-processing buckets): stored, not same-filled, not written back or
        in flight, and with WB_IDLE / WB_HUGE / WB_INCOMPRESSIBLE in ``mode`` only those
        idle / huge / flagged incompressible (a page must have them all)."""
        if hi is None:
            hi = self._disksize >> _PAGE_SHIFT
        need = FLAG_STORED
        if mode & WB_IDLE:
            need |= FLAG_IDLE
        if mode & WB_HUGE:
            need |= FLAG_HUGE
        if mode & WB_INCOMPRESSIBLE:
            need |= FLAG_INCOMPRESSIBLE
        mask = need | _NOT_MOVABLE
        found: list[int] = []
        for base, flags, _atime, _vals in self._scan():
            if base + CHUNK_PAGES <= lo or base >= hi:
                continue
            hit = (flags & mask) == need
            idx = np.flatnonzero(hit) + base
            found += idx[(idx >= lo) & (idx < hi)].tolist()
            del flags, _atime, _vals
        return self.largest_first(found)

    def cold_pages(self, count: int, min_age_s: float = 0.0, skip: int = 0) -> list[int]:
        """Up to ``count`` pages a writeback may take, coldest first (oldest access), not
        accessed for at least ``min_age_s`` seconds; with ``skip`` flags (e.g.
        FLAG_RECOMPRESSED | FLAG_INCOMPRESSIBLE for recompression) such pages are left
        out. The choice is coldest_first() over the table's columns."""
        cutoff = self._now() - min_age_s
        idx_parts: list[np.ndarray] = []
        age_parts: list[np.ndarray] = []
        for base, flags, atime, _vals in self._scan():
            ok = ((flags & (FLAG_STORED | _NOT_MOVABLE | skip)) == FLAG_STORED) & (atime <= cutoff)
            sel = np.flatnonzero(ok)
            idx_parts.append(sel + base)
            age_parts.append(atime[sel].astype(np.int64))
            del flags, atime, _vals
        if not idx_parts:
            return []
        return coldest_first(np.concatenate(idx_parts), np.concatenate(age_parts), count)

    def begin_writeback(self, indices: list[int], max_pages: int | None = None) -> WritebackBatch:
        """Start writing back ``indices`` (in that order): for each page that still may
        go, take a block, snapshot its object and mark the slot PP. Stops at the
        writeback_limit budget (EIO), a full backing store (ENOSPC) or ``max_pages``.
        Only one batch may be open at a time (the kernel's pp_in_progress)."""
        bm = self._blocks
        if bm is None:
            raise ValueError("the store has no backing store")
        if self._batch is not None:
            raise RuntimeError("a writeback is already in flight")
        batch = WritebackBatch()
        budget = self.writeback_limit if self.writeback_limit_enable else -1
        chunks = self._chunks
        read = self._pool.read
        for index in indices:
            if max_pages is not None and len(batch) >= max_pages:
                break
            batch.consumed += 1
            chunk = chunks.get(index >> _CHUNK_SHIFT)
            if chunk is None:
                continue
            j = index & _CHUNK_MASK
            f = chunk.flags[j]
            if f & (FLAG_STORED | _NOT_MOVABLE) != FLAG_STORED:
                continue
            if budget == len(batch):
                batch.stopped = errno.EIO
                batch.consumed -= 1
                break
            block = bm.alloc()
            if block < 0:
                batch.stopped = errno.ENOSPC
                batch.consumed -= 1
                break
            h = chunk.vals[j]
            chunk.flags[j] = f | FLAG_PP
            batch.indices.append(index)
            batch.handles.append(h)
            batch.blocks.append(block)
            batch.data.append(read(h))
        self._batch = batch
        return batch

    def end_writeback(self, batch: WritebackBatch, failed: set[int] | None = None) -> int:
        """Finish a batch once its blocks are written (``failed``: positions in the batch
        whose write failed). A slot still marked PP with the same object switches to WB
        and its memory is freed; a slot rewritten or discarded meanwhile keeps its new
        contents and the block is freed. Returns the pages now on the backing store."""
        if batch is not self._batch:
            raise ValueError("not the batch in flight")
        self._batch = None
        bm = self._blocks
        assert bm is not None
        chunks = self._chunks
        moved = 0
        for k, index in enumerate(batch.indices):
            block = batch.blocks[k]
            chunk = chunks.get(index >> _CHUNK_SHIFT)
            j = index & _CHUNK_MASK
            live = (
                chunk is not None and chunk.flags[j] & FLAG_PP and chunk.vals[j] == batch.handles[k]
            )
            if failed and k in failed:
                if live:
                    assert chunk is not None
                    chunk.flags[j] &= 0xFF ^ FLAG_PP
                bm.free(block)
                continue
            self._bd_writes += 1
            if not live:
                bm.free(block)  # rewritten or discarded while in flight: newest data wins
                continue
            assert chunk is not None
            f = chunk.flags[j]
            size = len(batch.data[k])
            self._compr -= self._pool.free(batch.handles[k])
            if f & FLAG_HUGE:
                self._huge -= 1
            if f & FLAG_IDLE:
                self._idle -= 1
            chunk.vals[j] = (block << _WB_SHIFT) | size
            chunk.flags[j] = FLAG_STORED | FLAG_WB | (f & (FLAG_RECOMPRESSED | FLAG_INCOMPRESSIBLE))
            self._bd_count += 1
            moved += 1
            if self.writeback_limit_enable and self.writeback_limit:
                self.writeback_limit -= 1
        return moved

    # -------------------------------------------------------------- recompression

    def select_recompress(self, mode: int, prio_max: int) -> list[int]:
        """The pages the kernel's recompress would take, largest objects first: with
        WB_IDLE / WB_HUGE in ``mode`` only idle / huge ones; never same-filled, written
        back, in flight or flagged incompressible, nor already recompressed at a priority
        of prio_max - 1 or more."""
        need = FLAG_STORED
        if mode & WB_IDLE:
            need |= FLAG_IDLE
        if mode & WB_HUGE:
            need |= FLAG_HUGE
        mask = need | _NOT_MOVABLE | FLAG_INCOMPRESSIBLE
        found: list[int] = []
        for base, flags, _atime, _vals in self._scan():
            found += (np.flatnonzero((flags & mask) == need) + base).tolist()
            del flags, _atime, _vals
        prio = self._prio
        return self.largest_first([i for i in found if prio.get(i, 0) + 1 < prio_max])

    def recompress(
        self,
        indices: list[int],
        prio: int,
        prio_max: int,
        threshold: int = 0,
        max_pages: int | None = None,
    ) -> tuple[int, int]:
        """Recompress ``indices`` with the secondary algorithms of priorities prio ..
        prio_max - 1 (each page starting above the priority it already has), as the
        kernel's recompress_slot: objects smaller than ``threshold`` are skipped; a page is
        replaced only by an object in a smaller size class (and under ``threshold`` if
        set), else, if the last algorithm was tried, flagged incompressible. Returns
        (pages tried, pages replaced); a tried page counts against ``max_pages``, and the
        call stops when that many were tried."""
        tried = replaced = 0
        chunks = self._chunks
        pool = self._pool
        active = max(self._recomp, default=0) + 1
        for index in indices:
            if max_pages is not None and tried >= max_pages:
                break
            chunk = chunks.get(index >> _CHUNK_SHIFT)
            if chunk is None:
                continue
            j = index & _CHUNK_MASK
            f = chunk.flags[j]
            if f & (FLAG_STORED | _NOT_MOVABLE | FLAG_INCOMPRESSIBLE) != FLAG_STORED:
                continue
            h = chunk.vals[j]
            old_size = pool.size_of(h)
            if old_size < threshold:
                continue
            page = self._decode(index, f, pool.read(h))
            if f & FLAG_IDLE:  # touched: not idle any more (kernel: so no other pass takes it)
                f &= _NOT_IDLE
                self._idle -= 1
                chunk.flags[j] = f
            p = max(prio, self._prio.get(index, 0) + 1)
            if p >= prio_max:
                continue
            tried += 1
            old_class = size_class(old_size)
            best: bytes | None = None
            while p < prio_max:
                codec = self._recomp.get(p)
                if codec is not None:
                    c = codec.compress(page)
                    n = len(c)
                    if (
                        n < PAGE_SIZE
                        and size_class(n) < old_class
                        and not (threshold and n >= threshold)
                    ):
                        best = c
                        break
                p += 1
            if best is None:
                if prio_max >= active:
                    chunk.flags[j] = f | FLAG_INCOMPRESSIBLE
                continue
            new = pool.store(best)
            used = pool.total_pages
            if used > self._max_pages:
                self._max_pages = used
            self._release(chunk.vals, j, f, index)
            chunk.vals[j] = new
            chunk.flags[j] = FLAG_STORED | FLAG_RECOMPRESSED
            self._prio[index] = p
            self._recompressed += 1
            self._compr += len(best)
            replaced += 1
        return tried, replaced

    @property
    def recompression_priorities(self) -> list[int]:
        return sorted(self._recomp)

    # ------------------------------------------------------------ maintenance, stats

    def mark_idle(self, min_age_s: float | None = None) -> int:
        """Mark stored pages idle, as the kernel's idle attribute does; return how many are.

        With ``min_age_s`` only pages not accessed for at least that many seconds are
        marked, and the others lose an idle mark left by an earlier call. As in mainline
        zram, same-filled and written-back pages are never marked: nothing could be done
        with them. Any later read or write of a page clears its mark."""
        if self._closed:
            raise ValueError("the page store is closed")
        cutoff = None if min_age_s is None else self._now() - min_age_s
        total = 0
        for chunk in self._chunks.values():
            flags = np.frombuffer(chunk.flags, dtype=np.uint8)
            candidates = (flags & (FLAG_STORED | FLAG_SAME | FLAG_WB)) == FLAG_STORED
            if cutoff is None:
                eligible = candidates
            else:
                atime = np.frombuffer(chunk.atime, dtype=np.uint32)
                eligible = candidates & (atime <= cutoff)
                flags[candidates & ~eligible] &= _NOT_IDLE
                del atime
            flags[eligible] |= FLAG_IDLE
            total += int(np.count_nonzero(eligible))
            del flags
        self._idle = total  # no other page can carry the mark (see above)
        return total

    def compact(self) -> int:
        """Compact the pool; return the pages freed (also added to pages_compacted)."""
        return self._pool.compact()

    def reset_mem_used_max(self) -> None:
        """mem_used_max := the current pool size (the only value the kernel accepts is 0)."""
        self._max_pages = self._pool.total_pages

    def statistics(self) -> StoreStatistics:
        pool = self._pool.statistics()
        return StoreStatistics(
            orig_data_size=self._stored << _PAGE_SHIFT,
            compr_data_size=self._compr,
            mem_used_total=self.mem_used_total,
            mem_limit=self._limit_pages << _PAGE_SHIFT,
            mem_used_max=max(self._max_pages, self._pool.total_pages) << _PAGE_SHIFT,
            same_pages=self._same,
            pages_compacted=pool.pages_compacted,
            huge_pages=self._huge,
            huge_pages_since=self._huge_since,
            failed_reads=self._failed_reads,
            failed_writes=self._failed_writes,
            invalid_io=0,
            notify_free=self._notify_free,
            reads=self._reads,
            writes=self._writes,
            pages_stored=self._stored,
            idle_pages=self._idle,
            pool=pool,
            bd_count=self._bd_count,
            bd_reads=self._bd_reads,
            bd_writes=self._bd_writes,
            recompressed_pages=self._recompressed,
            writeback_limit=self.writeback_limit,
            writeback_limit_enable=self.writeback_limit_enable,
        )

    def close(self) -> None:
        """Free every page and give the pool's memory back to the OS. Counters keep their
        values; any later I/O raises ValueError. Dropping the store has the same effect."""
        self._closed = True
        self._chunks = {}
        self._prio = {}
        self._pool = ZsPool()  # the old pool's arenas are unmapped when it is dropped

    def page_flags(self, index: int) -> int:
        """The flags byte of page ``index`` (0: not stored). For tests and debugging."""
        chunk = self._chunks.get(index >> _CHUNK_SHIFT)
        return 0 if chunk is None else chunk.flags[index & _CHUNK_MASK]


def coldest_first(indices: np.ndarray, atimes: np.ndarray, count: int) -> list[int]:
    """The ``count`` entries of ``indices`` with the oldest access times (ties: lower
    index first), oldest first. Pure selection for automatic writeback and the policy."""
    n = len(indices)
    if count <= 0 or not n:
        return []
    if count < n:
        part = np.argpartition(atimes, count - 1)[:count]
        indices, atimes = indices[part], atimes[part]
    order = np.lexsort((indices, atimes))
    return [int(i) for i in indices[order]]


def _same_filled(mv: memoryview, npages: int) -> dict[int, int] | None:
    """{page number: fill word} of the same-filled pages among ``npages`` whole pages, in
    one vectorised pass: three sample words reject almost every other page, and only the
    candidates are compared in full. None if there are none."""
    words = np.frombuffer(mv, dtype="<u8").reshape(npages, _WORDS_PER_PAGE)
    first = words[:, 0]
    cand = (words[:, -1] == first) & (words[:, 1] == first) & (words[:, 256] == first)
    if not cand.any():
        return None
    idx = np.flatnonzero(cand)
    sub = words[idx]
    ok = idx[(sub == sub[:, :1]).all(axis=1)]
    if not len(ok):
        return None
    return dict(zip(ok.tolist(), first[ok].tolist(), strict=True))
