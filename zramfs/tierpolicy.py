"""When the tier acts and how much: pure decisions for automatic writeback, the background
policy and automatic compaction, with no I/O and no clock of their own.

The automatic writeback mark is a percentage of mem_limit: above it (the high mark) the
daemon writes back the coldest pages until mem_used_total is HYSTERESIS_PERCENT of the limit
below it (the low mark). How many pages a round takes follows from the bytes to free and the
average compressed object. Compaction is due when the pages the pool could free by
compacting reach a percentage of its pages, or when the host's memory pressure (the "some
avg10" figure of /proc/pressure/memory) passes PSI_THRESHOLD. Which pages go is
PageStore.cold_pages (oldest access first) and select_writeback (the kernel's rules).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HYSTERESIS_PERCENT",
    "WAITING_HEADROOM_PERCENT",
    "MAX_ROUND_PAGES",
    "PSI_THRESHOLD",
    "Marks",
    "compaction_due",
    "marks",
    "pages_to_write_back",
    "parse_psi_some_avg10",
]

PAGE_SIZE = 4096
HYSTERESIS_PERCENT = 5  # the low mark is this many percent of mem_limit under the high one
# When a write is waiting for room, writeback goes on until usage is this many percent of
# mem_limit under the limit: swap-outs come in bursts, and a burst that finds only a few
# percent free waits again at once (tier_fullswap with a backing file: OOM kill after
# 256 MiB with 5, finished with 15).
WAITING_HEADROOM_PERCENT = 15
MAX_ROUND_PAGES = 4096  # at most this many pages per automatic writeback round (16 MiB)
PSI_THRESHOLD = 10.0  # "some avg10" percent of memory stall that triggers compaction


@dataclass(frozen=True, slots=True)
class Marks:
    """The automatic writeback marks of a device, in bytes (0, 0: off)."""

    high: int
    low: int

    @property
    def on(self) -> bool:
        return self.high > 0


def marks(mem_limit: int, percent: int) -> Marks:
    """High and low marks for ``percent`` (1..100) of ``mem_limit``; off if either is 0."""
    if not mem_limit or not percent:
        return Marks(0, 0)
    high = mem_limit * min(percent, 100) // 100
    low = max(high - mem_limit * HYSTERESIS_PERCENT // 100, 0)
    return Marks(high, low)


def pages_to_write_back(
    mem_used: int, target: int, compr_data_size: int, pool_pages_stored: int
) -> int:
    """How many pages one round should write back to bring ``mem_used`` down to
    ``target``: the bytes over it divided by the average object size (at least one page
    when over, at most MAX_ROUND_PAGES). ``pool_pages_stored`` counts the pages that hold
    a pool object (neither same-filled nor written back)."""
    excess = mem_used - target
    if excess <= 0 or pool_pages_stored <= 0:
        return 0
    average = max(compr_data_size // pool_pages_stored, 1)
    return max(1, min(MAX_ROUND_PAGES, -(-excess // average)))


def compaction_due(total_pages: int, freeable_pages: int, percent: int) -> bool:
    """True when compaction would free at least ``percent`` of the pool's pages."""
    if not percent or not total_pages or not freeable_pages:
        return False
    return freeable_pages * 100 >= total_pages * percent


def parse_psi_some_avg10(text: str) -> float:
    """The avg10 figure of the "some" line of /proc/pressure/memory (0.0 if absent)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return 0.0
    return 0.0
