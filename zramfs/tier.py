"""The tier's shell: backing-store I/O on worker threads and the background tasks.

TierService runs, for every device of a mount, what PageStore decides: reads of
written-back pages (fetch lists the blocks, a worker thread reads them, fill_backing takes
them), the `writeback` and `recompress` control files, automatic writeback above the
auto_writeback mark (coldest pages first, until a few percent below it), the background
policy (recompress and write back pages idle longer than recompress_after and
writeback_after, every policy_interval seconds) and automatic compaction (auto_compact, or
memory pressure from /proc/pressure/memory). Backing I/O goes through trio.to_thread with a
limiter, so a slow disk never stalls other requests; the page table changes only on the trio
thread between awaits. One writeback or recompression runs per device at a time (the
kernel's pp_in_progress; here callers queue on a lock), and device.busy makes reset answer
EBUSY while one runs. Everything here is a decision of zramfs.tierpolicy and PageStore.
"""

from __future__ import annotations

import errno
import logging
import weakref
from collections.abc import Iterable

import trio

from .device import ControlError, DeviceTable, ZramDevice
from .pagestore import (
    FLAG_INCOMPRESSIBLE,
    FLAG_RECOMPRESSED,
    MemLimitExceeded,
    PageStore,
    PendingRead,
)
from .tierpolicy import (
    PSI_THRESHOLD,
    WAITING_HEADROOM_PERCENT,
    compaction_due,
    marks,
    pages_to_write_back,
    parse_psi_some_avg10,
)

log = logging.getLogger(__name__)

__all__ = ["ROOM_WAIT_S", "TierService"]

WRITEBACK_BATCH = 256  # pages per backing write on a worker thread (1 MiB)
RECOMPRESS_BATCH = 64  # pages recompressed between two checkpoints of the event loop
TICK_S = 0.25  # the background loop's period when nothing wakes it
ROOM_WAIT_S = 5.0  # how long a write at mem_limit waits for automatic writeback
ROOM_POLL_S = 0.05  # a waiting write retries at least this often (and after each batch)
PSI_PATH = "/proc/pressure/memory"
PSI_PERIOD_S = 2.0
PSI_COMPACT_GAP_S = 10.0


