"""A handle-based object allocator built like the kernel's zsmalloc (mm/zsmalloc.c).

Objects of 1..4096 bytes are rounded up to one of 123 merged size classes (32 bytes in
16-byte steps, each class packing its objects into a "zspage" chain of 1..8 pages chosen by
the kernel's get_pages_per_zspage rule), so the pool wastes only the tail of each zspage.
Pages come from a page allocator over large private anonymous mmap arenas; a zspage records
its page numbers (they need not be contiguous, and an object may straddle two of them), and
an emptied zspage is freed at once with its pages madvise(MADV_DONTNEED)'d, so
``total_pages * PAGE_SIZE`` is what the process really holds. Callers get opaque integer
handles that index a handle table of packed (zspage id, byte offset) locations, which is what
lets compact() move objects from sparse zspages into full ones behind the caller's back. All
per-object and per-zspage state lives in flat ``array`` columns (free slots are chained
in-band in the object memory, freed handles in-band in the handle table), partially used
zspages sit in the kernel's fullness groups, and full zspages are in no Python container at
all. As in the kernel, each class keeps its counters (live objects, zspages) up to date as
objects and zspages come and go, so statistics() costs the same whatever the pool holds. The
pool is not thread-safe: one owner (the event loop) calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = [
    "CLASSES",
    "HUGE_CLASS_SIZE",
    "PAGE_SIZE",
    "ClassStatistics",
    "InvalidHandle",
    "PoolStatistics",
    "SizeClass",
    "ZsPool",
    "size_class",
    "set_memory_locked",
]

PAGE_SIZE = 4096
_PAGE_SHIFT = 12
_PAGE_MASK = PAGE_SIZE - 1

_MIN_ALLOC_SIZE = 32  # ZS_MIN_ALLOC_SIZE
_CLASS_DELTA = 16  # ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> CLASS_BITS(8)
_RAW_CLASSES = (PAGE_SIZE - _MIN_ALLOC_SIZE + _CLASS_DELTA - 1) // _CLASS_DELTA + 1  # 255
_MAX_CHAIN = 8  # CONFIG_ZSMALLOC_CHAIN_SIZE

# A location is (zspage id << _OFF_BITS) | byte offset inside the zspage (< 8 * 4096).
_OFF_BITS = 15
_OFF_MASK = (1 << _OFF_BITS) - 1
_NO_SLOT = 0xFFFF  # end of a zspage's in-band free-slot chain

# Page allocator: arenas of 1024 pages (4 MiB of address space, touched lazily), so even a
# 64 GiB pool needs 16384 mappings, well under vm.max_map_count (65530).
_ARENA_SHIFT = 10
_ARENA_PAGES = 1 << _ARENA_SHIFT
_ARENA_MASK = _ARENA_PAGES - 1
_ARENA_BYTES = _ARENA_PAGES * PAGE_SIZE

# Kernel fullness groups: ZS_INUSE_RATIO_0, _10 ... _90, _99, _100.
_GROUP_EMPTY = 0
_GROUP_FULL = 11
_NGROUPS = 12
_PARTIAL_GROUPS_DESC = tuple(range(_GROUP_FULL - 1, _GROUP_EMPTY, -1))  # 10 (99%) .. 1 (10%)


_MLOCK_ONFAULT = 1
_LIBC: ctypes.CDLL | None = None
# Whether the process runs under mlockall(MCL_FUTURE | MCL_ONFAULT), which makes the kernel
# refuse MADV_DONTNEED (EINVAL) on the locked arenas. None: not known yet. The daemon says so
# once through set_memory_locked(); a process that locked its memory without saying so is
# found out at its first zspage release (one EINVAL), and the answer is kept from then on.
_memory_locked: bool | None = None


def set_memory_locked(locked: bool) -> None:
    """Tell every pool whether the process's memory is mlockall()ed (the daemon's harden())."""
    global _memory_locked
    _memory_locked = locked


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


class InvalidHandle(ValueError):
    """A handle that is 0, out of range, never allocated or already freed."""


@dataclass(frozen=True, slots=True)
class SizeClass:
    """One merged size class: objects up to ``size`` bytes, packed in zspages of
    ``pages_per_zspage`` pages holding ``objs_per_zspage`` objects each."""

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int


@dataclass(frozen=True, slots=True)
class ClassStatistics:
    """Per-class counters, as in the kernel's /sys/kernel/debug/zsmalloc/<pool>/classes."""

    size: int
    objs_per_zspage: int
    pages_per_zspage: int
    objs_allocated: int  # object slots in this class's existing zspages
    objs_used: int  # live objects
    pages_used: int  # pages held by this class's zspages
    freeable_pages: int  # kernel zs_can_compact(): pages compaction could free


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of the whole pool."""

    total_pages: int
    pages_compacted: int
    classes: tuple[ClassStatistics, ...]


def _class_statistics(sc: SizeClass, zspages: int, objs_used: int) -> ClassStatistics:
    """One class's figures from its two kept counters: zspages held and live objects."""
    allocated = zspages * sc.objs_per_zspage
    return ClassStatistics(
        size=sc.size,
        objs_per_zspage=sc.objs_per_zspage,
        pages_per_zspage=sc.pages_per_zspage,
        objs_allocated=allocated,
        objs_used=objs_used,
        pages_used=zspages * sc.pages_per_zspage,
        # kernel zs_can_compact(): whole zspages' worth of free slots, in pages
        freeable_pages=(allocated - objs_used) // sc.objs_per_zspage * sc.pages_per_zspage,
    )


