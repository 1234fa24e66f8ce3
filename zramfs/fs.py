"""The FUSE shell: pyfuse3 Operations that turn requests into core calls.

The tree mirrors /sys/block/zramN and /sys/class/zram-control: the root holds
`hot_add`, `hot_remove` and one directory per device, each with its `image`
(the device as a sparse file), a human-readable `stats` and the kernel's
control files.  This class is the one place where exceptions become errnos
(s3ql's rule): a ControlError carries the kernel's errno, a MemLimitExceeded
becomes EIO as the block layer would see it, and anything unexpected is
logged and answered EIO without taking the daemon down.  Image requests run
inline on the trio thread, except large ones with a slow codec, which compress
or decompress on worker threads; the state change that follows runs on the
trio thread with no await in between, so each request's commit is atomic with
respect to every other request.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import pyfuse3
import trio

from .backing import open_backing
from .device import ControlError, DeviceTable, ZramDevice
from .dictionary import read_dictionary, zramfs_devices
from .fusepatch import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Reply
from .pagestore import (
    PAGE_SIZE,
    BackingReadError,
    MemLimitExceeded,
    OutOfRange,
    PageCorrupt,
    PageStore,
)
from .report import render_metrics, render_stats
from .tier import TierService

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
HOT_ADD_INODE = ROOT_INODE + 1
HOT_REMOVE_INODE = ROOT_INODE + 2
METRICS_INODE = ROOT_INODE + 3  # every device's figures for Prometheus (report.render_metrics)
# Device N owns inodes DEV_BASE + N*DEV_SPAN ... + DEV_SPAN-1: its directory, then its files.
DEV_BASE = 0x1000
DEV_SPAN = 0x100
HOT_ADD = "hot_add"
HOT_REMOVE = "hot_remove"
METRICS = "metrics"
IMAGE = "image"
STATS = "stats"
DEVICE_FILES: tuple[str, ...] = (IMAGE, STATS, *ZramDevice.ATTRIBUTES)
# The one table of file modes (permission bits): open() checks them, getattr shows them.
# The device's attributes carry the sysfs modes the device defines (ZramDevice.ATTRIBUTES).
# hot_add is 0400, as in the kernel (zram_drv.c: "This attribute must be set to 0400"):
# reading it creates a device, so with --allow-other a 0444 hot_add let any user do that
# (tests/test_reliability_security.py).
FILE_MODES: dict[str, int] = {
    HOT_ADD: 0o400,
    HOT_REMOVE: 0o200,
    METRICS: 0o444,
    IMAGE: 0o600,
    STATS: 0o444,
    **ZramDevice.ATTRIBUTES,
}
DIR_MODE = 0o755


class Kind(enum.Enum):
    """What an inode is."""

    ROOT = enum.auto()  # the mount's root directory
    DEVICE_DIR = enum.auto()  # zramN/
    FILE = enum.auto()  # hot_add, hot_remove, or a file in zramN/ (its name says which)


class Node(NamedTuple):
    """An inode resolved: its kind, its device (None at the root) and its file name
    ("" for a directory)."""

    kind: Kind
    device: ZramDevice | None
    name: str
# sysfs files claim one page; readers stop at the first short read.
CONTROL_FILE_SIZE = 4096
# A request at least this large (de)compresses on a worker thread, but only with a codec
# slow enough for that to pay (Codec.slow_compress/slow_decompress).  Even with the whole
# request in one GIL-free C call (Codec.batch_nogil), a hand-off costs ~51 us of CPU and the
# worker's Python around the call contends for the GIL with the commit: measured on 2 cores
# with fio, lz4 1 MiB reads on a worker took the trio thread from ~1.0 to ~0.7 ms/MiB but
# the daemon from ~1.0 to ~1.3, and writes cost more on both (benchmarks/README.md, "Threads:
# measured").  zstd compression (~6-19 us/page) stays threaded.  Small requests are always
# inline.
THREAD_THRESHOLD = 128 * 1024
# ZRAMFS_BATCH_THREADS=1 in the daemon's environment sends large requests of a codec with a
# GIL-free batch path (Codec.batch_nogil: lz4 without a dictionary) to worker threads too;
# unset or 0, they stay inline.  Re-measured 2026-11-28 05:14-05:18 (2 vCPUs next to a
# kernel build; 3 of 4 sets with the daemon and fio at nice -20, idle 0-36 %; fio 1 MiB QD8
# over a dio loop device, 1 GiB, 14 interleaved rounds), MiB/s inline against threaded:
#   write 425-692 against 378-569, read 517-897 against 459-804: inline ahead in 27 of 28
#   pairs; trio thread ms/MiB write 1.21-1.47 against 1.21-1.56 (the hand-off through
#   trio's epoll and wake-up costs what the moved compression saved), read 1.02-1.13
#   against 0.63-0.86, the daemon in all 1.02-1.47 against 1.24-2.06.
# In idle windows (05:22-05:27, 40-53 % idle): write 713-817 against 506-589, read 866-953
#   against 830-909; threaded reads with sys.setswitchinterval(0.2 ms) 858-1032 against
#   inline's 866-986 in the same windows (+19, +14, +9, -9, -13 % in 5 pairs; -15 to -27 %
#   once the machine was busy again).
# So inline is the default on any CPU count (benchmarks/README.md, "Threads re-measured").
BATCH_THREADS_ENV = "ZRAMFS_BATCH_THREADS"


def batch_threads_policy() -> bool:
    """Whether large requests of a batch_nogil codec (de)compress on worker threads: only
    when ZRAMFS_BATCH_THREADS=1 (for measuring on other machines; see the figures above)."""
    return os.environ.get(BATCH_THREADS_ENV, "") == "1"
# How long reading a dictionary file named in algorithm_params may take before the write
# answers ETIMEDOUT (the read runs on a worker thread; the event loop never waits for it).
DICTIONARY_TIMEOUT_S = 10.0
# A discard (fallocate PUNCH_HOLE) larger than this is not freed inside the fallocate
# callback, which would hold up every other request (about 1.2 s for 1 GiB of stored pages
# on this 2-core machine): it is answered later, from a task that frees it this many bytes
# at a time with a scheduler pass between steps (about 10 ms each).
DISCARD_CHUNK = 4 << 20


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def errno_boundary(fn: _F) -> _F:
    """Turn every exception out of a handler into a FUSEError with the right errno."""

    @functools.wraps(fn)
    async def wrapper(self: ZramOperations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            raise pyfuse3.FUSEError(errno_of(exc, fn.__name__)) from None

    return cast(_F, wrapper)


def errno_of(exc: BaseException, where: str) -> int:
    """The errno a core exception answers with; unexpected ones are logged and EIO."""
    if isinstance(exc, MemLimitExceeded):
        return errno.EIO  # the block layer sees a failed write, as with the kernel's zram
    if isinstance(exc, BackingReadError):
        log.debug("%s: %s", where, exc)  # counted in failed_reads; the daemon keeps serving
        return errno.EIO
    if isinstance(exc, PageCorrupt):
        log.warning("%s: %s", where, exc)  # data damage: worth a line, not a traceback
        return errno.EIO
    if isinstance(exc, ControlError) and exc.errno:
        return exc.errno
    if isinstance(exc, OutOfRange):
        return errno.EINVAL
    log.error("unexpected error in %s", where, exc_info=exc)
    return errno.EIO


@dataclass
class OpenFile:
    """What a file handle refers to, plus the seq_file-like snapshot of a control read."""

    inode: int
    device: ZramDevice | None
    name: str
    snapshot: bytes | None = None  # None: not rendered yet


class ZramOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over a DeviceTable."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, table: DeviceTable, *, threads: int = 2) -> None:
        super().__init__()
        self.table = table
        self._files: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._limiter = trio.CapacityLimiter(threads)
        self._batch_threads = batch_threads_policy()
        # The writeback tier: backing I/O, automatic writeback, policy, compaction. The
        # daemon runs self.tier.run() in its nursery.
        self.tier = TierService(table, io_threads=threads)
        self._mount_ns = time.time_ns()
        # Device ids are reused after hot_remove; the generation tells the kernel
        # that an inode number now names another object.
        self._generation: dict[int, int] = {}
        self._generation_serial = 0
        for device in table:
            self._note_added(device)
        # Large discards, handed from the fallocate callback to run_discards().
        self._discard_tx, self._discard_rx = trio.open_memory_channel[
            tuple[ZramDevice, PageStore, int, int, Reply]
        ](float("inf"))
        self._discarding = False  # run_discards() is running: large discards may be deferred

    # -- inode naming ---------------------------------------------------------------

    def _note_added(self, device: ZramDevice) -> None:
        self._generation_serial += 1
        self._generation[device.dev_id] = self._generation_serial

    @staticmethod
    def dir_inode(dev_id: int) -> int:
        return DEV_BASE + dev_id * DEV_SPAN

    def _resolve(self, inode: int) -> Node:
        """Map an inode to its Node; ENOENT if it names nothing (any more)."""
        if inode == ROOT_INODE:
            return Node(Kind.ROOT, None, "")
        if inode == HOT_ADD_INODE:
            return Node(Kind.FILE, None, HOT_ADD)
        if inode == HOT_REMOVE_INODE:
            return Node(Kind.FILE, None, HOT_REMOVE)
        if inode == METRICS_INODE:
            return Node(Kind.FILE, None, METRICS)
        if inode >= DEV_BASE:
            dev_id, index = divmod(inode - DEV_BASE, DEV_SPAN)
            device = self.table.get(dev_id)
            if device is not None and index <= len(DEVICE_FILES):
                if index == 0:
                    return Node(Kind.DEVICE_DIR, device, "")
                return Node(Kind.FILE, device, DEVICE_FILES[index - 1])
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        kind, device, name = self._resolve(inode)
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = self._generation.get(device.dev_id, 0) if device else 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_uid = 0
        a.st_gid = 0
        a.st_blksize = PAGE_SIZE
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._mount_ns
        if kind is not Kind.FILE:
            a.st_mode = stat.S_IFDIR | DIR_MODE
            a.st_nlink = 2 + (len(self.table) if kind is Kind.ROOT else 0)
            a.st_size = 0
        elif name == IMAGE:
            assert device is not None
            a.st_mode = stat.S_IFREG | FILE_MODES[IMAGE]
            a.st_nlink = 1
            a.st_size = device.disksize
            used = device.store.mem_used_total if device.store else 0
            a.st_blocks = used // 512
        else:
            a.st_mode = stat.S_IFREG | FILE_MODES[name]
            a.st_nlink = 1
            a.st_size = CONTROL_FILE_SIZE
        return a

    def _children(self, inode: int) -> list[tuple[str, int]]:
        kind, device, _ = self._resolve(inode)
        if kind is Kind.ROOT:
            entries = [
                (HOT_ADD, HOT_ADD_INODE),
                (HOT_REMOVE, HOT_REMOVE_INODE),
                (METRICS, METRICS_INODE),
            ]
            entries += [(d.name, self.dir_inode(d.dev_id)) for d in self.table]
            return entries
        if kind is Kind.DEVICE_DIR and device is not None:
            base = self.dir_inode(device.dev_id)
            return [(n, base + 1 + i) for i, n in enumerate(DEVICE_FILES)]
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    # -- metadata ---------------------------------------------------------------------

    @errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if text == ".":
            return self._attrs(parent_inode)
        if text == "..":
            return self._attrs(ROOT_INODE)
        for child, inode in self._children(parent_inode):
            if child == text:
                return self._attrs(inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    @errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    @errno_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        kind, device, name = self._resolve(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)  # modes are fixed: root's files only
        if fields.update_size:
            # O_TRUNC on a control file (echo > file) or on the image (dd without
            # conv=notrunc) is ignored, as on sysfs and block devices; a real resize is not.
            if kind is not Kind.FILE or (
                name == IMAGE and attr.st_size not in (0, device.disksize if device else 0)
            ):
                raise pyfuse3.FUSEError(errno.EINVAL)
        return self._attrs(inode)

    @errno_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._children(inode)  # ENOTDIR/ENOENT check
        return inode

    @errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._children(fh)
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(inode), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    @errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        total = sum(d.disksize for d in self.table) // PAGE_SIZE
        used = sum(d.store.pages_stored for d in self.table if d.store)
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_blocks = total
        s.f_bfree = s.f_bavail = max(total - used, 0)
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- open / release -------------------------------------------------------------------

    @errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        kind, device, name = self._resolve(inode)
        if kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        wants_read = accmode in (os.O_RDONLY, os.O_RDWR)
        wants_write = accmode in (os.O_WRONLY, os.O_RDWR)
        # The modes say what each file allows, for root too (as sysfs: root cannot read
        # a write-only attribute); default_permissions has already checked other users.
        mode = FILE_MODES[name]
        if (wants_read and not mode & 0o444) or (wants_write and not mode & 0o222):
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = OpenFile(inode, device, name)
        if name == IMAGE:
            assert device is not None
            device.open_count += 1
        # direct_io: no page cache for any file.  For the image this is what keeps
        # uncompressed copies out of memory whatever mode the loop device runs in;
        # for control files it makes every read reach the daemon, as on sysfs.
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def release(self, fh: int) -> None:
        f = self._files.pop(fh, None)
        if f is not None and f.name == IMAGE and f.device is not None:
            f.device.open_count -= 1

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass  # every write is in the store when it is answered

    def _file(self, fh: int) -> OpenFile:
        f = self._files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return f

    # -- data -------------------------------------------------------------------------------

    # read() and write() are the hot path: they hold the errno boundary themselves (the
    # same rule as @errno_boundary, via errno_of) and serve the image without further
    # coroutines, since each coroutine layer costs about a microsecond per request.

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            f = self._file(fh)
            if f.name != IMAGE:
                return self._read_control(f, off, size)
            device = f.device
            assert device is not None
            store = device.store
            disksize = device.disksize
            if store is None or off >= disksize:
                return b""
            if off + size > disksize:
                size = disksize - off
            if store.bd_count:  # pages on the backing store are read on a worker thread
                return await self.tier.read(device, store, off, size)
            codec = store.codec
            if size < THREAD_THRESHOLD or not (
                codec.slow_decompress or (self._batch_threads and codec.batch_nogil)
            ):
                return store.read(off, size)
            pending = store.fetch(off, size)
            return await trio.to_thread.run_sync(store.finish_read, pending, limiter=self._limiter)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            raise pyfuse3.FUSEError(errno_of(exc, "read")) from None

    def _read_control(self, f: OpenFile, off: int, size: int) -> bytes:
        snapshot = f.snapshot
        if off == 0 or snapshot is None:
            # like seq_file: render at offset 0 or at the first read of this handle (a
            # pread past 0 gets its slice of the text), serve the reads that follow from it
            snapshot = f.snapshot = self._render(f)
        return snapshot[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            f = self._file(fh)
            if f.name != IMAGE:
                if f.device is not None:
                    if f.name == "algorithm_params":
                        return await self._write_algorithm_params(f.device, buf)
                    if f.name == "backing_dev":
                        return await self._write_backing_dev(f.device, buf)
                    if f.name == "writeback":
                        await self.tier.writeback_request(f.device, buf)
                        return len(buf)
                    if f.name == "recompress":
                        await self.tier.recompress_request(f.device, buf)
                        return len(buf)
                return self._write_control(f, buf)
            device = f.device
            assert device is not None
            store = device.store
            disksize = device.disksize
            if store is None or off >= disksize:
                raise pyfuse3.FUSEError(errno.ENOSPC)  # as a write past a block device's end
            data: bytes | memoryview = buf
            if off + len(buf) > disksize:
                data = memoryview(buf)[: disksize - off]
            try:
                if (
                    len(data) < THREAD_THRESHOLD
                    or not (
                        store.codec.slow_compress
                        or (self._batch_threads and store.codec.batch_nogil)
                    )
                    or store.near_limit  # page by page: a refusal compresses one page
                ):
                    store.write(off, data)
                else:
                    prepared = await trio.to_thread.run_sync(
                        store.prepare_write, off, data, limiter=self._limiter
                    )
                    # The store cannot have been replaced during the await: reset and
                    # hot_remove answer EBUSY while this image is open, and it is (fh).
                    # commit_write runs with no await, so it is atomic among requests.
                    store.commit_write(prepared)
            except MemLimitExceeded as exc:
                if not self.tier.can_make_room(device):
                    raise  # no backing store with room: EIO at once, as the kernel
                # Automatic writeback can make room: wait for it (bounded) and go on.
                store.forgive_write_failure()
                rest = memoryview(data)[exc.written :]
                await self.tier.write_waiting(device, store, off + exc.written, rest)
            return len(data)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            raise pyfuse3.FUSEError(errno_of(exc, "write")) from None

    def _write_control(self, f: OpenFile, buf: bytes) -> int:
        if f.name == HOT_REMOVE:
            removed = self.table.hot_remove(buf)
            self._generation.pop(removed.dev_id, None)
            self.forget_entry(removed.name)
        elif f.device is not None:
            f.device.write_attr(f.name, buf)
        else:
            raise pyfuse3.FUSEError(errno.EACCES)
        return len(buf)

    def forget_entry(self, name: str) -> None:
        """Tell the kernel that the root's entry ``name`` is gone (after hot_remove)."""
        # Queued to pyfuse3's notify thread: a request handler must not wait for it. ENOENT
        # means the kernel had no dentry cached, so there was nothing to invalidate.
        pyfuse3.invalidate_entry_async(ROOT_INODE, os.fsencode(name), ignore_enoent=True)

    async def _write_backing_dev(self, device: ZramDevice, buf: bytes) -> int:
        """backing_dev: the path is opened (O_DIRECT) on a worker thread with a timeout, and
        refused on a zramfs mount, so no path can stall the event loop or loop back."""
        path = device.prepare_backing_dev(buf)
        backing = None
        with trio.move_on_after(DICTIONARY_TIMEOUT_S):
            try:
                backing = await trio.to_thread.run_sync(
                    lambda: open_backing(path, zramfs_devices()), abandon_on_cancel=True
                )
            except OSError as exc:
                log.info("%s/backing_dev: %s", device.name, exc)
                raise ControlError(exc.errno or errno.EINVAL, str(exc)) from None
        if backing is None:
            raise pyfuse3.FUSEError(errno.ETIMEDOUT)
        device.set_backing(backing)  # no await since: checked against the device as it is
        return len(buf)

    async def _write_algorithm_params(self, device: ZramDevice, buf: bytes) -> int:
        """algorithm_params: a dict= file is read on a worker thread with a timeout, and only
        if it is a regular file of bounded size on no zramfs mount (zramfs.dictionary), so
        no path a user names can stall the event loop or make the daemon wait on itself."""
        params = device.prepare_algorithm_params(buf)
        dictionary = None
        if params.dict_path is not None:
            path = params.dict_path
            with trio.move_on_after(DICTIONARY_TIMEOUT_S):
                try:
                    dictionary = await trio.to_thread.run_sync(
                        read_dictionary, path, abandon_on_cancel=True
                    )
                except ControlError as exc:
                    log.info("%s/algorithm_params: %s", device.name, exc.strerror)
                    raise
            if dictionary is None:
                log.info("%s/algorithm_params: reading %r timed out", device.name, path)
                raise pyfuse3.FUSEError(errno.ETIMEDOUT)
        # No await from here on: checked and applied against the device as it is now.
        device.apply_algorithm_params(params, dictionary)
        return len(buf)

    def fallocate(
        self, inode: int, mode: int, off: int, length: int, fh: int, reply: Reply | None = None
    ) -> int | None:
        """The fallocate shim's callback (synchronous, on the trio thread): an errno to answer
        now, or None when a large discard was handed to run_discards(), which answers it
        through ``reply`` (only offered by the shim, and taken only while that task runs)."""
        try:
            _, device, name = self._resolve(inode)
            if name != IMAGE or device is None:
                return errno.EOPNOTSUPP
            if off < 0 or length <= 0:
                return errno.EINVAL
            if not mode & FALLOC_FL_KEEP_SIZE and off + length > device.disksize:
                return errno.EOPNOTSUPP  # the image's size is the device's: it cannot grow
            store = device.store
            if store is None:
                return errno.ENOSPC
            end = min(off + length, device.disksize)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                if off < end:
                    if reply is not None and self._discarding and end - off > DISCARD_CHUNK:
                        self._discard_tx.send_nowait((device, store, off, end, reply))
                        return None
                    store.discard(off, end - off)
                return 0
            return 0  # plain allocation: a sparse image allocates memory on write
        except pyfuse3.FUSEError as exc:
            return int(exc.errno)
        except Exception as exc:  # noqa: BLE001 - this is the boundary for fallocate
            return errno_of(exc, "fallocate")

    async def run_discards(self) -> None:
        """Serve the large discards fallocate() defers, one after another, each in
        DISCARD_CHUNK steps with a scheduler pass between them, so that reads and writes
        of every device keep being answered while gigabytes are freed. Run it in the
        daemon's nursery for as long as the mount is served.

        Ordering is a block device's: a write to a range whose discard has not been
        answered yet may land before or after the discard reaches it, as on any disk with
        requests in flight; file systems and swap only reuse a discarded range once the
        discard has completed, which here is when the last step has run."""
        self._discarding = True
        try:
            async for device, store, off, end, reply in self._discard_rx:
                await self._discard_in_chunks(device, store, off, end, reply)
        finally:
            self._discarding = False

    async def _discard_in_chunks(
        self, device: ZramDevice, store: PageStore, off: int, end: int, reply: Reply
    ) -> None:
        answer = errno.EIO
        try:
            pos = off
            while pos < end:
                # The store cannot be replaced while the discard is pending: the kernel
                # holds the image open for it, so reset and hot_remove answer EBUSY.
                # Checked anyway, with no await between the check and the discard.
                if device.store is not store:
                    answer = errno.ENODEV
                    return
                n = min(DISCARD_CHUNK, end - pos)
                store.discard(pos, n)
                pos += n
                if pos < end:
                    await trio.sleep(0)  # let the other requests in
            answer = 0
        except Exception as exc:  # noqa: BLE001 - the boundary for a deferred fallocate
            answer = errno_of(exc, "fallocate")
        finally:
            reply(answer)

    # -- control rendering -------------------------------------------------------------

    def _render(self, f: OpenFile) -> bytes:
        if f.name == HOT_ADD:
            added = self.table.hot_add()
            self._note_added(added)
            return f"{added.dev_id}\n".encode()
        if f.name == METRICS:
            return render_metrics([d.statistics() for d in self.table]).encode()
        device = f.device
        if device is None or self.table.get(device.dev_id) is not device:
            raise pyfuse3.FUSEError(errno.ENODEV)
        if f.name == STATS:
            return render_stats(device.statistics()).encode()
        return device.read_attr(f.name)


def open_images(table: DeviceTable) -> Sequence[ZramDevice]:
    """Devices whose image is open (by a loop device or anyone else)."""
    return [d for d in table if d.open_count > 0]