class TierService:
    """The writeback tier of one mount's DeviceTable."""

    def __init__(self, table: DeviceTable, *, io_threads: int = 2) -> None:
        self.table = table
        self._io = trio.CapacityLimiter(io_threads)
        self._locks: weakref.WeakKeyDictionary[ZramDevice, trio.Lock] = weakref.WeakKeyDictionary()
        self._wanted: weakref.WeakSet[ZramDevice] = weakref.WeakSet()  # writers waiting
        self._policy_due: weakref.WeakKeyDictionary[ZramDevice, float] = weakref.WeakKeyDictionary()
        self._wake = trio.Event()
        self._room = trio.Event()  # set (and replaced) whenever a writeback freed memory
        self._next_psi = 0.0
        self._last_psi_compact = -PSI_COMPACT_GAP_S

    def _lock(self, device: ZramDevice) -> trio.Lock:
        lock = self._locks.get(device)
        if lock is None:
            lock = self._locks[device] = trio.Lock()
        return lock

    def wake(self) -> None:
        self._wake.set()

    # -- reads and writes of the image -----------------------------------------------

    async def read(self, device: ZramDevice, store: PageStore, off: int, size: int) -> bytes:
        """A read that may touch written-back pages: their blocks are read on a worker
        thread; a block that cannot be read answers EIO (BackingReadError)."""
        pending = store.fetch(off, size)
        if pending.backing:
            await self._fill(device, store, pending)
        if len(pending.payloads) > 32:
            return await trio.to_thread.run_sync(store.finish_read, pending, limiter=self._io)
        return store.finish_read(pending)

    async def _fill(self, device: ZramDevice, store: PageStore, pending: PendingRead) -> None:
        backing = device.backing
        blocks = pending.blocks
        result: list[bytes | OSError] | None = None
        try:
            if backing is None:
                raise OSError(errno.EIO, "no backing store")
            result = await trio.to_thread.run_sync(backing.read_blocks, blocks, limiter=self._io)
        finally:
            if result is None:  # cancelled or failed: unpin the blocks, count the failure
                error = OSError(errno.EIO, "read cancelled")
                try:
                    store.fill_backing(pending, [error] * len(blocks))
                except OSError:
                    pass
        assert result is not None
        store.fill_backing(pending, result)

    def can_make_room(self, device: ZramDevice) -> bool:
        """Whether a write refused at mem_limit should wait for automatic writeback: a
        backing store with free blocks and the mark on."""
        store = device.store
        bm = store.blocks if store is not None else None
        return bool(bm is not None and device.auto_writeback and (bm.free_blocks or bm.pending))

    async def write_waiting(
        self, device: ZramDevice, store: PageStore, off: int, data: bytes | memoryview
    ) -> None:
        """Retry a write refused at mem_limit while automatic writeback makes room, for at
        most ROOM_WAIT_S; then the kernel's behaviour (MemLimitExceeded: EIO)."""
        deadline = trio.current_time() + ROOM_WAIT_S
        view = memoryview(data)
        while True:
            self._wanted.add(device)
            self.wake()
            with trio.move_on_after(ROOM_POLL_S):
                await self._room.wait()
            try:
                store.write(off, view)
                return
            except MemLimitExceeded as exc:
                off += exc.written
                view = view[exc.written :]
                if trio.current_time() >= deadline or not self.can_make_room(device):
                    raise
                store.forgive_write_failure()  # retried: not (yet) a failed write
            finally:
                self._wanted.discard(device)

    # -- control files ---------------------------------------------------------------

    async def writeback_request(self, device: ZramDevice, data: bytes) -> None:
        """A write to `writeback`: parse (errors change nothing), select as the kernel,
        write back; EIO when the writeback_limit budget ran out, ENOSPC when the backing
        store is full (the pages before that stay written back)."""
        request = device.parse_writeback(data)
        async with self._lock(device):
            store = device.store
            if store is None:
                raise ControlError(errno.EINVAL, f"{device.name} was reset")
            found: set[int] = set()
            for mode, lo, hi in request.scans:
                found.update(store.select_writeback(mode, lo, hi))
            stopped = await self._write_back(device, store, store.largest_first(list(found)))
        if stopped:
            raise ControlError(stopped, f"{device.name}: writeback stopped")

    async def recompress_request(self, device: ZramDevice, data: bytes) -> None:
        """A write to `recompress`: parse, then recompress in batches, letting other
        requests run between them."""
        r = device.parse_recompress(data)
        async with self._lock(device):
            store = device.store
            if store is None:
                raise ControlError(errno.EINVAL, f"{device.name} was reset")
            indices = store.select_recompress(r.mode, r.prio_max)
            await self._recompress(
                device, store, indices, r.prio, r.prio_max, r.threshold, r.max_pages
            )

    async def _recompress(
        self,
        device: ZramDevice,
        store: PageStore,
        indices: list[int],
        prio: int,
        prio_max: int,
        threshold: int,
        max_pages: int | None,
    ) -> int:
        device.busy += 1
        replaced = 0
        try:
            left = max_pages
            for pos in range(0, len(indices), RECOMPRESS_BATCH):
                if left is not None and left <= 0:
                    break
                if store is not device.store:
                    break
                part = indices[pos : pos + RECOMPRESS_BATCH]
                tried, done = store.recompress(part, prio, prio_max, threshold, left)
                replaced += done
                if left is not None:
                    left -= tried
                await trio.sleep(0)  # let other requests in between batches
        finally:
            device.busy -= 1
        return replaced

    async def _write_back(self, device: ZramDevice, store: PageStore, indices: list[int]) -> int:
        """Write back ``indices`` in batches; return the errno that stopped it, or 0."""
        backing = device.backing
        if backing is None:
            return errno.ENODEV
        device.busy += 1
        stopped = 0
        try:
            await self._drain(device, store)  # blocks freed since: reusable before we start
            pos = 0
            while pos < len(indices) and store is device.store:
                window = indices[pos : pos + 4 * WRITEBACK_BATCH]
                batch = store.begin_writeback(window, max_pages=WRITEBACK_BATCH)
                pos += batch.consumed
                failed: set[int] | None = None
                try:
                    if len(batch):
                        failed = await trio.to_thread.run_sync(
                            backing.write_blocks, batch.blocks, batch.data, limiter=self._io
                        )
                    else:
                        failed = set()
                finally:
                    if failed is None:  # cancelled: none of it counts as written
                        failed = set(range(len(batch)))
                    if store.end_writeback(batch, failed):
                        self._room.set()  # writers waiting for room: try again
                        self._room = trio.Event()
                if failed:
                    log.warning("%s: %d backing writes failed", device.name, len(failed))
                    stopped = errno.EIO
                    break
                if batch.stopped:
                    stopped = batch.stopped
                    break
                if not batch.consumed:
                    break
            await self._drain(device, store)
        finally:
            device.busy -= 1
        return stopped

    async def _drain(self, device: ZramDevice, store: PageStore) -> None:
        """Discard the blocks freed since the last time, then let them be reused."""
        bm = store.blocks
        backing = device.backing
        if bm is None or backing is None:
            return
        blocks = bm.take_discards()
        if not blocks:
            return
        try:
            await trio.to_thread.run_sync(backing.discard_blocks, blocks, limiter=self._io)
        finally:
            if store is device.store:
                bm.reuse(blocks)

    # -- the background task ---------------------------------------------------------

    async def run(self) -> None:
        """Tend every device every TICK_S, or sooner when a writer waits for room."""
        while True:
            with trio.move_on_after(TICK_S):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._check_pressure()
            for device in list(self.table):
                try:
                    await self.tend(device)
                except ControlError as exc:
                    log.debug("%s: %s", device.name, exc)
                except Exception:  # noqa: BLE001 - the background task must keep going
                    log.exception("%s: background tier work failed", device.name)
                    await trio.sleep(1.0)

    async def tend(self, device: ZramDevice) -> None:
        """One pass over a device: discards, automatic writeback, policy, compaction."""
        store = device.store
        if store is None or store.closed:
            return
        if device.backing is not None:
            async with self._lock(device):
                if store is device.store:
                    await self._drain(device, store)
                    await self._auto_writeback(device, store)
        if device.policy_interval:
            now = trio.current_time()
            due = self._policy_due.get(device, now + device.policy_interval)
            if now >= due:
                self._policy_due[device] = now + device.policy_interval
                await self.policy_pass(device)
            else:
                self._policy_due.setdefault(device, due)
        if store is device.store and device.auto_compact:
            self._maybe_compact(store, device.auto_compact)

    async def _auto_writeback(self, device: ZramDevice, store: PageStore) -> None:
        m = marks(store.mem_limit, device.auto_writeback)
        if not m.on:
            return
        waiting = device in self._wanted
        if store.mem_used_total <= m.high and not waiting:
            return
        target = m.low
        if waiting:  # a writer is refused: make room for it and the writes behind it
            target = min(target, store.mem_limit * (100 - WAITING_HEADROOM_PERCENT) // 100)
        for _ in range(64):  # rounds, each a bounded batch
            used = store.mem_used_total
            if used <= target or store is not device.store:
                return
            n = pages_to_write_back(used, target, store.compr_data_size, store.pool_pages_stored)
            cold = store.cold_pages(n)
            if not cold:
                return
            stopped = await self._write_back(device, store, cold)
            if store.mem_used_total > target:
                store.compact()  # objects freed from fragmented zspages: give them back
            if stopped:
                return

    async def policy_pass(self, device: ZramDevice) -> None:
        """The background policy: recompress pages idle for recompress_after seconds with
        the secondary algorithms, write back pages idle for writeback_after seconds."""
        store = device.store
        if store is None:
            return
        async with self._lock(device):
            if store is not device.store:
                return
            r = device.policy_recompress()
            if device.recompress_after and r is not None:
                # Pages idle that long, coldest first, that recompress_params' type allows.
                allowed = set(store.select_recompress(r.mode, r.prio_max))
                cold = [
                    i
                    for i in store.cold_pages(
                        store.pages_stored,
                        device.recompress_after,
                        skip=FLAG_RECOMPRESSED | FLAG_INCOMPRESSIBLE,
                    )
                    if i in allowed
                ]
                await self._recompress(
                    device, store, cold, r.prio, r.prio_max, r.threshold, r.max_pages
                )
            if device.writeback_after and device.backing is not None:
                cold = store.cold_pages(store.pages_stored, device.writeback_after)
                await self._write_back(device, store, cold)

    def _maybe_compact(self, store: PageStore, percent: int) -> None:
        pool = store.pool_statistics()
        freeable = sum(c.freeable_pages for c in pool.classes)
        if compaction_due(pool.total_pages, freeable, percent):
            store.compact()

    async def _check_pressure(self) -> None:
        now = trio.current_time()
        if now < self._next_psi:
            return
        self._next_psi = now + PSI_PERIOD_S
        try:
            text = await trio.to_thread.run_sync(_read_text, PSI_PATH)
        except OSError:
            self._next_psi = now + 3600  # no PSI on this kernel: look again in an hour
            return
        if parse_psi_some_avg10(text) < PSI_THRESHOLD:
            return
        if now - self._last_psi_compact < PSI_COMPACT_GAP_S:
            return
        self._last_psi_compact = now
        for device in _initialised(self.table):
            if device.store is not None and device.auto_compact:  # (0: off, both triggers)
                device.store.compact()


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _initialised(devices: Iterable[ZramDevice]) -> list[ZramDevice]:
    return [d for d in devices if d.store is not None]
