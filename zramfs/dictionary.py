"""Reading a compression dictionary that a control file names, without hanging the daemon.

``echo 'algo=zstd dict=PATH' > zramN/algorithm_params`` names a file the daemon must read. The
daemon has one event-loop thread that answers every FUSE request, so that read must neither
block it (a FIFO with no writer, a hung network or FUSE file system) nor reach back into a
zramfs mount (an image of the same mount would make the daemon wait for itself; an image of
another zramfs mount could make two daemons wait for each other). :func:`read_dictionary`
therefore accepts only a regular, non-empty file of at most ``codecs.MAX_DICT_SIZE`` bytes that
is on no fuse.zramfs mount, checks that with stat() before it opens anything, opens with
O_NONBLOCK and checks again with fstat() on what it opened, and is meant to run on a worker
thread (the shell does that, with a timeout). A refusal is a ControlError with the errno that
says why: EISDIR for a directory, EFBIG for a file over the bound, EINVAL for anything else
(missing, not a regular file, on a zramfs mount, empty, unreadable), as the kernel answers
EINVAL when its own read of the dictionary fails.
"""

from __future__ import annotations

import errno
import os
import stat

from .codecs import MAX_DICT_SIZE
from .device import ControlError

__all__ = ["read_dictionary", "zramfs_devices"]


def zramfs_devices(mountinfo: str = "/proc/self/mountinfo") -> frozenset[int]:
    """st_dev of every fuse.zramfs mount, from mountinfo (which costs no FUSE request)."""
    devs = set()
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        fields = line.split()
        try:
            fstype = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        if fstype == "fuse.zramfs":
            major, _, minor = fields[2].partition(":")
            devs.add(os.makedev(int(major), int(minor)))
    return frozenset(devs)


def _describe(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check(path: str, st: os.stat_result, forbidden: frozenset[int]) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ControlError(errno.EISDIR, f"dictionary {path!r} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ControlError(errno.EINVAL, f"dictionary {path!r} is {_describe(st.st_mode)}")
    if st.st_dev in forbidden:
        raise ControlError(
            errno.EINVAL, f"dictionary {path!r} is on a zramfs mount; the daemon cannot read it"
        )
    if st.st_size > MAX_DICT_SIZE:
        raise ControlError(
            errno.EFBIG, f"dictionary {path!r} is over {MAX_DICT_SIZE >> 20} MiB"
        )


def _read_accepted(path: str, forbidden: frozenset[int]) -> bytes:
    """Up to MAX_DICT_SIZE + 1 bytes of ``path``, checked before the open and again on the
    descriptor (the file opened is still one we accept); OSError passes through."""
    _check(path, os.stat(path), forbidden)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check(path, os.fstat(fd), forbidden)
        chunks = []
        left = MAX_DICT_SIZE + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_dictionary(path: str, forbidden: frozenset[int] | None = None) -> bytes:
    """The bytes of the dictionary file ``path``, or ControlError (see the module docstring).

    ``forbidden`` is the set of st_dev values a dictionary may not live on (default: every
    fuse.zramfs mount). Blocking: call it from a worker thread, never the event loop."""
    if forbidden is None:
        forbidden = zramfs_devices()
    try:
        data = _read_accepted(path, forbidden)
    except ControlError:
        raise
    except OSError as exc:
        raise ControlError(
            errno.EINVAL, f"cannot read dictionary {path!r}: {exc.strerror or exc}"
        ) from None
    if not data:
        raise ControlError(errno.EINVAL, f"dictionary {path!r} is empty")
    if len(data) > MAX_DICT_SIZE:
        raise ControlError(errno.EFBIG, f"dictionary {path!r} is over {MAX_DICT_SIZE >> 20} MiB")
    return data
