"""PageStore: one zram device's pages, compressed into a zsmalloc pool, with the kernel's
accounting.

The device is an array of 4 KiB pages behind a two-level page table: a dict maps a chunk
number to a chunk of 512 slots, created on the first write into it and dropped when a
discard empties it, so an unwritten device of any size costs nothing and a written page costs
13 bytes of table (a uint64 handle or same-fill word, a uint8 flags byte, a uint32
last-access second) in flat arrays, with no Python object per page. Writes compress whole
pages; a page whose 8-byte words are all equal (zero included) stores only that word (SAME),
and a page that compresses to zsmalloc.HUGE_CLASS_SIZE bytes or more is stored raw (HUGE),
as drivers/block/zram/zram_drv.c does. Any byte offset and length work: partial pages are
read-modify-written, unwritten pages read as zeros, and an I/O past the disk size raises
OutOfRange before anything changes. mem_limit fails a page whose allocation takes the pool
over the limit with MemLimitExceeded (ENOMEM), leaving that page and the later ones of the
call untouched, as the kernel does (allocate first, check, free the new object on failure).
The counters are those of mm_stat and io_stat with the kernel's exact semantics. For the
FUSE mount the work is split so that compression and decompression can run on worker
threads (prepare_write, finish_read: CPU only, thread-safe, no state touched) while the page
table and the pool are only touched by one owner thread (commit_write, fetch, discard and the
rest, which never block).
"""

from __future__ import annotations

import errno
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .codecs import Codec, DecompressError
from .zsmalloc import HUGE_CLASS_SIZE, PoolStatistics, ZsPool

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = [
    "CHUNK_PAGES",
    "FLAG_HUGE",
    "FLAG_IDLE",
    "FLAG_INCOMPRESSIBLE",
    "FLAG_RECOMPRESSED",
    "FLAG_SAME",
    "FLAG_STORED",
    "FLAG_WB",
    "PAGE_SIZE",
    "MemLimitExceeded",
    "OutOfRange",
    "PageCorrupt",
    "PageStore",
    "PendingRead",
    "PreparedWrite",
    "StoreStatistics",
]

PAGE_SIZE = 4096
_PAGE_SHIFT = 12
_PAGE_MASK = PAGE_SIZE - 1
_CHUNK_SHIFT = 9
CHUNK_PAGES = 1 << _CHUNK_SHIFT  # 512 pages (2 MiB of device) per page-table chunk
_CHUNK_MASK = CHUNK_PAGES - 1

# Per-page flags (one byte). STORED marks an allocated slot; WB, RECOMPRESSED and
# INCOMPRESSIBLE are reserved for the writeback and recompression tiers.
FLAG_SAME = 0x01  # the value is the fill word; no pool object
FLAG_HUGE = 0x02  # the pool object is the raw 4096-byte page
FLAG_IDLE = 0x04  # marked by mark_idle(), cleared by any access
FLAG_WB = 0x08  # written back to a backing device (reserved)
FLAG_RECOMPRESSED = 0x10  # recompressed with a secondary algorithm (reserved)
FLAG_INCOMPRESSIBLE = 0x20  # recompression found nothing better (reserved)
FLAG_STORED = 0x80
_NOT_IDLE = 0xFF ^ FLAG_IDLE
_FLAGS_STORED_SAME = FLAG_STORED | FLAG_SAME
_FLAGS_STORED_HUGE = FLAG_STORED | FLAG_HUGE
_STORED_OR_SAME = FLAG_STORED | FLAG_SAME

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

    __slots__ = ("offset", "length", "first", "payloads")

    def __init__(self, offset: int, length: int, first: int, payloads: list[int | bytes]) -> None:
        self.offset = offset
        self.length = length
        self.first = first
        self.payloads = payloads


