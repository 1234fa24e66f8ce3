"""FUSE fallocate for pyfuse3, through the small C shim in ``_fallocate.c``.

pyfuse3 registers no fallocate handler, so libfuse answers FALLOC_FL_PUNCH_HOLE (what the loop
driver sends for discard: fstrim, ``swapon --discard``, mkfs) with EOPNOTSUPP and the daemon never
hears of it. :func:`install` loads the shim with RTLD_GLOBAL so that pyfuse3's call to
``fuse_session_new`` binds to the shim, which adds a fallocate handler and calls the real libfuse;
it must therefore run before anything imports pyfuse3. :func:`set_handler` registers the Python
function that handler calls, ``fn(ino, mode, offset, length, fh) -> errno`` (0 for success).

How the callback is run (checked in pyfuse3 3.5.0, ``internal.pxi`` ``_session_loop``): pyfuse3
calls ``fuse_session_receive_buf`` and then ``fuse_session_process_buf`` directly from the trio
task that runs the FUSE loop, with the GIL held (neither call is inside ``with nogil``), so libfuse
dispatches every request, ours included, on the trio thread, one at a time. The shim's handler
therefore runs on that same thread, synchronously, in the middle of the event loop: it may touch
the same state as the pyfuse3 handlers without locks (no other request runs until it returns), but
it must not await or call into trio (it is not in a task), must not block, and should finish
quickly because every other FUSE request waits for it. ctypes takes the GIL it already holds
(PyGILState_Ensure on the same thread), which is safe.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import importlib.machinery
import logging
import os
import sys
from collections.abc import Callable

__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "Handler",
    "hooked",
    "install",
    "set_handler",
]

log = logging.getLogger(__name__)

# Modes from <linux/falloc.h>.  The loop driver sends PUNCH_HOLE | KEEP_SIZE for discard.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

Handler = Callable[[int, int, int, int, int], int]
"""(ino, mode, offset, length, fh) -> 0 or a positive errno."""

# int cb(uint64_t ino, int mode, int64_t offset, int64_t length, uint64_t fh)
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64
)

_lib: ctypes.CDLL | None = None
# The C side stores only a raw function pointer: this reference keeps the ctypes thunk alive.
_callback: object | None = None


def _library_path() -> str:
    """Path of the built shim, next to this module."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_fallocate" + suffix)
        if os.path.exists(path):
            return path
    found = sorted(glob.glob(os.path.join(here, "_fallocate*.so")))
    if not found:
        raise RuntimeError(
            f"zramfs._fallocate is not built in {here}; run `pip install -e .` to build it"
        )
    return found[0]


def install() -> None:
    """Load the shim so that pyfuse3's sessions get a fallocate handler.

    Must be called before pyfuse3 is imported anywhere in the process; calling it again is a no-op.
    """
    global _lib
    if _lib is not None:
        return
    if "pyfuse3" in sys.modules:
        raise RuntimeError(
            "zramfs.fallocate.install() must run before pyfuse3 is imported: pyfuse3 has already "
            "bound fuse_session_new to libfuse, so the fallocate handler could not be added"
        )
    lib = ctypes.CDLL(_library_path(), mode=ctypes.RTLD_GLOBAL)
    lib.zramfs_set_fallocate_handler.argtypes = [_CALLBACK]
    lib.zramfs_set_fallocate_handler.restype = None
    lib.zramfs_fallocate_sessions.argtypes = []
    lib.zramfs_fallocate_sessions.restype = ctypes.c_int
    _lib = lib


def hooked() -> bool:
    """True once a FUSE session has been created through the shim (after ``pyfuse3.init``)."""
    return _lib is not None and _lib.zramfs_fallocate_sessions() > 0


def set_handler(fn: Handler) -> None:
    """Register ``fn(ino, mode, offset, length, fh) -> errno`` as the fallocate handler.

    ``fn`` runs synchronously on the FUSE loop's thread (see the module docstring): no awaits.
    Its return value is the reply: 0 for success or a positive errno. An exception it raises, or a
    return value that is not such a number, is logged and answered EIO.
    """
    if _lib is None:
        raise RuntimeError("call zramfs.fallocate.install() (before importing pyfuse3) first")

    def wrapper(ino: int, mode: int, offset: int, length: int, fh: int) -> int:
        # Nothing may propagate into C: ctypes would only print it and return an unspecified value.
        try:
            ret = fn(ino, mode, offset, length, fh)
        except BaseException:
            log.exception(
                "fallocate handler failed (ino=%d mode=%#x offset=%d length=%d)",
                ino,
                mode,
                offset,
                length,
            )
            return errno.EIO
        if not isinstance(ret, int) or not 0 <= ret < 4096:
            log.error("fallocate handler returned %r, not 0 or a positive errno", ret)
            return errno.EIO
        return ret

    global _callback
    callback = _CALLBACK(wrapper)
    _lib.zramfs_set_fallocate_handler(callback)
    # Replace the kept reference only after C points at the new thunk.
    _callback = callback
