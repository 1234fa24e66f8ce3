"""The tier below memory with real data: through a loop device, to a backing store and back.

What a user checks after moving pages out of memory: mem_used_total fell, bd_stat counts the
pages, every byte reads back equal; overwriting and discarding written-back pages frees their
room in the backing file (its allocated blocks shrink: st_blocks, SEEK_DATA); a backing store
that fails its reads answers EIO for those pages only and counts them in failed_reads; and a
device with a mem_limit and a backing store keeps taking writes past the limit (automatic
writeback), reading everything back, until the backing store is full too.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    PAGE,
    LoopFactory,
    MiB,
    Resources,
    ZramfsFactory,
    ZramMount,
    compressible_chunks,
    run,
    wait_for,
)
from test_reliability_common import direct_read, direct_write

pytestmark = pytest.mark.mount


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def bd_stat(m: ZramMount, n: int = 0) -> tuple[int, int, int]:
    values = tuple(int(x) for x in m.read("bd_stat", n).split())
    assert len(values) == 3
    return values[0], values[1], values[2]


def allocated(path: Path) -> int:
    """Bytes the file has on disk (st_blocks is in 512-byte units; it also counts the file
    system's own blocks for the file, such as an extent tree's, hence the slack below)."""
    return path.stat().st_blocks * 512


def data_bytes(path: Path) -> int:
    """Bytes of the file that are data, not holes (SEEK_DATA/SEEK_HOLE)."""
    return sum(end - start for start, end in data_ranges(path))


SLACK = 64 * 1024  # file system metadata counted in st_blocks


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """The file's data extents by SEEK_DATA/SEEK_HOLE: [(start, end)]."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        at = 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            at = end
    finally:
        os.close(fd)
    return out


