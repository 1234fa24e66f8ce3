"""Everything zramfs changes in pyfuse3 and libfuse, in one place, checked at start-up.

pyfuse3 3.x lacks three things zramfs needs, and this module (with its C half, ``_fallocate.c``)
supplies them; nothing else in zramfs reaches into pyfuse3 or libfuse:

* **fallocate** (discard). pyfuse3 registers no fallocate handler, so libfuse would answer the
  loop driver's FALLOC_FL_PUNCH_HOLE with EOPNOTSUPP. :func:`install` loads the shim with
  RTLD_GLOBAL before pyfuse3 is imported, so that pyfuse3's calls to ``fuse_session_new``,
  ``fuse_session_mount`` and ``fuse_reply_open`` bind to the shim's definitions, which add the
  handler, FOPEN_PARALLEL_DIRECT_WRITES, a larger max_background and (kernel 6.6+)
  FUSE_DIRECT_IO_ALLOW_MMAP, then call the real libfuse. :func:`set_fallocate_handler`
  registers the Python function the handler calls. pyfuse3 dispatches every request on the
  trio thread with the GIL held (``internal.pxi`` ``_session_loop`` calls
  ``fuse_session_process_buf`` outside ``nogil``), so the handler runs synchronously on that
  thread, between awaits: it may touch the state the Operations touch without locks, must
  not await or block, and may *defer* its reply (return None and call ``reply(errno)``
  later from a trio task), which is how a large discard is freed in bounded chunks instead of
  stalling every other request.
* **a cheaper request hand-off** ("fastloop"). pyfuse3's worker tasks take each request through
  ``async with trio.Lock()`` and ``await trio.lowlevel.wait_readable(fd)``, which with trio always
  suspend: two scheduler passes and two syscalls per request, about a third of the daemon's CPU
  on 4 KiB I/O. pyfuse3 looks its ``trio`` module up at call time (pyfuse3.asyncio swaps it the
  same way), so :func:`install_fastloop` gives it a proxy of trio whose ``Lock`` is taken without
  suspending when free (release wakes the longest waiter, which retries) and whose
  ``lowlevel.wait_readable`` first polls the fd with a zero timeout. So that other tasks do not
  starve while requests keep arriving, the shortcut is taken for at most ``_BURST_S`` after a
  real wait; then a request goes through trio's own wait_readable and a full scheduler pass.
* **a self-check**. :func:`check_pyfuse3` (before mounting) and :func:`check_session` (after
  ``pyfuse3.init``) raise :class:`FusePatchError` naming what no longer looks as expected:
  pyfuse3's version or the attributes the proxy relies on, the libfuse version against the one
  the shim was built for, or a hooked symbol that does not bind to the shim. The daemon runs
  both and refuses to serve if either fails, rather than run with a patch silently missing.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import importlib.machinery
import logging
import os
import select
import sys
import types
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any

import trio  # pyfuse3 itself must not be imported here: install() has to come first

__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "FallocateHandler",
    "FusePatchError",
    "Reply",
    "check_pyfuse3",
    "check_session",
    "direct_io_allow_mmap",
    "hooked",
    "install",
    "install_fastloop",
    "fastloop_installed",
    "set_fallocate_handler",
]

log = logging.getLogger(__name__)

# Modes from <linux/falloc.h>.  The loop driver sends PUNCH_HOLE | KEEP_SIZE for discard.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# What this module was written against (checked by check_pyfuse3 and check_session).
PYFUSE3_SUPPORTED = ((3, 3), (4, 0))  # [low, high)
LIBFUSE_MAJOR = 3

Reply = Callable[[int], None]
"""Answers a deferred fallocate: reply(0) or reply(errno). Call it exactly once."""

FallocateHandler = Callable[[int, int, int, int, int, Reply], "int | None"]
"""(ino, mode, offset, length, fh, reply) -> 0 or a positive errno to answer now, or None when
the handler has kept ``reply`` and will call it later (on the trio thread)."""


class FusePatchError(RuntimeError):
    """pyfuse3 or libfuse no longer looks as this module expects; the message says what."""


# -- the C shim ------------------------------------------------------------------------------

_DEFERRED = -1  # ZRAMFS_DEFERRED in _fallocate.c
# int cb(uint64_t req, uint64_t ino, int mode, int64_t offset, int64_t length, uint64_t fh)
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_uint64,
)
_HOOKS = {1: "fuse_session_new", 2: "fuse_reply_open", 4: "fuse_session_mount"}

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
    """Load the shim so that pyfuse3's sessions get its hooks.

    Must be called before pyfuse3 is imported anywhere in the process; calling it again is a
    no-op."""
    global _lib
    if _lib is not None:
        return
    if "pyfuse3" in sys.modules:
        raise RuntimeError(
            "zramfs.fusepatch.install() must run before pyfuse3 is imported: pyfuse3 has already "
            "bound fuse_session_new to libfuse, so the fallocate handler could not be added"
        )
    path = _library_path()
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    if not hasattr(lib, "zramfs_hooks_bound"):
        raise RuntimeError(
            f"{path} is older than zramfs/_fallocate.c (no deferred fallocate, no self-check): "
            "rebuild it with `make venv` (or pip install -e .)"
        )
    lib.zramfs_set_fallocate_handler.argtypes = [_CALLBACK]
    lib.zramfs_set_fallocate_handler.restype = None
    lib.zramfs_fallocate_reply.argtypes = [ctypes.c_uint64, ctypes.c_int]
    lib.zramfs_fallocate_reply.restype = None
    for name in (
        "zramfs_fallocate_sessions",
        "zramfs_hooks_bound",
        "zramfs_direct_io_allow_mmap",
        "zramfs_libfuse_runtime",
        "zramfs_libfuse_built",
    ):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = ctypes.c_int
    _lib = lib


def hooked() -> bool:
    """True once a FUSE session has been created through the shim (after ``pyfuse3.init``)."""
    return _lib is not None and _lib.zramfs_fallocate_sessions() > 0


def direct_io_allow_mmap() -> bool:
    """True if the kernel granted shared mmap of the (direct-I/O) images at INIT."""
    return _lib is not None and bool(_lib.zramfs_direct_io_allow_mmap())


def set_fallocate_handler(fn: FallocateHandler) -> None:
    """Register ``fn`` (see FallocateHandler) as the FUSE fallocate handler.

    ``fn`` runs synchronously on the FUSE loop's thread (see the module docstring): no awaits.
    An exception it raises, or a return value that is neither None nor 0..4095, is logged and
    answered EIO."""
    if _lib is None:
        raise RuntimeError("call zramfs.fusepatch.install() (before importing pyfuse3) first")
    lib = _lib

    def wrapper(req: int, ino: int, mode: int, offset: int, length: int, fh: int) -> int:
        # Nothing may propagate into C: ctypes would only print it and return an unspecified value.
        replied = False

        def reply(err: int) -> None:
            nonlocal replied
            if replied:
                log.error("fallocate reply given twice (ino=%d offset=%d)", ino, offset)
                return
            replied = True
            lib.zramfs_fallocate_reply(req, err if 0 <= err < 4096 else errno.EIO)

        try:
            ret = fn(ino, mode, offset, length, fh, reply)
        except BaseException:
            log.exception(
                "fallocate handler failed (ino=%d mode=%#x offset=%d length=%d)",
                ino,
                mode,
                offset,
                length,
            )
            return errno.EIO
        if ret is None:
            return _DEFERRED
        if not isinstance(ret, int) or not 0 <= ret < 4096:
            log.error("fallocate handler returned %r, not None, 0 or a positive errno", ret)
            return errno.EIO
        return ret

    global _callback
    callback = _CALLBACK(wrapper)
    lib.zramfs_set_fallocate_handler(callback)
    # Replace the kept reference only after C points at the new thunk.
    _callback = callback


# -- fastloop: the trio proxy pyfuse3 runs on -------------------------------------------------

# How long requests may be served back to back without a scheduler pass: the most other
# tasks wait. (Measured with fio 4 KiB QD16: a burst of 8 requests gave ~176/146 MiB/s
# randread/randwrite, 64 requests ~200/162.)
_BURST_S = 0.001


class _Lock:
    """The subset of trio.Lock pyfuse3 uses (``async with``), with no yield when free.

    Release wakes one waiter, which retries, rather than handing the lock over: the task
    that just served a request may take the next one at once, without a task switch."""

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            await self._lot.park()
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        if self._lot:
            self._lot.unpark()


class _Lowlevel(types.ModuleType):
    """trio.lowlevel with a wait_readable that skips the scheduler when data is waiting."""

    def __init__(self) -> None:
        super().__init__("zramfs.fusepatch.lowlevel")
        self._polls: dict[int, Any] = {}
        self._until = 0.0  # end of the current burst

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd: Any) -> None:
        if _monotonic() < self._until:
            p = self._polls.get(fd)
            if p is None:
                p = self._polls[fd] = select.poll()
                p.register(fd, select.POLLIN)
            if p.poll(0):
                return
        await trio.lowlevel.wait_readable(fd)
        self._until = _monotonic() + _BURST_S


class _Trio(types.ModuleType):
    """The trio module as pyfuse3 sees it after install_fastloop()."""

    def __init__(self) -> None:
        super().__init__("zramfs.fusepatch.trio")
        self.lowlevel = _Lowlevel()
        self.Lock = _Lock

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install_fastloop() -> None:
    """Give pyfuse3 the faster hand-off; call before pyfuse3.main()."""
    import pyfuse3

    if not fastloop_installed():
        pyfuse3.trio = _Trio()  # type: ignore[attr-defined]


def fastloop_installed() -> bool:
    import pyfuse3

    return isinstance(getattr(pyfuse3, "trio", None), _Trio)


# -- the self-check ----------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_pyfuse3() -> None:
    """Raise FusePatchError unless pyfuse3 (imported now) is a version and shape the patches
    were written for: 3.3 <= version < 4, a module-level ``trio`` it looks up at call time,
    and trio providing what the proxy wraps."""
    import pyfuse3

    problems = []
    version = getattr(pyfuse3, "__version__", "?")
    low, high = PYFUSE3_SUPPORTED
    if not low <= _version_tuple(version)[:2] < high:
        problems.append(
            f"pyfuse3 {version} is outside {low[0]}.{low[1]} .. <{high[0]}.{high[1]} "
            "(the fastloop proxy relies on 3.x looking `trio` up at call time)"
        )
    current = getattr(pyfuse3, "trio", None)
    if not (current is trio or isinstance(current, _Trio)):
        problems.append(
            f"pyfuse3.trio is {current!r}, not the trio module: pyfuse3 no longer looks its "
            "event loop up through a module attribute, so the fastloop proxy cannot be installed"
        )
    for name in ("Lock", "lowlevel"):
        if not hasattr(trio, name):
            problems.append(f"trio has no {name}")
    for name in ("wait_readable", "ParkingLot", "current_task"):
        if not hasattr(trio.lowlevel, name):
            problems.append(f"trio.lowlevel has no {name}")
    for name in ("init", "main", "close", "terminate", "invalidate_entry_async", "FileInfo"):
        if not hasattr(pyfuse3, name):
            problems.append(f"pyfuse3 has no {name}")
    if problems:
        raise FusePatchError("pyfuse3 is not as zramfs expects: " + "; ".join(problems))


def check_session() -> None:
    """After ``pyfuse3.init``: raise FusePatchError unless the shim's hooks are in effect
    (the libfuse major version it was built for, each hooked symbol bound to the shim, the
    session created through it) and the fastloop proxy is installed."""
    if _lib is None:
        raise FusePatchError("the shim is not loaded (fusepatch.install() was not called)")
    problems = []
    runtime, built = _lib.zramfs_libfuse_runtime(), _lib.zramfs_libfuse_built()
    if runtime // 100 != LIBFUSE_MAJOR or runtime < built:
        problems.append(
            f"libfuse {runtime // 100}.{runtime % 100} runs, the shim was built against "
            f"{built // 100}.{built % 100}: rebuild it (pip install -e .)"
        )
    bound = _lib.zramfs_hooks_bound()
    for bit, name in _HOOKS.items():
        if not bound & bit:
            problems.append(f"{name} does not bind to the shim (libfuse's own is used)")
    if not hooked():
        problems.append("the FUSE session was not created through the shim: no fallocate handler")
    if not fastloop_installed():
        problems.append("the fastloop proxy is not installed")
    if problems:
        raise FusePatchError(
            "the pyfuse3/libfuse patches are not in effect: " + "; ".join(problems)
        )