def _pages_per_zspage(size: int) -> int:
    """The kernel's get_pages_per_zspage(): the chain length (1..8 pages) that maximises the
    integer percentage of the zspage used by whole objects; the first length wins ties."""
    best_used_pct = 0
    best = 1
    for n in range(1, _MAX_CHAIN + 1):
        span = n * PAGE_SIZE
        used_pct = (span - span % size) * 100 // span
        if used_pct > best_used_pct:
            best_used_pct = used_pct
            best = n
    return best


def _build_classes() -> tuple[tuple[SizeClass, ...], array[int]]:
    """Merged classes (ascending) and the size -> class index lookup table (4097 entries).

    As in zs_create_pool(), raw classes are visited from the largest down and a class with the
    same (pages_per_zspage, objs_per_zspage) as the previously created (next larger) one is
    merged into it, so a merged class carries the largest size of its run."""
    merged_desc: list[tuple[int, int, int]] = []
    raw_to_desc = [0] * _RAW_CLASSES
    for raw in range(_RAW_CLASSES - 1, -1, -1):
        size = min(_MIN_ALLOC_SIZE + raw * _CLASS_DELTA, PAGE_SIZE)
        pages = _pages_per_zspage(size)
        objs = pages * PAGE_SIZE // size
        if not merged_desc or merged_desc[-1][1:] != (pages, objs):
            merged_desc.append((size, pages, objs))
        raw_to_desc[raw] = len(merged_desc) - 1
    count = len(merged_desc)
    classes = tuple(SizeClass(i, *merged_desc[count - 1 - i]) for i in range(count))
    lut = array("B", [0])  # entry 0 is never used: alloc() rejects size 0
    for n in range(1, PAGE_SIZE + 1):
        raw = (max(n, _MIN_ALLOC_SIZE) - _MIN_ALLOC_SIZE + _CLASS_DELTA - 1) // _CLASS_DELTA
        lut.append(count - 1 - raw_to_desc[raw])
    return classes, lut


CLASSES, _LUT = _build_classes()


def size_class(size: int) -> int:
    """The index in CLASSES of the class an object of ``size`` bytes (1..4096) goes to:
    recompression only replaces an object when the new one lands in a smaller class."""
    return _LUT[size]


