"""fusepatch's fastloop: the trio proxy pyfuse3 runs on (lock semantics, readable shortcut)."""

from __future__ import annotations

import os

import pyfuse3
import trio

from zramfs import fusepatch


def test_lock_excludes_and_wakes_waiters() -> None:
    inside: list[int] = []
    order: list[int] = []

    async def worker(k: int, lock: fusepatch._Lock) -> None:
        async with lock:
            inside.append(k)
            assert len(inside) == 1
            await trio.sleep(0)  # let the others try while this one holds it
            order.append(k)
            inside.remove(k)

    async def main() -> None:
        lock = fusepatch._Lock()
        async with trio.open_nursery() as nursery:
            for k in range(5):
                nursery.start_soon(worker, k, lock)

    trio.run(main)
    assert sorted(order) == list(range(5))


def test_wait_readable_returns_for_data_and_waits_without() -> None:
    low = fusepatch._Lowlevel()
    r, w = os.pipe()
    try:

        async def main() -> None:
            os.write(w, b"x")
            await low.wait_readable(r)  # data waiting: returns (shortcut or not)
            await low.wait_readable(r)  # still readable: the shortcut returns at once
            os.read(r, 1)
            with trio.move_on_after(0.05) as scope:
                await low.wait_readable(r)  # nothing to read: must really wait
            assert scope.cancelled_caught

        trio.run(main)
    finally:
        os.close(r)
        os.close(w)


def test_install_swaps_pyfuse3_trio_and_forwards() -> None:
    saved = pyfuse3.trio  # type: ignore[attr-defined]
    try:
        fusepatch.install_fastloop()
        assert fusepatch.fastloop_installed()
        proxy = pyfuse3.trio  # type: ignore[attr-defined]
        assert proxy.Lock is fusepatch._Lock
        assert proxy.open_nursery is trio.open_nursery
        assert proxy.lowlevel.current_task is trio.lowlevel.current_task
        assert proxy.ClosedResourceError is trio.ClosedResourceError
    finally:
        pyfuse3.trio = saved  # type: ignore[attr-defined]