def half_random(size: int, seed: int) -> bytes:
    """Pages half random, half text: about 2:1, so the pool fills at a known pace."""
    rng = random.Random(seed)
    text = next(compressible_chunks(MiB, seed=seed))
    out = bytearray()
    at = 0
    while len(out) < size:
        out += rng.randbytes(PAGE // 2) + text[at : at + PAGE // 2]
        at = (at + PAGE // 2) % (MiB - PAGE)
    return bytes(out[:size])


def tier_mount(
    zramfs: ZramfsFactory,
    backing: Path | str,
    size: str = "64M",
    mem_limit: str | None = None,
) -> ZramMount:
    m = zramfs(size="0")
    m.set("backing_dev", str(backing))
    if mem_limit is not None:
        m.set("mem_limit", mem_limit)
    m.set("disksize", size)
    return m


# -- written back through a loop device, read back, overwritten, discarded --


def test_writeback_frees_memory_and_every_byte_reads_back(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    backing = sparse_file(tmp_path / "backing", 64 * MiB)
    m = tier_mount(zramfs, backing, size="64M")
    dev = loop(m.image())
    chunks = list(compressible_chunks(16 * MiB, seed=7))
    for n, chunk in enumerate(chunks):
        direct_write(dev, n * MiB, chunk)
    before = m.mm_stat()
    assert before.mem_used_total > 2 * MiB

    m.set("idle", "all")
    m.set("writeback", "idle")
    count, _, writes = bd_stat(m)
    pages = 16 * MiB // PAGE
    assert count == pages and writes == pages, m.read("bd_stat")
    after = m.mm_stat()
    assert after.mem_used_total < before.mem_used_total / 4, (before, after)
    assert after.orig_data_size == before.orig_data_size
    assert allocated(backing) >= pages * PAGE, "the backing file holds less than was written"

    for n, chunk in enumerate(chunks):
        assert direct_read(dev, n * MiB, MiB) == chunk, f"MiB {n} after writeback"
    assert bd_stat(m)[1] >= pages, "reads did not come from the backing store"
    assert m.io_stat().failed_reads == 0


def test_overwrite_and_discard_give_backing_blocks_back(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    backing = sparse_file(tmp_path / "backing", 64 * MiB)
    m = tier_mount(zramfs, backing, size="64M")
    dev = loop(m.image())
    chunks = list(compressible_chunks(16 * MiB, seed=3))
    for n, chunk in enumerate(chunks):
        direct_write(dev, n * MiB, chunk)
    m.set("writeback", "page_indexes=0-4095")
    full = allocated(backing)
    assert bd_stat(m)[0] == 4096
    assert full >= 16 * MiB

    # Overwrite the first 4 MiB: the new data lives in memory, the old blocks are freed.
    fresh = list(compressible_chunks(4 * MiB, seed=99))
    for n, chunk in enumerate(fresh):
        direct_write(dev, n * MiB, chunk)
    assert bd_stat(m)[0] == 3072, m.read("bd_stat")
    # Freed blocks are punched out of the file by the daemon's background pass, soon after.
    assert wait_for(lambda: data_bytes(backing) <= 12 * MiB, 20), data_ranges(backing)
    assert allocated(backing) <= 12 * MiB + SLACK, (full, allocated(backing))

    # Discard the next 8 MiB (blkdiscard -> loop -> PUNCH_HOLE on the image).
    run("blkdiscard", "-o", str(4 * MiB), "-l", str(8 * MiB), dev)
    assert bd_stat(m)[0] == 1024, m.read("bd_stat")
    assert wait_for(lambda: data_bytes(backing) <= 4 * MiB, 20), data_ranges(backing)
    assert allocated(backing) <= 4 * MiB + SLACK, allocated(backing)
    assert m.io_stat().notify_free >= 2048

    for n in range(16):
        got = direct_read(dev, n * MiB, MiB)
        if n < 4:
            assert got == fresh[n], f"MiB {n}: not the overwrite"
        elif n < 12:
            assert got == bytes(MiB), f"MiB {n}: discarded but not zero"
        else:
            assert got == chunks[n], f"MiB {n}: written back, untouched"

    # Discard the rest: nothing is left on the backing store, and the file is all holes.
    run("blkdiscard", dev)
    assert bd_stat(m)[0] == 0
    assert wait_for(lambda: data_ranges(backing) == [], 20), (
        f"data left in the backing file: {data_ranges(backing)}")
    assert allocated(backing) <= SLACK


# -- a backing store that fails --


@pytest.fixture
def dm_device(registry: Resources, tmp_path: Path) -> Iterator[tuple[str, int, str, str]]:
    """A device-mapper linear device over a loop device: (path, sectors, name, the loop).

    Teardown removes it with --deferred: it goes once the last holder (the zramfs daemon, which
    the registry unmounts after this fixture's teardown) closes it.
    """
    if shutil.which("dmsetup") is None:
        pytest.skip("dmsetup not installed")
    subprocess.run(["modprobe", "dm_mod"], capture_output=True, timeout=60)
    lower = registry.loop(sparse_file(tmp_path / "dm-lower", 32 * MiB), direct_io=False)
    sectors = 32 * MiB // 512
    name = f"zramfs-tiertest-{os.getpid()}-{random.randrange(1 << 30)}"
    res = subprocess.run(
        ["dmsetup", "create", name, "--table", f"0 {sectors} linear {lower} 0"],
        capture_output=True, text=True, timeout=60,
    )
    if res.returncode != 0:
        pytest.skip(f"dmsetup create failed: {res.stderr.strip()}")
    try:
        run("udevadm", "settle", check=False)
        yield f"/dev/mapper/{name}", sectors, name, lower
    finally:
        subprocess.run(["dmsetup", "resume", name], capture_output=True, timeout=60)
        subprocess.run(["dmsetup", "remove", "--deferred", name], capture_output=True, timeout=60)


def test_backing_store_read_error_is_eio_for_that_page_only(
    zramfs: ZramfsFactory, dm_device: tuple[str, int, str, str]
) -> None:
    path, sectors, name, lower = dm_device
    m = tier_mount(zramfs, path, size="16M")
    pages = [bytes(random.Random(i).randbytes(PAGE // 2)) * 2 for i in range(16)]
    m.pwrite(b"".join(pages), 0)
    m.set("writeback", "page_indexes=0-7")  # pages 0-7 on the backing store, 8-15 in memory
    assert bd_stat(m)[0] == 8
    assert m.pread(PAGE, 3 * PAGE) == pages[3]

    # The disk under the backing store starts failing every I/O.
    run("dmsetup", "suspend", name)
    run("dmsetup", "reload", name, "--table", f"0 {sectors} error")
    run("dmsetup", "resume", name)

    failed = m.io_stat().failed_reads
    with pytest.raises(OSError) as info:
        m.pread(PAGE, 5 * PAGE)
    assert info.value.errno == errno.EIO
    assert m.io_stat().failed_reads > failed, m.io_stat()
    # Pages in memory still read; the daemon keeps serving.
    for i in range(8, 16):
        assert m.pread(PAGE, i * PAGE) == pages[i], f"page {i}"
    assert m.read("initstate") == "1\n"
    with pytest.raises(OSError) as info:
        m.pread(PAGE, 0)
    assert info.value.errno == errno.EIO

    # The disk comes back: the written-back pages read again, nothing was lost.
    run("dmsetup", "suspend", name)
    run("dmsetup", "reload", name, "--table", f"0 {sectors} linear {lower} 0")
    run("dmsetup", "resume", name)
    for i in range(16):
        assert m.pread(PAGE, i * PAGE) == pages[i], f"page {i} once the disk is back"


def test_backing_file_truncated_under_zramfs_is_eio_for_those_pages(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    """Someone truncates the backing file: the written-back pages are gone from it. Reading
    them must fail (EIO, counted in failed_reads), never return zeros; the rest still reads."""
    backing = sparse_file(tmp_path / "backing", 16 * MiB)
    m = tier_mount(zramfs, backing, size="16M")
    pages = [bytes(random.Random(i).randbytes(PAGE // 2)) * 2 for i in range(16)]
    m.pwrite(b"".join(pages), 0)
    m.set("writeback", "page_indexes=0-7")
    assert bd_stat(m)[0] == 8
    os.truncate(backing, 0)

    failed = m.io_stat().failed_reads
    for i in range(8):
        with pytest.raises(OSError) as info:
            m.pread(PAGE, i * PAGE)
        assert info.value.errno == errno.EIO, f"page {i}: {info.value}"
    assert m.io_stat().failed_reads >= failed + 8, m.io_stat()
    for i in range(8, 16):
        assert m.pread(PAGE, i * PAGE) == pages[i], f"page {i}"
    # Overwriting a lost page gives it new contents, read from memory.
    m.pwrite(b"\x5a" * PAGE, 2 * PAGE)
    assert m.pread(PAGE, 2 * PAGE) == b"\x5a" * PAGE
    assert m.read("initstate") == "1\n"


# -- automatic writeback: past mem_limit with a backing store --


def test_auto_writeback_keeps_accepting_writes_past_mem_limit(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    backing = sparse_file(tmp_path / "backing", 256 * MiB)
    m = tier_mount(zramfs, backing, size="256M", mem_limit="8M")
    assert m.read("auto_writeback") == "90\n"
    dev = loop(m.image())
    written = {}
    for n in range(64):  # 64 MiB of 2:1 data: about 32 MiB compressed into an 8 MiB limit
        written[n] = half_random(MiB, seed=n)
        direct_write(dev, n * MiB, written[n])
    s = m.mm_stat()
    assert m.io_stat().failed_writes == 0, m.io_stat()
    assert s.mem_used_total <= 8 * MiB + 8 * PAGE, s
    assert bd_stat(m)[0] > 0, "nothing was written back"
    for n, data in written.items():
        assert direct_read(dev, n * MiB, MiB) == data, f"MiB {n}"
    assert m.io_stat().failed_reads == 0


def test_past_mem_limit_with_the_backing_store_full_too_fails_with_eio(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    backing = sparse_file(tmp_path / "backing", 4 * MiB)
    m = tier_mount(zramfs, backing, size="128M", mem_limit="4M")
    dev = loop(m.image())
    written = {}
    error = None
    for n in range(64):
        data = half_random(MiB, seed=100 + n)
        try:
            direct_write(dev, n * MiB, data)
        except OSError as exc:
            error = exc
            break
        written[n] = data
    assert error is not None, "64 MiB of 2:1 data went into 4 MiB of memory and 4 MiB of file"
    assert error.errno == errno.EIO, error
    assert m.io_stat().failed_writes > 0
    assert len(written) >= 8, f"only {len(written)} MiB before EIO"
    for n, data in written.items():
        assert direct_read(dev, n * MiB, MiB) == data, f"MiB {n}"