class _Chunk:
    """Page-table slots for CHUNK_PAGES consecutive pages: 13 bytes a page."""

    __slots__ = ("vals", "flags", "atime", "used")

    def __init__(self) -> None:
        self.vals = array("Q", _ZERO_Q)  # pool handle, or fill word when FLAG_SAME
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
        self._max_pages = 0
        self._failed_reads = 0
        self._failed_writes = 0
        self._notify_free = 0
        self._reads = 0
        self._writes = 0

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
        if (
            type(data) is bytes
            and len(data) == PAGE_SIZE
            and not offset & _PAGE_MASK
            and 0 <= offset < self._disksize
            and not self._closed
        ):
            # One whole page (a 4 KiB request, the common small write): no batch objects.
            payload = self._encode_one(data)
            if not self._put(offset >> _PAGE_SHIFT, [payload], self._now(), self._limit_pages):
                self._failed_writes += 1
                raise MemLimitExceeded(0, self._limit_pages << _PAGE_SHIFT)
            self._writes += 1
            return
        self.commit_write(self.prepare_write(offset, data))

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
        npages = mv.nbytes >> _PAGE_SHIFT
        compress = self._compress
        huge = HUGE_CLASS_SIZE
        out: list[int | bytes] = []
        append = out.append
        if npages < _NUMPY_SAME_MIN:
            for pos in range(0, npages << _PAGE_SHIFT, PAGE_SIZE):
                page = mv[pos : pos + PAGE_SIZE]
                raw = page.tobytes()
                word = raw[:8]
                if raw == word * _WORDS_PER_PAGE:
                    append(int.from_bytes(word, "little"))
                    continue
                c = compress(raw)
                append(raw if len(c) >= huge else c)
            return out
        same = _same_filled(mv, npages)
        for k, pos in enumerate(range(0, npages << _PAGE_SHIFT, PAGE_SIZE)):
            if same is not None:
                word_or_none = same.get(k)
                if word_or_none is not None:
                    append(word_or_none)
                    continue
            page = mv[pos : pos + PAGE_SIZE]
            c = compress(page)
            append(page.tobytes() if len(c) >= huge else c)
        return out

    def _encode_one(self, raw: bytes) -> int | bytes:
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
        limit = self._limit_pages
        head, tail = prepared.head, prepared.tail
        done = 0
        try:
            if head is not None:
                index, at, piece = head
                if not self._put(index, [self._merge(index, at, piece)], now, limit):
                    raise self._limit_failure(prepared, index)
                done += 1
            payloads = prepared.payloads
            if payloads:
                n = self._put(prepared.first, payloads, now, limit)
                done += n
                if n < len(payloads):
                    raise self._limit_failure(prepared, prepared.first + n)
            if tail is not None:
                index, at, piece = tail
                if not self._put(index, [self._merge(index, at, piece)], now, limit):
                    raise self._limit_failure(prepared, index)
                done += 1
        except PageCorrupt:
            self._failed_writes += 1
            raise
        finally:
            self._writes += done

    def _limit_failure(self, prepared: PreparedWrite, index: int) -> MemLimitExceeded:
        self._failed_writes += 1
        written = max(0, (index << _PAGE_SHIFT) - prepared.offset)
        return MemLimitExceeded(written, self._limit_pages << _PAGE_SHIFT)

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
        data = self._pool.read(val)
        if f & FLAG_HUGE:
            return data
        try:
            return self._decompress(data, PAGE_SIZE)
        except DecompressError as exc:
            raise PageCorrupt(index, str(exc)) from None

    def _put(self, first: int, payloads: list[int | bytes], now: int, limit: int) -> int:
        """Store payloads for pages first, first+1, ...; return how many were stored (fewer
        than given when the next allocation would take the pool over ``limit`` pages)."""
        pool = self._pool
        store = pool.store
        pfree = pool.free
        chunks = self._chunks
        total = len(payloads)
        d_stored = d_same = d_huge = d_huge_since = d_compr = d_idle = 0
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
                for p in batch:
                    if type(p) is int:
                        new = p
                        nf = _FLAGS_STORED_SAME
                        d_same += 1
                    else:
                        new = store(p, limit)  # type: ignore[arg-type]
                        if not new:
                            break  # over mem_limit: this page and the rest stay as they were
                        n = len(p)  # type: ignore[arg-type]
                        d_compr += n
                        if n == PAGE_SIZE:
                            nf = _FLAGS_STORED_HUGE
                            d_huge += 1
                            d_huge_since += 1
                        else:
                            nf = FLAG_STORED
                    old = flags[j]
                    if old:
                        if old & FLAG_SAME:
                            d_same -= 1
                        else:
                            d_compr -= pfree(vals[j])
                            if old & FLAG_HUGE:
                                d_huge -= 1
                        if old & FLAG_IDLE:
                            d_idle -= 1
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
            self._stored += d_stored
            self._same += d_same
            self._huge += d_huge
            self._huge_since += d_huge_since
            self._compr += d_compr
            self._idle += d_idle
            if chunk is not None and not chunk.used:
                del chunks[ci]  # created for a page that could not be stored
        return done

    # ------------------------------------------------------------------------ reads

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; unwritten pages read as zeros."""
        if (
            length == PAGE_SIZE
            and not offset & _PAGE_MASK
            and 0 <= offset < self._disksize
            and not self._closed
        ):
            # One whole page (a 4 KiB request, the common small read): no batch objects.
            index = offset >> _PAGE_SHIFT
            self._reads += 1
            try:
                return self._page(index, touch=True)
            except PageCorrupt:
                with self._error_lock:
                    self._failed_reads += 1
                raise
        return self.finish_read(self.fetch(offset, length))

    def fetch(self, offset: int, length: int) -> PendingRead:
        """Copy the compressed pages of a read out of the pool (no decompression). Marks
        the pages accessed: clears their idle flag and refreshes their access time."""
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
            pos = [base + j for j, f in enumerate(seg, j0) if f & _STORED_OR_SAME == FLAG_STORED]
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
        return PendingRead(offset, length, first, payloads)

    def finish_read(self, pending: PendingRead) -> bytes:
        """Decompress and assemble a fetched read. CPU only and thread-safe."""
        if not pending.payloads:
            return b""
        decompress = self._decompress
        parts: list[bytes] = []
        append = parts.append
        for k, p in enumerate(pending.payloads):
            if type(p) is int:
                append(_fill_page(p))
            elif len(p) == PAGE_SIZE:  # type: ignore[arg-type]
                append(p)  # type: ignore[arg-type]
            else:
                try:
                    append(decompress(p, PAGE_SIZE))  # type: ignore[arg-type]
                except DecompressError as exc:
                    with self._error_lock:
                        self._failed_reads += 1
                    raise PageCorrupt(pending.first + k, str(exc)) from None
        out = parts[0] if len(parts) == 1 else b"".join(parts)
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
        self._put(index, [self._merge(index, at, bytes(count))], now, 0)

    def _free_range(self, first: int, stop: int) -> None:
        chunks = self._chunks
        c0 = first >> _CHUNK_SHIFT
        c1 = (stop - 1) >> _CHUNK_SHIFT
        if c1 - c0 + 1 > len(chunks):
            targets = sorted(c for c in chunks if c0 <= c <= c1)
        else:
            targets = [c for c in range(c0, c1 + 1) if c in chunks]
        pool = self._pool
        pfree = pool.free
        d_stored = d_same = d_huge = d_compr = d_idle = 0
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
                f = flags[j]
                if f & FLAG_SAME:
                    d_same += 1
                else:
                    d_compr += pfree(vals[j])
                    if f & FLAG_HUGE:
                        d_huge += 1
                if f & FLAG_IDLE:
                    d_idle += 1
                vals[j] = 0
                flags[j] = 0
                atime[j] = 0
            d_stored += len(live)
            chunk.used -= len(live)
            if not chunk.used:
                del chunks[c]
        self._stored -= d_stored
        self._same -= d_same
        self._huge -= d_huge
        self._compr -= d_compr
        self._idle -= d_idle

    # ------------------------------------------------------------ maintenance, stats

    def mark_idle(self, min_age_s: float | None = None) -> int:
        """Mark stored pages idle, as the kernel's idle attribute does; return how many are.

        With ``min_age_s`` only pages not accessed for at least that many seconds are
        marked, and the others lose an idle mark left by an earlier call. As in mainline
        zram, same-filled (and written-back) pages are never marked: nothing could be done
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
        self._pool.reset_peak()
        self._max_pages = 0

    def statistics(self) -> StoreStatistics:
        pool = self._pool.statistics()
        return StoreStatistics(
            orig_data_size=self._stored << _PAGE_SHIFT,
            compr_data_size=self._compr,
            mem_used_total=self.mem_used_total,
            mem_limit=self._limit_pages << _PAGE_SHIFT,
            mem_used_max=max(self._max_pages, self._pool.peak_pages) << _PAGE_SHIFT,
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
        )

    def close(self) -> None:
        """Free every page and give the pool's memory back to the OS. Counters keep their
        values; any later I/O raises ValueError. Dropping the store has the same effect."""
        self._closed = True
        self._max_pages = max(self._max_pages, self._pool.peak_pages)
        self._chunks = {}
        self._pool = ZsPool()  # the old pool's arenas are unmapped when it is dropped

    def page_flags(self, index: int) -> int:
        """The flags byte of page ``index`` (0: not stored). For tests and debugging."""
        chunk = self._chunks.get(index >> _CHUNK_SHIFT)
        return 0 if chunk is None else chunk.flags[index & _CHUNK_MASK]


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
