"""The writeback tier on a real mount, happy paths: a sparse backing file, writeback and
read-back, discard punching holes, recompression, automatic writeback at mem_limit.
(tests/test_mount_tier*.py hold the exhaustive control-file tests.)"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

from conftest import PAGE, LoopFactory, MiB, ZramfsFactory, punch_hole, text_bytes


def backing_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def bd_stat(m: object, n: int = 0) -> tuple[int, int, int]:
    fields = m.read("bd_stat", n).split()  # type: ignore[attr-defined]
    assert len(fields) == 3
    a, b, c = (int(x) for x in fields)
    return a, b, c


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_writeback_reads_back_and_discard_punches_holes(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    back = backing_file(tmp_path, 64 * MiB)
    m = zramfs(size="0")
    assert m.read("backing_dev") == "none\n"
    m.set("backing_dev", str(back))
    m.set("disksize", "32M")
    assert m.read("backing_dev") == f"{back}\n"
    assert m.write("backing_dev", str(back)) == errno.EBUSY
    rng = random.Random(5)
    noise = rng.randbytes(2 * MiB)  # huge pages
    text = text_bytes(2 * MiB, seed=3)
    m.pwrite(noise, 0)
    m.pwrite(text, 4 * MiB)
    before = m.mm_stat()
    m.set("writeback", "huge")
    count, reads, writes = bd_stat(m)
    assert count == writes == 2 * MiB // PAGE and reads == 0
    after = m.mm_stat()
    assert after.huge_pages == 0 and after.mem_used_total < before.mem_used_total - MiB
    assert after.orig_data_size == before.orig_data_size
    assert allocated(back) >= 2 * MiB
    assert m.pread(2 * MiB, 0) == noise
    assert bd_stat(m)[1] >= 2 * MiB // PAGE
    # Everything else, page by page, with page_indexes.
    m.set("writeback", f"page_indexes={4 * MiB // PAGE}-{6 * MiB // PAGE - 1}")
    assert bd_stat(m)[0] == 4 * MiB // PAGE
    assert m.pread(2 * MiB, 4 * MiB) == text
    # Overwrite part of a written-back range: the new data wins and the block is freed.
    m.pwrite(b"x" * PAGE * 3 + b"y" * 100, 4 * MiB + 10)
    expect = bytearray(text)
    expect[10 : 10 + 3 * PAGE + 100] = b"x" * PAGE * 3 + b"y" * 100
    assert m.pread(2 * MiB, 4 * MiB) == bytes(expect)
    # Discard gives the blocks back and punches the file's holes (the daemon does it in
    # the background, within a moment).
    punch_hole(m.image(), [(0, 2 * MiB)])
    deadline = time.monotonic() + 10
    while allocated(back) > 2 * MiB + 256 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert allocated(back) <= 2 * MiB + 256 * 1024
    assert m.pread(2 * MiB, 0) == bytes(2 * MiB)
    assert bd_stat(m)[0] < 3 * MiB // PAGE
    assert m.io_stat().failed_reads == 0


def test_writeback_idle_and_limit(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    back = backing_file(tmp_path, 16 * MiB)
    m = zramfs(size="0")
    m.set("backing_dev", str(back))
    m.set("disksize", "16M")
    data = text_bytes(MiB, seed=9)
    m.pwrite(data, 0)
    m.set("writeback_limit_enable", "1")
    m.set("writeback_limit", "10")
    m.set("idle", "all")
    assert m.write("writeback", "idle") == errno.EIO  # the budget of 10 pages ran out
    assert bd_stat(m)[0] == 10 and m.read("writeback_limit") == "0\n"
    m.set("writeback_limit_enable", "0")
    m.set("writeback", "type=idle")
    assert bd_stat(m)[0] == MiB // PAGE
    assert m.pread(MiB, 0) == data
    assert m.write("writeback", "bogus") == errno.EINVAL
    assert m.write("writeback", "page_index=99999999") == errno.ERANGE


def test_recompress_with_zstd(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    m.set("recomp_algorithm", "algo=zstd priority=1")
    assert "#1: " in m.read("recomp_algorithm") and "[zstd]" in m.read("recomp_algorithm")
    m.set("disksize", "32M")
    data = text_bytes(4 * MiB, seed=4)
    m.pwrite(data, 0)
    before = m.mm_stat()
    m.set("recompress", "type=huge")  # none are huge: nothing changes
    assert m.mm_stat() == before
    m.set("recompress", "max_pages=100000")
    after = m.mm_stat()
    assert after.compr_data_size < before.compr_data_size
    assert m.pread(4 * MiB, 0) == data
    assert "recompressed" in m.read("stats")


def test_auto_writeback_keeps_writes_going_past_mem_limit(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    back = backing_file(tmp_path, 64 * MiB)
    m = zramfs(size="0")
    m.set("backing_dev", str(back))
    m.set("mem_limit", "4M")
    assert m.read("auto_writeback") == "90\n"
    m.set("disksize", "32M")
    rng = random.Random(11)
    data = rng.randbytes(12 * MiB)  # three times the limit, incompressible
    m.pwrite(data, 0)
    s = m.mm_stat()
    assert s.mem_used_total <= 4 * MiB
    assert bd_stat(m)[0] >= 8 * MiB // PAGE
    assert m.io_stat().failed_writes == 0
    assert m.pread(12 * MiB, 0) == data


def wait_for(predicate: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_background_policy_recompresses_and_writes_back(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    back = backing_file(tmp_path, 16 * MiB)
    m = zramfs(size="0")
    m.set("backing_dev", str(back))
    m.set("recomp_algorithm", "algo=zstd")
    m.set("disksize", "16M")
    hot = text_bytes(MiB, seed=21)
    m.pwrite(hot, 0)
    m.pwrite(text_bytes(MiB, seed=22), 2 * MiB)
    assert m.read("policy_interval") == "0\n"  # off by default: nothing moves
    m.set("recompress_after", "1")
    m.set("writeback_after", "3")
    m.set("policy_interval", "1")
    assert wait_for(lambda: "recompressed     0 pages" not in m.read("stats"))
    assert wait_for(lambda: bd_stat(m)[0] >= 2 * MiB // PAGE)
    assert m.pread(MiB, 0) == hot
    assert m.pread(MiB, 2 * MiB) == text_bytes(MiB, seed=22)
    assert m.io_stat().failed_reads == 0


def test_automatic_compaction(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    assert m.read("auto_compact") == "25\n"
    m.pwrite(text_bytes(8 * MiB, seed=17), 0)
    # Free every other page: half of the pool's slots are now holes in zspages.
    punch_hole(m.image(), [(off, PAGE) for off in range(0, 8 * MiB, 2 * PAGE)])
    assert wait_for(lambda: m.mm_stat().pages_compacted > 0)
    m.set("auto_compact", "0")
    assert m.read("auto_compact") == "0\n"


def test_backing_read_error_is_eio_for_that_page_only(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    back = backing_file(tmp_path, 8 * MiB)
    m = zramfs(size="0")
    m.set("backing_dev", str(back))
    m.set("disksize", "8M")
    gone = text_bytes(64 * 1024, seed=31)
    kept = text_bytes(64 * 1024, seed=32)
    m.pwrite(gone, 0)
    m.pwrite(kept, MiB)
    m.set("writeback", f"page_indexes=0-{64 * 1024 // PAGE - 1}")
    assert bd_stat(m)[0] == 16
    os.truncate(back, 0)  # the backing store loses its blocks: reads come back short
    fd = os.open(m.image(), os.O_RDONLY)
    try:
        try:
            os.pread(fd, PAGE, 0)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:
            raise AssertionError("a lost backing block read back without an error")
    finally:
        os.close(fd)
    assert m.io_stat().failed_reads >= 1
    assert m.pread(64 * 1024, MiB) == kept  # the daemon keeps serving the rest
    m.pwrite(gone[:PAGE], 0)  # a rewrite replaces the lost page
    assert m.pread(PAGE, 0) == gone[:PAGE]


def test_block_device_backing_store(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    dev = loop(backing_file(tmp_path, 16 * MiB))
    m = zramfs(size="0")
    m.set("backing_dev", dev)
    m.set("disksize", "16M")
    assert m.read("backing_dev") == f"{dev}\n"
    data = text_bytes(2 * MiB, seed=41)
    m.pwrite(data, 0)
    m.set("idle", "all")
    m.set("writeback", "idle")
    assert bd_stat(m)[0] == 2 * MiB // PAGE
    assert m.pread(2 * MiB, 0) == data
    punch_hole(m.image(), [(0, MiB)])  # freed blocks are discarded on the device
    assert wait_for(lambda: bd_stat(m)[0] == MiB // PAGE)
    assert m.pread(MiB, MiB) == data[MiB:]


def test_full_backing_store_gives_the_kernels_eio(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    back = backing_file(tmp_path, 2 * MiB)  # 512 blocks
    m = zramfs(size="0")
    m.set("backing_dev", str(back))
    m.set("mem_limit", "4M")
    m.set("disksize", "32M")
    data = random.Random(12).randbytes(12 * MiB)
    fd = os.open(m.image(), os.O_WRONLY)
    written = 0
    try:
        while written < len(data):
            written += os.pwrite(fd, data[written : written + MiB], written)
    except OSError as exc:
        assert exc.errno == errno.EIO
    finally:
        os.close(fd)
    assert written < len(data)  # memory and backing store are both full
    assert bd_stat(m)[0] == 512
    assert m.io_stat().failed_writes >= 1
    assert m.mm_stat().mem_used_total <= 4 * MiB
    assert m.pread(written, 0) == data[:written]  # what was accepted is all there
