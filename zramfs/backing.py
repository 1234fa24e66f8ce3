"""Backing stores for the writeback tier: the block I/O behind a PageStore's BlockMap.

A backing store is an array of 4 KiB blocks with read_blocks, write_blocks and
discard_blocks (batch calls, made on worker threads by the shell) and read_block (one block,
synchronous, for the rare partial rewrite of a written-back page). FileBacking serves a
regular file (kept sparse: a discarded block becomes a hole, FALLOC_FL_PUNCH_HOLE) or a block
device (BLKDISCARD), opened with O_DIRECT where the filesystem allows it so that no copy of
the pages lands in the page cache; its buffers are page-aligned mmaps, as O_DIRECT needs.
Both satisfy zramfs.device.BackingStore, the interface the pure core states. MemoryBacking
is the in-memory stand-in for property tests, with injectable read and write failures.
open_backing() is what the backing_dev control file calls.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable
from fcntl import ioctl

__all__ = ["BLOCK_SIZE", "FileBacking", "MemoryBacking", "open_backing"]

BLOCK_SIZE = 4096
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLKDISCARD = 0x1277
_BLKGETSIZE64 = 0x80081272


class MemoryBacking:
    """A backing store in a dict, for tests. ``fail_reads``/``fail_writes`` hold block
    numbers whose I/O raises EIO."""

    def __init__(self, nblocks: int, path: str = "memory") -> None:
        self.path = path
        self.nblocks = nblocks
        self.blocks: dict[int, bytes] = {}
        self.fail_reads: set[int] = set()
        self.fail_writes: set[int] = set()
        self.discarded = 0

    def read_block(self, block: int) -> bytes:
        if block in self.fail_reads:
            raise OSError(errno.EIO, f"block {block}: injected read error")
        return self.blocks.get(block, bytes(BLOCK_SIZE))

    def read_blocks(self, blocks: list[int]) -> list[bytes | OSError]:
        out: list[bytes | OSError] = []
        for b in blocks:
            try:
                out.append(self.read_block(b))
            except OSError as exc:
                out.append(exc)
        return out

    def write_blocks(self, blocks: list[int], data: list[bytes]) -> set[int]:
        failed = set()
        for k, (b, d) in enumerate(zip(blocks, data, strict=True)):
            if b in self.fail_writes or not 0 <= b < self.nblocks:
                failed.add(k)
                continue
            self.blocks[b] = bytes(d) + bytes(BLOCK_SIZE - len(d))
        return failed

    def discard_blocks(self, blocks: list[int]) -> None:
        for b in blocks:
            self.blocks.pop(b, None)
        self.discarded += len(blocks)

    def close(self) -> None:
        self.blocks.clear()


_libc: ctypes.CDLL | None = None


def _fallocate() -> Callable[..., int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = _libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


class FileBacking:
    """A regular file or a block device as a backing store (O_DIRECT where possible)."""

    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_DIRECT)
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # (tmpfs and some FUSE files refuse O_DIRECT)
                raise
            fd = os.open(path, flags)
            self.direct = False
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                size = st.st_size
                self.is_file = True
            elif stat.S_ISBLK(st.st_mode):
                buf = bytearray(8)
                ioctl(fd, _BLKGETSIZE64, buf)
                size = struct.unpack("Q", buf)[0]
                self.is_file = False
            else:
                raise OSError(errno.ENOTBLK, f"{path} is neither a block device nor a file")
            self.nblocks = size // BLOCK_SIZE
            if not self.nblocks:
                raise OSError(errno.EINVAL, f"{path} is smaller than one 4 KiB block")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._local = threading.local()

    def _buffer(self, nbytes: int) -> mmap.mmap:
        """A page-aligned buffer of at least ``nbytes`` for this thread (reused; it grows
        to the largest run seen, at most a writeback batch)."""
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            if buf is not None:
                buf.close()
            buf = mmap.mmap(-1, max(nbytes, 64 * BLOCK_SIZE))
            self._local.buf = buf
        return buf

    def read_block(self, block: int) -> bytes:
        buf = self._buffer(BLOCK_SIZE)
        view = memoryview(buf)[:BLOCK_SIZE]
        try:
            n = os.preadv(self.fd, [view], block * BLOCK_SIZE)
        finally:
            view.release()
        if n != BLOCK_SIZE:
            raise OSError(errno.EIO, f"short read of block {block} ({n} bytes)")
        return buf[:BLOCK_SIZE]

    def read_blocks(self, blocks: list[int]) -> list[bytes | OSError]:
        """Each block's bytes (or the OSError of its read), reading each run of
        consecutive block numbers with one preadv."""
        out: dict[int, bytes | OSError] = {}
        for start, count in _runs(sorted(set(blocks))):
            size = count * BLOCK_SIZE
            buf = self._buffer(size)
            view = memoryview(buf)[:size]
            try:
                n = os.preadv(self.fd, [view], start * BLOCK_SIZE)
            except OSError as exc:
                n = -1
                error: OSError = exc
            finally:
                view.release()
            for k in range(count):
                if (k + 1) * BLOCK_SIZE <= n:
                    out[start + k] = buf[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
                elif n < 0:
                    out[start + k] = error
                else:
                    out[start + k] = OSError(errno.EIO, f"short read of block {start + k}")
        return [out[b] for b in blocks]

    def write_blocks(self, blocks: list[int], data: list[bytes]) -> set[int]:
        """Write ``data[k]`` (at most a block, zero-padded) to ``blocks[k]``, each run of
        consecutive block numbers with one pwritev; return the positions that failed."""
        order = sorted(range(len(blocks)), key=blocks.__getitem__)
        failed: set[int] = set()
        pos = 0
        while pos < len(order):
            end = pos + 1
            while end < len(order) and blocks[order[end]] == blocks[order[end - 1]] + 1:
                end += 1
            run = order[pos:end]
            size = len(run) * BLOCK_SIZE
            buf = self._buffer(size)
            for k, i in enumerate(run):
                d = data[i]
                at = k * BLOCK_SIZE
                buf[at : at + len(d)] = d
                if len(d) < BLOCK_SIZE:
                    buf[at + len(d) : at + BLOCK_SIZE] = bytes(BLOCK_SIZE - len(d))
            view = memoryview(buf)[:size]
            try:
                if os.pwritev(self.fd, [view], blocks[run[0]] * BLOCK_SIZE) != size:
                    failed.update(run)
            except OSError:
                failed.update(run)
            finally:
                view.release()
            pos = end
        return failed

    def discard_blocks(self, blocks: list[int]) -> None:
        """Give the blocks' space back: holes in a file, BLKDISCARD on a device. Best
        effort: a store that cannot discard just keeps the old bytes (never read again)."""
        for start, count in _runs(sorted(blocks)):
            off, length = start * BLOCK_SIZE, count * BLOCK_SIZE
            try:
                if self.is_file:
                    fn = _fallocate()
                    fn(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, length)
                else:
                    ioctl(self.fd, _BLKDISCARD, struct.pack("QQ", off, length))
            except OSError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted block numbers as (first, count)."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def open_backing(path: str, forbidden: frozenset[int] = frozenset()) -> FileBacking:
    """Open ``path`` for backing_dev; OSError with the errno to answer. ``forbidden`` holds
    the st_dev of zramfs mounts: a file on one would have a daemon wait on its own (or
    another's) requests, so it is refused (EINVAL). Blocking: run it on a worker thread."""
    if os.stat(path).st_dev in forbidden:
        raise OSError(errno.EINVAL, f"{path} is on a zramfs mount")
    backing = FileBacking(path)
    if os.fstat(backing.fd).st_dev in forbidden:
        backing.close()
        raise OSError(errno.EINVAL, f"{path} is on a zramfs mount")
    return backing
