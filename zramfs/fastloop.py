"""A cheaper request hand-off for pyfuse3's main loop (same semantics, fewer trio passes).

pyfuse3 3.5's worker tasks (internal.pxi ``_session_loop``) take one request each through
``async with trio.Lock()`` and ``await trio.lowlevel.wait_readable(fd)`` before reading it
from /dev/fuse. With trio both always suspend the task: the lock yields even when it is
free, and wait_readable re-arms the fd in epoll (epoll_ctl) and parks until the next
scheduler pass has called epoll_wait, even when a request is already queued. Under load that
is two trio scheduler passes and two syscalls per request, about a third of the daemon's CPU
time on 4 KiB I/O. pyfuse3 looks its ``trio`` module up at call time (pyfuse3.asyncio swaps
it for the same reason), so :func:`install` gives it a proxy of trio with two changes:

* ``Lock`` is a lock that is taken without suspending when it is free; release wakes the
  longest waiter, which takes the lock if it is still free when it runs;
* ``lowlevel.wait_readable`` first asks poll(2) with a zero timeout whether the fd is
  readable, and returns at once if it is. To keep other tasks (commits of requests that
  were compressed on a worker thread, the signal watcher) from starving while requests keep
  arriving, the shortcut is taken for at most ``_BURST_S`` seconds after a real wait; then
  a request goes through trio's own wait_readable, which runs a full scheduler pass.

Everything else pyfuse3 uses (nurseries, current_task, notify_closing, tokens) is trio's.
"""

from __future__ import annotations

import select
import types
from time import monotonic as _monotonic
from typing import Any

import pyfuse3
import trio

__all__ = ["install", "installed"]

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
        super().__init__("zramfs.fastloop.lowlevel")
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
    """The trio module as pyfuse3 sees it after install()."""

    def __init__(self) -> None:
        super().__init__("zramfs.fastloop.trio")
        self.lowlevel = _Lowlevel()
        self.Lock = _Lock

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Give pyfuse3 the faster hand-off; call before pyfuse3.main()."""
    if not installed():
        pyfuse3.trio = _Trio()  # type: ignore[attr-defined]


def installed() -> bool:
    return isinstance(getattr(pyfuse3, "trio", None), _Trio)