# The smallest object size whose class holds one object on one page. With chain 8 the largest
# shared class is 3632 bytes (9 objects in 8 pages), so this is 3633. The kernel's
# zs_huge_class_size() reports 3632 - (ZS_HANDLE_SIZE - 1) = 3625 instead, because zs_malloc()
# adds an 8-byte in-band handle to every object before the class lookup; this pool keeps
# handles out of band, so an object of exactly 3632 bytes still shares a zspage.
HUGE_CLASS_SIZE: int = next(
    n
    for n in range(1, PAGE_SIZE + 1)
    if CLASSES[_LUT[n]].pages_per_zspage == 1 and CLASSES[_LUT[n]].objs_per_zspage == 1
)

# Flat per-class columns for the hot paths.
_CSIZE = tuple(c.size for c in CLASSES)
_COBJS = tuple(c.objs_per_zspage for c in CLASSES)
_CPPZ = tuple(c.pages_per_zspage for c in CLASSES)


def _group_table(objs: int) -> bytes:
    """in-use count -> fullness group (kernel get_fullness_group())."""
    out = bytearray([_GROUP_EMPTY])
    for inuse in range(1, objs):
        out.append(100 * inuse // objs // 10 + 1)
    out.append(_GROUP_FULL)
    return bytes(out)


_GTAB = tuple(_group_table(c.objs_per_zspage) for c in CLASSES)
_NO_PAGES = array("I", [0] * _MAX_CHAIN)
_PLAIN_BYTES = bytes | bytearray  # built once: a union literal in isinstance() costs 45 ns


class ZsPool:
    """A zsmalloc pool: ``alloc`` a handle, ``write`` its bytes, ``read`` them back, ``free``.

    Handles are ints > 0 and stay valid across ``compact()``. Misuse raises InvalidHandle."""

    __slots__ = (
        "_arenas",
        "_bases",
        "_words",
        "_next_page",
        "_free_pages",
        "_unmadvised",
        "_total_pages",
        "_pages_compacted",
        "_zcls",
        "_zinuse",
        "_zfree",
        "_zbump",
        "_zpages",
        "_free_zids",
        "_cur",
        "_groups",
        "_loc",
        "_hsize",
        "_hfree",
        "_cls_used",
        "_cls_zspages",
        "_cls_stats",
    )

    def __init__(self) -> None:
        # Page allocator: arenas, each also viewed as 32-bit words for in-band slot links.
        self._arenas: list[mmap.mmap] = []
        self._bases = array("Q")  # each arena's address, for munlock/mlock2 (see _dontneed)
        self._words: list[memoryview] = []
        self._next_page = 0  # first never-used page number
        # Released pages, reused last-in first-out: O(1) and 4 bytes per page, and
        # _release_zspage() pushes a zspage's pages so that they pop back lowest first.
        self._free_pages = array("I")
        # While a release batch is open (release_batch()): pages of emptied zspages not yet
        # given back to the OS; None otherwise. See release_batch().
        self._unmadvised: array[int] | None = None
        self._total_pages = 0
        self._pages_compacted = 0
        # Zspages: parallel columns indexed by zspage id; ids are recycled via _free_zids.
        self._zcls = array("H")  # class index
        self._zinuse = array("H")  # live objects (0 <=> the id is free)
        self._zfree = array("H")  # byte offset of the first free slot, or _NO_SLOT
        self._zbump = array("H")  # byte offset of the first never-used slot
        self._zpages = array("I")  # 8 page numbers per zspage
        self._free_zids = array("I")
        # Per class: the zspage allocations go to (-1: none; it is in no group while it is
        # current), and the fullness groups of the other partially used zspages. A dict
        # keyed by zspage id gives O(1) insert, delete and pop; full zspages are in none.
        self._cur = [-1] * len(CLASSES)
        self._groups: list[list[dict[int, None]]] = [[{} for _ in range(_NGROUPS)] for _ in CLASSES]
        # Handles: location and size; a freed entry has size 0 and its location holds the
        # next free handle (0 ends the chain). Handle 0 is reserved, never valid.
        self._loc = array("Q", [0])
        self._hsize = array("H", [0])
        self._hfree = 0
        # Per-class counters kept as objects and zspages come and go (statistics() reads
        # them; the kernel's class_stat_inc/dec): live objects, and zspages held.
        self._cls_used = array("Q", [0] * len(CLASSES))
        self._cls_zspages = array("Q", [0] * len(CLASSES))
        # The last ClassStatistics built per class, reused while its counters are unchanged.
        self._cls_stats = [_class_statistics(sc, 0, 0) for sc in CLASSES]

    # ----------------------------------------------------------------- public interface

    @property
    def total_pages(self) -> int:
        """Pages held by zspages (what the pool costs the process, in pages)."""
        return self._total_pages

    def store(self, data: bytes) -> int:
        """alloc(len(data)) and write(data) in one step, for the page store's hot path.
        (mem_limit and the peak are zram's policy, not the allocator's: the page store
        checks total_pages after this call and frees the object again if it is over.)

        ``data`` must be bytes or bytearray of 1..4096 bytes (not checked beyond that)."""
        size = len(data)
        if not 0 < size <= PAGE_SIZE:
            raise ValueError(f"object size {size} not in 1..{PAGE_SIZE}")
        c = _LUT[size]
        zid = self._cur[c]
        if zid < 0:
            zid = self._pick_zspage(c)
        off = self._take_slot(zid, c)
        zinuse = self._zinuse
        n = zinuse[zid] + 1
        zinuse[zid] = n
        self._cls_used[c] += 1
        if n == _COBJS[c]:
            self._cur[c] = -1
        loc = self._loc
        h = self._hfree
        if h:
            self._hfree = loc[h]
            loc[h] = (zid << _OFF_BITS) | off
            self._hsize[h] = size
        else:
            h = len(loc)
            loc.append((zid << _OFF_BITS) | off)
            self._hsize.append(size)
        self._copy_in((zid << _OFF_BITS) | off, data, size)
        return h

    def growth(self, size: int) -> int:
        """The pages store() of a ``size``-byte object would add to total_pages: 0 when its
        class has a free slot in an existing zspage, else the class's zspage length. O(1):
        lets the page store refuse a write at mem_limit without allocating anything."""
        c = _LUT[size]
        if self._cls_used[c] < self._cls_zspages[c] * _COBJS[c]:
            return 0
        return _CPPZ[c]

    def read_many(self, handles: list[int]) -> list[bytes]:
        """read() of each handle, in order (one call for a batch: the fetch hot path)."""
        locs = self._loc
        size_of = self.size_of
        copy_out = self._copy_out
        out = []
        for h in handles:
            size = size_of(h)  # validates before the handle indexes anything
            out.append(copy_out(locs[h], size))
        return out

    def alloc(self, size: int) -> int:
        """Reserve room for an object of ``size`` bytes (1..4096); return its handle."""
        if not 0 < size <= PAGE_SIZE:
            raise ValueError(f"object size {size} not in 1..{PAGE_SIZE}")
        c = _LUT[size]
        zid = self._cur[c]
        if zid < 0:
            zid = self._pick_zspage(c)
        off = self._take_slot(zid, c)
        n = self._zinuse[zid] + 1
        self._zinuse[zid] = n
        self._cls_used[c] += 1
        if n == _COBJS[c]:
            self._cur[c] = -1  # full: tracked nowhere until a free makes room
        h = self._hfree
        if h:
            self._hfree = self._loc[h]
            self._loc[h] = (zid << _OFF_BITS) | off
            self._hsize[h] = size
        else:
            h = len(self._loc)
            self._loc.append((zid << _OFF_BITS) | off)
            self._hsize.append(size)
        return h

    def size_of(self, handle: int) -> int:
        """The size given to alloc() for ``handle``."""
        if handle <= 0:
            raise InvalidHandle(handle)
        try:
            size = self._hsize[handle]
        except (IndexError, TypeError):
            raise InvalidHandle(handle) from None
        if not size:
            raise InvalidHandle(handle)
        return size

    def write(self, handle: int, data: Buffer) -> None:
        """Store ``data`` (exactly size_of(handle) bytes) in the object."""
        size = self.size_of(handle)
        if not isinstance(data, _PLAIN_BYTES):
            data = memoryview(data).cast("B")
        if len(data) != size:
            raise ValueError(f"handle {handle} holds {size} bytes, got {len(data)}")
        self._copy_in(self._loc[handle], data, size)

    def read(self, handle: int) -> bytes:
        """The bytes last written to the object (size_of(handle) of them)."""
        size = self.size_of(handle)  # validates before the handle indexes anything
        return self._copy_out(self._loc[handle], size)

    def free(self, handle: int) -> int:
        """Release the object and return its size; an emptied zspage gives its pages back
        at once."""
        size = self.size_of(handle)
        loc = self._loc[handle]
        self._hsize[handle] = 0
        self._loc[handle] = self._hfree
        self._hfree = handle
        zid = loc >> _OFF_BITS
        c = self._zcls[zid]
        n = self._zinuse[zid]
        m = n - 1
        self._zinuse[zid] = m
        self._cls_used[c] -= 1
        cur = self._cur[c]
        gt = _GTAB[c]
        if not m:
            if cur == zid:
                self._cur[c] = -1
            elif n != _COBJS[c]:
                del self._groups[c][gt[n]][zid]
            self._release_zspage(zid)
            return size
        # Chain the slot into the zspage's in-band free list (offsets are 16-aligned and
        # objects >= 32 bytes, so the 4-byte link never crosses a page).
        off = loc & _OFF_MASK
        pg = self._zpages[(zid << 3) | (off >> _PAGE_SHIFT)]
        self._words[pg >> _ARENA_SHIFT][
            (((pg & _ARENA_MASK) << _PAGE_SHIFT) | (off & _PAGE_MASK)) >> 2
        ] = self._zfree[zid]
        self._zfree[zid] = off
        g_new = gt[m]
        g_old = gt[n]
        if g_new == g_old:
            return size
        groups = self._groups[c]
        if cur == zid:
            # The current zspage fell a group: let the next alloc look for a fuller one.
            groups[g_new][zid] = None
            self._cur[c] = -1
        elif g_old == _GROUP_FULL:
            groups[g_new][zid] = None
            if cur >= 0:
                g_cur = gt[self._zinuse[cur]]
                if g_cur < g_new:
                    groups[g_cur][cur] = None
                    self._cur[c] = -1
        else:
            del groups[g_old][zid]
            groups[g_new][zid] = None
        return size

    def compact(self) -> int:
        """Per class, move live objects out of the least used zspages into the fullest
        partial ones and free the emptied zspages. Return the number of pages freed."""
        for c, zid in enumerate(self._cur):
            if zid >= 0:
                self._groups[c][_GTAB[c][self._zinuse[zid]]][zid] = None
                self._cur[c] = -1
        zinuse = self._zinuse
        plans: list[tuple[int, list[int], list[int]]] = []
        for c, groups in enumerate(self._groups):
            partial = [z for g in _PARTIAL_GROUPS_DESC for z in groups[g]]
            if len(partial) < 2:
                continue
            objs = _COBJS[c]
            # As in zs_can_compact(): each freed zspage consumes objs_per_zspage free slots,
            # so the (free slots // objs) least used zspages can all be emptied, and a zspage
            # is only ever chosen as a source if its objects fit in the remaining ones.
            nsrc = (len(partial) * objs - sum(zinuse[z] for z in partial)) // objs
            if nsrc:
                partial.sort(key=zinuse.__getitem__)
                plans.append((c, partial[:nsrc], partial[nsrc:][::-1]))  # dsts fullest first
        if not plans:
            return 0
        residents = self._handles_in([z for _, srcs, _ in plans for z in srcs])
        freed = 0
        for c, srcs, dsts in plans:
            objs = _COBJS[c]
            di = 0
            dst = dsts[0]
            for src in srcs:
                for h in residents[src]:
                    while zinuse[dst] == objs:
                        di += 1
                        dst = dsts[di]
                    self._migrate(h, dst, c)
                if zinuse[src]:
                    raise AssertionError(f"zspage {src} not emptied by compaction")
                self._release_zspage(src)
                freed += _CPPZ[c]
            groups = self._groups[c]
            for d in groups:
                d.clear()
            gt = _GTAB[c]
            for z in dsts:
                g = gt[zinuse[z]]
                if g != _GROUP_FULL:
                    groups[g][z] = None
        self._pages_compacted += freed
        return freed

    def statistics(self) -> PoolStatistics:
        """An immutable snapshot of the pool and per-class counters: O(classes), not
        O(pool), since the counters are kept as objects and zspages come and go (and a
        class whose counters did not change keeps its last ClassStatistics)."""
        used = self._cls_used
        zspages = self._cls_zspages
        cache = self._cls_stats
        for c, cs in enumerate(cache):
            u = used[c]
            z = zspages[c]
            if cs.objs_used != u or cs.pages_used != z * _CPPZ[c]:
                cache[c] = _class_statistics(CLASSES[c], z, u)
        return PoolStatistics(self._total_pages, self._pages_compacted, tuple(cache))

    def _recount(self) -> PoolStatistics:
        """statistics() recomputed from scratch by a walk over every zspage (for tests:
        the kept counters must always equal this)."""
        ncls = len(CLASSES)
        inuse = np.array(self._zinuse, dtype=np.int64)
        cls = np.array(self._zcls, dtype=np.int64)
        live = inuse > 0
        zspages = np.bincount(cls[live], minlength=ncls)
        used = np.bincount(cls[live], weights=inuse[live], minlength=ncls)
        out = tuple(
            _class_statistics(sc, int(zspages[sc.index]), int(used[sc.index])) for sc in CLASSES
        )
        total = sum(cs.pages_used for cs in out)
        return PoolStatistics(total, self._pages_compacted, out)

    # ------------------------------------------------------------------------ internals

    def _pick_zspage(self, c: int) -> int:
        """Make the fullest partially used zspage of class ``c`` current, or a new one."""
        if _COBJS[c] > 1:
            groups = self._groups[c]
            for g in _PARTIAL_GROUPS_DESC:
                d = groups[g]
                if d:
                    zid = d.popitem()[0]
                    self._cur[c] = zid
                    return zid
        zid = self._new_zspage(c)
        self._cur[c] = zid
        return zid

    def _new_zspage(self, c: int) -> int:
        ppz = _CPPZ[c]
        if self._unmadvised:
            self._give_back()  # a page reused now must not be DONTNEED'd afterwards
        free_pages = self._free_pages
        pages: list[int] = []
        try:
            for _ in range(ppz):
                pages.append(free_pages.pop() if free_pages else self._new_page())
        except BaseException:  # e.g. mmap failing with ENOMEM: leave the pool as it was
            free_pages.extend(reversed(pages))
            raise
        if self._free_zids:
            zid = self._free_zids.pop()
            self._zcls[zid] = c
            self._zfree[zid] = _NO_SLOT
            self._zbump[zid] = 0
        else:
            zid = len(self._zcls)
            self._zcls.append(c)
            self._zinuse.append(0)
            self._zfree.append(_NO_SLOT)
            self._zbump.append(0)
            self._zpages.extend(_NO_PAGES)
        base = zid << 3
        for k, pg in enumerate(pages):
            self._zpages[base + k] = pg
        self._cls_zspages[c] += 1
        self._total_pages += ppz
        return zid

    def _new_page(self) -> int:
        pg = self._next_page
        if pg >> _ARENA_SHIFT == len(self._arenas):
            arena = mmap.mmap(
                -1,
                _ARENA_BYTES,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,  # private: DONTNEED frees it
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            self._arenas.append(arena)
            self._bases.append(ctypes.addressof(ctypes.c_char.from_buffer(arena)))
            self._words.append(memoryview(arena).cast("I"))
        self._next_page = pg + 1
        return pg

    def _release_zspage(self, zid: int) -> None:
        """Return an empty zspage's pages to the OS and its id for reuse."""
        c = self._zcls[zid]
        ppz = _CPPZ[c]
        base = zid << 3
        pages = sorted(self._zpages[base : base + ppz])
        if self._unmadvised is not None:
            self._unmadvised.extend(pages)  # given back when the batch closes
        else:
            self._dontneed_runs(pages)
        pages.reverse()  # so they pop back lowest first, contiguous for the next zspage
        self._free_pages.extend(pages)
        self._total_pages -= ppz
        self._cls_zspages[c] -= 1
        self._zinuse[zid] = 0
        self._free_zids.append(zid)

    def _dontneed_runs(self, pages: list[int]) -> None:
        """madvise each run of consecutive pages (sorted) within one arena in a single call."""
        start = prev = pages[0]
        for pg in pages[1:]:
            if pg != prev + 1 or not pg & _ARENA_MASK:
                self._dontneed(start, prev - start + 1)
                start = pg
            prev = pg
        self._dontneed(start, prev - start + 1)

    def _give_back(self) -> None:
        """Give the pages collected by an open release batch back to the OS now."""
        pending = self._unmadvised
        if pending:
            pages = sorted(pending)
            del pending[:]
            self._dontneed_runs(pages)

    @contextlib.contextmanager
    def release_batch(self) -> Iterator[None]:
        """Within the block, emptied zspages give their pages back to the OS together when
        it ends (one madvise per run of consecutive pages, instead of one, or with mlockall
        three syscalls, per zspage): a discard of many huge pages, each its own one-page
        zspage, frees several times faster. Allocating inside the block stays correct (the
        pending pages are given back before any page is reused). Not reentrant."""
        if self._unmadvised is not None:
            raise RuntimeError("release_batch() is already open")
        self._unmadvised = array("I")
        try:
            yield
        finally:
            try:
                self._give_back()
            finally:
                self._unmadvised = None

    def _dontneed(self, first: int, count: int) -> None:
        global _memory_locked
        arena = first >> _ARENA_SHIFT
        offset = (first & _ARENA_MASK) << _PAGE_SHIFT
        length = count << _PAGE_SHIFT
        if not _memory_locked:
            try:
                self._arenas[arena].madvise(mmap.MADV_DONTNEED, offset, length)
                return
            except OSError as exc:
                # EINVAL on a private anonymous mapping means the pages are locked; that
                # is learnt once (see _memory_locked), anything else is a real failure.
                if exc.errno != errno.EINVAL or _memory_locked is not None:
                    raise
                _memory_locked = True
        # The daemon runs under mlockall(MCL_FUTURE | MCL_ONFAULT) so that swap never needs
        # memory the kernel must first swap out, and the kernel refuses DONTNEED on locked
        # pages. Unlock the run, drop it, then lock it again on-fault: the pages are gone now
        # and come back (locked) only when a zspage touches them.
        addr = self._bases[arena] + offset
        libc = _libc()
        if libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(length)) != 0:
            raise OSError(ctypes.get_errno(), "munlock failed")
        self._arenas[arena].madvise(mmap.MADV_DONTNEED, offset, length)
        libc.mlock2(ctypes.c_void_p(addr), ctypes.c_size_t(length), _MLOCK_ONFAULT)

    def close(self) -> None:
        """Unmap every arena now rather than when the pool is collected."""
        for words in self._words:
            words.release()
        self._words.clear()
        for arena in self._arenas:
            arena.close()
        self._arenas.clear()
        self._total_pages = 0

    def _handles_in(self, zids: list[int]) -> dict[int, list[int]]:
        """Live handles per zspage for the given zspage ids: one vectorised pass over the
        handle table (a zspage records no back-pointers to its objects)."""
        is_src = np.zeros(len(self._zinuse), dtype=np.bool_)
        is_src[zids] = True
        nz = len(is_src)
        loc = np.frombuffer(self._loc, dtype=np.uint64)
        size = np.frombuffer(self._hsize, dtype=np.uint16)
        try:
            zid_of = (loc >> np.uint64(_OFF_BITS)).astype(np.int64)
            np.minimum(zid_of, nz - 1, out=zid_of)  # free entries hold a chain link
            handles = np.flatnonzero((size != 0) & is_src[zid_of])
        finally:
            del loc, size  # release the exported buffers so the arrays can grow again
        owners = zid_of[handles]
        order = np.argsort(owners, kind="stable")
        handles = handles[order]
        owners = owners[order]
        out: dict[int, list[int]] = {z: [] for z in zids}
        if len(handles):
            cuts = np.flatnonzero(np.diff(owners)) + 1
            for part_h, part_z in zip(np.split(handles, cuts), np.split(owners, cuts), strict=True):
                out[int(part_z[0])] = part_h.tolist()
        return out

    def _copy_in(self, loc: int, data: Buffer, size: int) -> None:
        """Copy ``size`` bytes of ``data`` into the object at location ``loc``."""
        pi = ((loc >> _OFF_BITS) << 3) | ((loc >> _PAGE_SHIFT) & 7)
        o = loc & _PAGE_MASK
        pg = self._zpages[pi]
        a = ((pg & _ARENA_MASK) << _PAGE_SHIFT) | o
        if o + size <= PAGE_SIZE:
            self._arenas[pg >> _ARENA_SHIFT][a : a + size] = data
            return
        k = PAGE_SIZE - o  # the object straddles into the zspage's next page
        mv = memoryview(data)
        self._arenas[pg >> _ARENA_SHIFT][a : a + k] = mv[:k]
        pg = self._zpages[pi + 1]
        b = (pg & _ARENA_MASK) << _PAGE_SHIFT
        self._arenas[pg >> _ARENA_SHIFT][b : b + size - k] = mv[k:]

    def _copy_out(self, loc: int, size: int) -> bytes:
        """The ``size`` bytes of the object at location ``loc``."""
        pi = ((loc >> _OFF_BITS) << 3) | ((loc >> _PAGE_SHIFT) & 7)
        o = loc & _PAGE_MASK
        pg = self._zpages[pi]
        a = ((pg & _ARENA_MASK) << _PAGE_SHIFT) | o
        if o + size <= PAGE_SIZE:
            return self._arenas[pg >> _ARENA_SHIFT][a : a + size]
        k = PAGE_SIZE - o
        pg2 = self._zpages[pi + 1]
        b = (pg2 & _ARENA_MASK) << _PAGE_SHIFT
        return (
            self._arenas[pg >> _ARENA_SHIFT][a : a + k]
            + self._arenas[pg2 >> _ARENA_SHIFT][b : b + size - k]
        )

    def _take_slot(self, zid: int, c: int) -> int:
        """Take a free slot of zspage ``zid`` (class ``c``): the head of its in-band free
        chain, else the next never-used slot; return its byte offset in the zspage."""
        off = self._zfree[zid]
        if off == _NO_SLOT:
            off = self._zbump[zid]
            self._zbump[zid] = off + _CSIZE[c]
            return off
        pg = self._zpages[(zid << 3) | (off >> _PAGE_SHIFT)]
        self._zfree[zid] = self._words[pg >> _ARENA_SHIFT][
            (((pg & _ARENA_MASK) << _PAGE_SHIFT) | (off & _PAGE_MASK)) >> 2
        ]
        return off

    def _migrate(self, handle: int, dst: int, c: int) -> None:
        """Move one object into a free slot of zspage ``dst`` (same class ``c``)."""
        data = self.read(handle)
        src = self._loc[handle] >> _OFF_BITS
        off = self._take_slot(dst, c)
        self._zinuse[dst] += 1
        self._zinuse[src] -= 1
        self._loc[handle] = (dst << _OFF_BITS) | off
        self.write(handle, data)

    # ------------------------------------------------------------ introspection (tests)

    def _location(self, handle: int) -> tuple[int, int]:
        """(zspage id, byte offset in the zspage) of a live object."""
        self.size_of(handle)
        loc = self._loc[handle]
        return loc >> _OFF_BITS, loc & _OFF_MASK

    def _zspage_info(self, zid: int) -> tuple[int, int, tuple[int, ...]]:
        """(class index, objects in use, page numbers) of a live zspage."""
        c = self._zcls[zid]
        base = zid << 3
        return c, self._zinuse[zid], tuple(self._zpages[base : base + _CPPZ[c]])
