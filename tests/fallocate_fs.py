"""Minimal pyfuse3 filesystem for tests/test_fallocate.py: one 64 MiB file whose fallocate calls
are logged.

Usage: python tests/fallocate_fs.py MOUNTPOINT LOGFILE

MOUNTPOINT/image is a 64 MiB read-write file kept in a bytearray. Every fallocate call reaching
the daemon is appended to LOGFILE as a JSON line {"ino", "mode", "offset", "length", "fh"};
PUNCH_HOLE and ZERO_RANGE zero the range. A call at FAIL_OFFSET makes the handler raise, to check
that the exception becomes EIO. Once mounted, "ready" is written to LOGFILE.ready. SIGTERM or
SIGINT unmounts and exits.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
from typing import Any

from zramfs import fusepatch

fusepatch.install()  # before pyfuse3 is imported

import pyfuse3  # noqa: E402
import trio  # noqa: E402

SIZE = 64 * 1024 * 1024
FAIL_OFFSET = 60 * 1024 * 1024
NAME = b"image"
FILE_INO = pyfuse3.ROOT_INODE + 1


class Fs(pyfuse3.Operations):
    def __init__(self, log_path: str) -> None:
        super().__init__()
        self.data = bytearray(SIZE)
        self.log = open(log_path, "a", buffering=1)  # noqa: SIM115

    def fallocate(
        self, ino: int, mode: int, offset: int, length: int, fh: int, reply: object = None
    ) -> int:
        self.log.write(
            json.dumps({"ino": ino, "mode": mode, "offset": offset, "length": length, "fh": fh})
            + "\n"
        )
        if offset == FAIL_OFFSET:
            raise RuntimeError("fallocate_fs: deliberate failure at FAIL_OFFSET")
        if ino != FILE_INO:
            return errno.EBADF
        if mode & (fusepatch.FALLOC_FL_PUNCH_HOLE | fusepatch.FALLOC_FL_ZERO_RANGE):
            end = min(offset + length, SIZE)
            if offset < end:
                self.data[offset:end] = bytes(end - offset)
        return 0

    def _attr(self, ino: int) -> Any:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_nlink = 1
            attr.st_size = SIZE
            attr.st_blocks = SIZE // 512
        attr.st_blksize = 4096
        attr.attr_timeout = attr.entry_timeout = 60
        return attr

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        return self._attr(inode)  # fixed size; ignore times and modes

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INO), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.data[off : min(off + size, SIZE)])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if off + len(buf) > SIZE:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        self.data[off : off + len(buf)] = buf
        return len(buf)

    async def statfs(self, ctx: Any) -> Any:
        # Needed for discard: the loop driver only enables it when statfs() on the backing file
        # succeeds (f_bsize becomes the discard granularity).
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = SIZE // 4096
        st.f_files = 2
        st.f_namemax = 255
        return st


async def run(ready_path: str) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        with open(ready_path, "w") as f:
            f.write("ready\n")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    mountpoint, log_path = sys.argv[1], sys.argv[2]
    fs = Fs(log_path)
    fusepatch.set_fallocate_handler(fs.fallocate)
    options = set(pyfuse3.default_options)
    options.add("fsname=fallocate_fs")
    pyfuse3.init(fs, mountpoint, options)
    try:
        if not fusepatch.hooked():
            sys.exit("fallocate_fs: pyfuse3's session was not created through the shim")
        trio.run(run, log_path + ".ready")
    finally:
        pyfuse3.close(unmount=True)
        print(f"fallocate_fs: exiting, pid {os.getpid()}", file=sys.stderr)


if __name__ == "__main__":
    main()
