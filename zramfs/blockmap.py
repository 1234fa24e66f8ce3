"""BlockMap: which 4 KiB blocks of a backing store are taken, as zram's bitmap of them.

A block is free, taken (by a written-back page or a writeback in flight), or released but
not yet reusable: a freed block first waits in a discard queue so that the shell can punch
its hole (or discard it) before anyone writes it again, and a block that a read is still
fetching (pinned) is only queued once the read is done. take_discards() hands the queue to
the shell; reuse() makes those blocks free once their discards are done. One byte per
block, found with bytearray.find (memchr) from a rotating cursor. Pure: no I/O.
"""

from __future__ import annotations

__all__ = ["BlockMap"]

_FREE = 0
_TAKEN = 1
_RELEASED = 2  # freed, waiting in the discard queue


class BlockMap:
    """Allocation state of ``nblocks`` backing blocks. Not thread-safe: one owner."""

    __slots__ = ("_state", "_cursor", "_free", "_released", "_pins", "_deferred", "_discards")

    def __init__(self, nblocks: int) -> None:
        if nblocks <= 0:
            raise ValueError(f"a backing store needs at least one block, not {nblocks}")
        self._state = bytearray(nblocks)
        self._cursor = 0
        self._free = nblocks
        self._released = 0
        self._pins: dict[int, int] = {}
        self._deferred: set[int] = set()
        self._discards: list[int] = []

    @property
    def nblocks(self) -> int:
        return len(self._state)

    @property
    def free_blocks(self) -> int:
        """Blocks alloc() can hand out now (not counting those waiting for a discard)."""
        return self._free

    @property
    def pending(self) -> int:
        """Blocks freed but not yet reusable (pinned by a read, queued or being discarded)."""
        return self._released

    def alloc(self) -> int:
        """Take a free block and return its number, or -1 when none is free."""
        if not self._free:
            return -1
        state = self._state
        b = state.find(_FREE, self._cursor)
        if b < 0:
            b = state.find(_FREE, 0, self._cursor)
        state[b] = _TAKEN
        self._free -= 1
        self._cursor = b + 1 if b + 1 < len(state) else 0
        return b

    def free(self, block: int) -> None:
        """Give a taken block back: to the discard queue, or after its last read if pinned."""
        if self._state[block] != _TAKEN:
            raise ValueError(f"block {block} is not taken")
        self._state[block] = _RELEASED
        self._released += 1
        if block in self._pins:
            self._deferred.add(block)
        else:
            self._discards.append(block)

    def pin(self, block: int) -> None:
        """A read of ``block`` starts: it must not be reused until unpin()."""
        self._pins[block] = self._pins.get(block, 0) + 1

    def unpin(self, block: int) -> None:
        n = self._pins[block] - 1
        if n:
            self._pins[block] = n
            return
        del self._pins[block]
        if block in self._deferred:
            self._deferred.discard(block)
            self._discards.append(block)

    def take_discards(self) -> list[int]:
        """The freed blocks whose space the shell should discard (and then reuse())."""
        out, self._discards = self._discards, []
        return out

    def reuse(self, blocks: list[int]) -> None:
        """Blocks from take_discards() whose discard is done: free again."""
        state = self._state
        for b in blocks:
            if state[b] != _RELEASED:
                raise ValueError(f"block {b} was not released")
            state[b] = _FREE
        self._free += len(blocks)
        self._released -= len(blocks)

    def taken(self) -> int:
        """Blocks neither free nor released (for tests: pages on the store + in flight)."""
        return len(self._state) - self._free - self._released
