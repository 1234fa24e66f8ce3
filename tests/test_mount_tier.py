"""The tier below memory, tried on a real mount as a user of the kernel's zram would try it.

Each control file of the writeback and recompression tier (backing_dev, writeback,
writeback_limit_enable, writeback_limit, bd_stat, idle with seconds, recomp_algorithm,
recompress, priority= in algorithm_params) gets its good inputs and its bad ones, with the
errnos and formats of the kernel's drivers/block/zram/zram_drv.c (mainline with
CONFIG_ZRAM_WRITEBACK and CONFIG_ZRAM_MULTI_COMP); zramfs's own files (auto_writeback,
policy_interval, recompress_after, writeback_after, auto_compact) get the contract of the
project's brief.  (An empty write never reaches a FUSE file system, so the empty input a
sysfs store() sees is tried as "\n", which is what `echo > file` writes.)  A rejected write
must change nothing, so each bad input is followed by a
look at what it could have changed.

The one deliberate difference from the kernel: the kernel takes only a block device as
backing_dev (ENOTBLK for anything else); zramfs takes a regular file as well.

The data tests (written-back pages reading back, discard punching holes in the backing file,
a failing backing store, automatic writeback past mem_limit) are in test_mount_tier_data.py.
"""

from __future__ import annotations

import errno
import random
import re
import time
from pathlib import Path

import pytest

from conftest import (
    PAGE,
    LoopFactory,
    MiB,
    ZramfsFactory,
    ZramMount,
    assert_errno,
    punch_hole,
    sh,
    text_bytes,
)

pytestmark = pytest.mark.mount

ALGORITHMS = ["lz4", "lz4hc", "zstd", "deflate"]


# -- helpers --


def sparse_file(path: Path, size: int) -> Path:
    """A sparse regular file of `size` bytes (no block allocated)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def bd_stat(m: ZramMount, n: int = 0) -> tuple[int, int, int]:
    """(bd_count, bd_reads, bd_writes), checking the kernel's "%8llu %8llu %8llu\\n" exactly."""
    text = m.read("bd_stat", n)
    values = tuple(int(x) for x in text.split())
    assert len(values) == 3, f"bd_stat {text!r}"
    assert text == "%8d %8d %8d\n" % values, f"bd_stat format {text!r}"
    return values[0], values[1], values[2]


def tier_device(
    zramfs: ZramfsFactory, tmp_path: Path, size: str = "16M", backing: int = 16 * MiB
) -> tuple[ZramMount, Path]:
    """An uninitialised mount; backing_dev set to a fresh sparse file; then disksize."""
    m = zramfs(size="0")
    backing_path = sparse_file(tmp_path / "backing", backing)
    m.set("backing_dev", str(backing_path))
    m.set("disksize", size)
    return m, backing_path


def text_pages(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct compressible pages (log-like text, about 3:1 with lz4)."""
    base = text_bytes(count * PAGE, seed)
    pages = []
    for i in range(count):
        page = bytearray(base[i * PAGE : (i + 1) * PAGE])
        page[:24] = f"<seed {seed:04d} page {i:06d}>".encode().ljust(24)
        pages.append(bytes(page))
    return pages


def random_pages(count: int, seed: int = 0) -> list[bytes]:
    """`count` pages of random bytes: no algorithm shrinks them, so they are stored huge."""
    rng = random.Random(seed)
    return [rng.randbytes(PAGE) for _ in range(count)]


def put_pages(m: ZramMount, first: int, pages: list[bytes], n: int = 0) -> None:
    m.pwrite(b"".join(pages), first * PAGE, n)


def get_page(m: ZramMount, index: int, n: int = 0) -> bytes:
    return m.pread(PAGE, index * PAGE, n)


def algorithm_line(line: str) -> tuple[int, list[str], str]:
    """One `#N: a b [c] d` line of recomp_algorithm: (N, the names, the selected one)."""
    match = re.fullmatch(r"#(\d): (.*)", line)
    assert match, f"not a recomp_algorithm line: {line!r}"
    names = match.group(2).split()
    chosen = [n[1:-1] for n in names if n.startswith("[") and n.endswith("]")]
    assert len(chosen) == 1, f"not exactly one selected algorithm in {line!r}"
    return int(match.group(1)), [n.strip("[]") for n in names], chosen[0]


# -- backing_dev --


def test_backing_dev_reads_none_until_set(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", devices=2)
    assert m.read("backing_dev", 0) == "none\n"
    assert m.read("backing_dev", 1) == "none\n"
    m.set("disksize", "16M", 1)
    assert m.read("backing_dev", 1) == "none\n"


def test_backing_dev_takes_a_sparse_regular_file(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m = zramfs(size="0")
    backing = sparse_file(tmp_path / "backing.img", 64 * MiB)
    sh(f"echo {backing} > {m.dev()}/backing_dev")  # echo adds the newline the kernel drops
    assert m.read("backing_dev") == f"{backing}\n"
    m.set("disksize", "32M")
    assert m.read("backing_dev") == f"{backing}\n"
    assert backing.stat().st_size == 64 * MiB, "the backing file was resized"


def test_backing_dev_takes_a_block_device(
    zramfs: ZramfsFactory, loop: LoopFactory, tmp_path: Path
) -> None:
    dev = loop(sparse_file(tmp_path / "under-loop.img", 32 * MiB))
    m = zramfs(size="0")
    m.set("backing_dev", dev)
    assert m.read("backing_dev") == f"{dev}\n"
    m.set("disksize", "16M")
    assert m.read("backing_dev") == f"{dev}\n"
    assert m.read("initstate") == "1\n"


def test_backing_dev_is_busy_once_initialised(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m = zramfs(size="16M")
    backing = sparse_file(tmp_path / "backing", 16 * MiB)
    assert_errno(m.write("backing_dev", str(backing)), errno.EBUSY, "backing_dev after disksize")
    assert m.read("backing_dev") == "none\n"


def test_backing_dev_cannot_change_after_disksize(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, backing = tier_device(zramfs, tmp_path)
    other = sparse_file(tmp_path / "other", 16 * MiB)
    assert_errno(m.write("backing_dev", str(other)), errno.EBUSY, "backing_dev after disksize")
    assert m.read("backing_dev") == f"{backing}\n"


@pytest.mark.parametrize(
    "what, expected",
    [("missing", errno.ENOENT), ("directory", errno.EISDIR), ("empty", errno.EINVAL)],
)
def test_backing_dev_refuses_what_cannot_hold_pages(
    zramfs: ZramfsFactory, tmp_path: Path, what: str, expected: int
) -> None:
    """A path that does not exist (the open's ENOENT), a directory (EISDIR, as opening one
    O_RDWR answers) and a store of zero pages (EINVAL, as the kernel's zero-sized device)."""
    m = zramfs(size="0")
    if what == "missing":
        path = tmp_path / "no-such-file"
    elif what == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
    else:
        path = sparse_file(tmp_path / "empty", 0)
    assert_errno(m.write("backing_dev", str(path)), expected, f"backing_dev <- {what}")
    assert m.read("backing_dev") == "none\n"
    m.set("disksize", "16M")  # the device still initialises, without a backing store
    assert m.read("backing_dev") == "none\n"


def test_backing_dev_can_be_replaced_before_disksize(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m = zramfs(size="0")
    first = sparse_file(tmp_path / "first", 16 * MiB)
    second = sparse_file(tmp_path / "second", 16 * MiB)
    m.set("backing_dev", str(first))
    m.set("backing_dev", str(second))
    assert m.read("backing_dev") == f"{second}\n"


def test_reset_forgets_the_backing_dev(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, backing = tier_device(zramfs, tmp_path)
    put_pages(m, 0, text_pages(4))
    m.set("writeback", "page_index=1")
    m.set("reset", "1")
    assert m.read("backing_dev") == "none\n"
    assert bd_stat(m) == (0, 0, 0)
    # The file may be used again, by this device or another.
    m.set("backing_dev", str(backing))
    m.set("disksize", "16M")
    assert get_page(m, 1) == bytes(PAGE), "a reset device reads zeros"


# -- bd_stat --


def test_bd_stat_is_zero_before_anything(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m = zramfs(size="0")
    assert bd_stat(m) == (0, 0, 0)
    m.set("backing_dev", str(sparse_file(tmp_path / "b", 16 * MiB)))
    m.set("disksize", "16M")
    assert bd_stat(m) == (0, 0, 0)
    assert_errno(m.write("bd_stat", "0"), errno.EACCES, "bd_stat is read-only")


# -- writeback: refusals --


def test_writeback_needs_an_initialised_device(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    for value in ("idle", "huge", "page_index=0"):
        assert_errno(m.write("writeback", value), errno.EINVAL, f"writeback <- {value} uninit")


def test_writeback_without_backing_dev_is_enodev(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="16M")
    put_pages(m, 0, text_pages(4))
    m.set("idle", "all")
    before = m.mm_stat()
    # The kernel answers ENODEV before it looks at the words: even a bad one gets ENODEV.
    for value in ("idle", "huge", "huge_idle", "incompressible", "type=idle", "page_index=1",
                  "page_indexes=0-3", "bogus"):
        assert_errno(m.write("writeback", value), errno.ENODEV, f"writeback <- {value}")
    assert m.mm_stat() == before
    assert bd_stat(m) == (0, 0, 0)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bogus", errno.EINVAL),
        ("type=bogus", errno.EINVAL),
        ("type=", errno.EINVAL),
        ("idle_huge", errno.EINVAL),
        ("page_index=abc", errno.EINVAL),
        ("page_index=-1", errno.EINVAL),
        ("page_index=4096", errno.ERANGE),  # == the number of pages of a 16 MiB device
        ("page_index=99999999", errno.ERANGE),
        ("page_indexes=5", errno.EINVAL),
        ("page_indexes=a-5", errno.EINVAL),
        ("page_indexes=1-b", errno.EINVAL),
        ("page_indexes=10-5", errno.ERANGE),
        ("page_indexes=0-4096", errno.ERANGE),
        ("page_indexes=4096-4097", errno.ERANGE),
        ("page_index=1 page_index=4096", errno.ERANGE),
    ],
)
def test_writeback_bad_input_changes_nothing(
    zramfs: ZramfsFactory, tmp_path: Path, value: str, expected: int
) -> None:
    m, backing = tier_device(zramfs, tmp_path)
    put_pages(m, 0, text_pages(8))
    m.set("idle", "all")
    before = m.mm_stat()
    assert_errno(m.write("writeback", value), expected, f"writeback <- {value!r}")
    assert bd_stat(m) == (0, 0, 0)
    assert m.mm_stat() == before
    assert backing.stat().st_blocks == 0, "a refused writeback wrote to the backing file"


# -- writeback: what each form takes --


def test_writeback_page_index_moves_one_page(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, backing = tier_device(zramfs, tmp_path)
    pages = text_pages(8)
    put_pages(m, 0, pages)
    before = m.mm_stat()
    m.set("writeback", "page_index=3")
    count, reads, writes = bd_stat(m)
    assert (count, writes) == (1, 1), m.read("bd_stat")
    after = m.mm_stat()
    assert after.orig_data_size == before.orig_data_size, "a written-back page is still stored"
    assert after.compr_data_size < before.compr_data_size, (before, after)
    assert backing.stat().st_blocks > 0, "nothing reached the backing file"
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i}"
    assert bd_stat(m)[1] >= reads + 1, "page 3 was not read from the backing store"
    # Already written back: a second request finds nothing to do and succeeds.
    m.set("writeback", "page_index=3")
    assert bd_stat(m)[2] == 1


def test_writeback_several_indexes_in_one_write(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    """Linux 6.16's form: page_index= and page_indexes=LO-HI (inclusive), several at once."""
    m, _ = tier_device(zramfs, tmp_path)
    pages = text_pages(16)
    put_pages(m, 0, pages)
    m.set("writeback", "page_index=1 page_indexes=4-6 page_indexes=10-10")
    count, _, writes = bd_stat(m)
    assert (count, writes) == (5, 5), m.read("bd_stat")
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i}"


def test_writeback_skips_unwritten_and_same_filled_pages(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    put_pages(m, 0, [bytes(PAGE), b"\xab" * PAGE] + text_pages(2))
    m.set("writeback", "page_indexes=0-9")  # 0, 1 same-filled; 2, 3 data; 4-9 never written
    assert bd_stat(m)[2] == 2
    assert get_page(m, 1) == b"\xab" * PAGE
    assert get_page(m, 5) == bytes(PAGE)


def test_writeback_huge_takes_only_huge_pages(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    text, rand = text_pages(6), random_pages(3)
    put_pages(m, 0, text + rand)
    assert m.mm_stat().huge_pages == 3
    m.set("writeback", "huge")
    assert bd_stat(m)[2] == 3
    assert m.mm_stat().huge_pages == 0, "written-back pages still counted as huge in memory"
    for i, page in enumerate(text + rand):
        assert get_page(m, i) == page, f"page {i}"


@pytest.mark.parametrize("form", ["idle", "type=idle"])
def test_writeback_idle_takes_only_idle_pages(
    zramfs: ZramfsFactory, tmp_path: Path, form: str
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    old, new = text_pages(5, seed=1), text_pages(3, seed=2)
    put_pages(m, 0, old)
    m.set("idle", "all")
    put_pages(m, 5, new)  # written after the mark: not idle
    m.set("writeback", form)
    assert bd_stat(m)[2] == 5
    # Reading a page clears its idle mark; a written-back page is not marked again.
    m.set("idle", "all")
    get_page(m, 5)
    m.set("writeback", form)
    assert bd_stat(m)[2] == 7
    for i, page in enumerate(old + new):
        assert get_page(m, i) == page, f"page {i}"


@pytest.mark.parametrize("form", ["huge_idle", "type=huge_idle"])
def test_writeback_huge_idle_takes_pages_both_huge_and_idle(
    zramfs: ZramfsFactory, tmp_path: Path, form: str
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    put_pages(m, 0, random_pages(2, seed=1) + text_pages(2, seed=1))  # idle: 2 huge, 2 not
    m.set("idle", "all")
    put_pages(m, 4, random_pages(3, seed=2))  # huge, not idle
    m.set("writeback", form)
    assert bd_stat(m)[2] == 2


@pytest.mark.parametrize("form", ["type=huge", "huge"])
def test_writeback_type_forms_match_the_old_ones(
    zramfs: ZramfsFactory, tmp_path: Path, form: str
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    put_pages(m, 0, random_pages(2) + text_pages(2))
    m.set("writeback", form)
    assert bd_stat(m)[2] == 2


def test_writeback_incompressible_takes_pages_recompression_gave_up_on(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    """`incompressible` pages are those the last recompression algorithm could not shrink."""
    m = zramfs(size="0")
    m.set("backing_dev", str(sparse_file(tmp_path / "backing", 16 * MiB)))
    m.set("recomp_algorithm", "algo=zstd priority=1")
    m.set("disksize", "16M")
    put_pages(m, 0, random_pages(3) + text_pages(3))
    m.set("writeback", "incompressible")  # none yet: valid, and nothing to do
    assert bd_stat(m)[2] == 0
    m.set("recompress", "type=huge")  # zstd cannot shrink random pages either
    m.set("writeback", "type=incompressible")
    assert bd_stat(m)[2] == 3


# -- writeback_limit_enable / writeback_limit --


def test_writeback_limit_files_defaults_and_bad_input(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert m.read("writeback_limit_enable") == "0\n"
    assert m.read("writeback_limit") == "0\n"
    for bad in ("yes", "-1", "\n", "1.5", "0x10"):
        assert_errno(m.write("writeback_limit_enable", bad), errno.EINVAL, f"enable <- {bad!r}")
        assert_errno(m.write("writeback_limit", bad), errno.EINVAL, f"limit <- {bad!r}")
    assert m.read("writeback_limit_enable") == "0\n"
    assert m.read("writeback_limit") == "0\n"
    # Both may be set before the device is initialised, and after.
    m.set("writeback_limit_enable", "1")
    m.set("writeback_limit", "1000")
    assert m.read("writeback_limit_enable") == "1\n"
    assert m.read("writeback_limit") == "1000\n"
    m.set("disksize", "16M")
    m.set("writeback_limit", "12\n")
    assert m.read("writeback_limit") == "12\n"
    m.set("writeback_limit_enable", "0")
    assert m.read("writeback_limit_enable") == "0\n"


def test_writeback_limit_counts_down_and_then_eio(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    pages = text_pages(8)
    put_pages(m, 0, pages)
    m.set("writeback_limit_enable", "1")
    m.set("writeback_limit", "3")
    m.set("idle", "all")
    # Three pages fit the budget; the fourth finds it used up: EIO, as the kernel answers.
    assert_errno(m.write("writeback", "idle"), errno.EIO, "writeback past the budget")
    assert bd_stat(m)[2] == 3
    assert m.read("writeback_limit") == "0\n"
    assert_errno(m.write("writeback", "idle"), errno.EIO, "writeback with no budget")
    assert bd_stat(m)[2] == 3
    # A new budget: the rest goes, and the budget counts what it took.
    m.set("writeback_limit", "10")
    m.set("writeback", "idle")
    assert bd_stat(m)[2] == 8
    assert m.read("writeback_limit") == "5\n"
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i}"


def test_writeback_limit_is_ignored_while_disabled(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    put_pages(m, 0, text_pages(6))
    m.set("writeback_limit", "2")  # enable stays 0: no budget applies and none is spent
    m.set("writeback", "page_indexes=0-5")
    assert bd_stat(m)[2] == 6
    assert m.read("writeback_limit") == "2\n"


# -- idle with seconds --


def test_idle_with_seconds_marks_only_pages_older_than_that(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    put_pages(m, 0, text_pages(4, seed=1))
    time.sleep(3.2)
    put_pages(m, 4, text_pages(2, seed=2))
    m.set("idle", "3600")  # nothing is an hour old
    m.set("writeback", "idle")
    assert bd_stat(m)[2] == 0
    m.set("idle", "2")  # the first four are over 3 s old, the last two a moment
    m.set("writeback", "idle")
    assert bd_stat(m)[2] == 4


@pytest.mark.parametrize("value", ["\n", "soon", "-5", "1.5", "all now"], ids=repr)
def test_idle_bad_input(zramfs: ZramfsFactory, value: str) -> None:
    m = zramfs(size="16M")
    assert_errno(m.write("idle", value), errno.EINVAL, f"idle <- {value!r}")


def test_idle_needs_an_initialised_device(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert_errno(m.write("idle", "all"), errno.EINVAL, "idle all, uninitialised")
    assert_errno(m.write("idle", "60"), errno.EINVAL, "idle 60, uninitialised")


# -- recomp_algorithm --


def test_recomp_algorithm_reads_one_line_per_priority(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert m.read("recomp_algorithm") == "", "no recompression algorithm is set by default"
    m.set("recomp_algorithm", "algo=zstd priority=1")
    lines = m.read("recomp_algorithm").splitlines()
    assert len(lines) == 1, lines
    prio, names, chosen = algorithm_line(lines[0])
    assert (prio, chosen) == (1, "zstd")
    primary = m.read("comp_algorithm")
    assert names == [n.strip("[]") for n in primary.split()], "not the same list as comp_algorithm"
    # The same rendering as comp_algorithm, after the "#N: " prefix.
    assert m.read("recomp_algorithm") == "#1: " + primary.replace("[lz4]", "lz4").replace(
        "zstd", "[zstd]"
    )
    m.set("recomp_algorithm", "algo=deflate priority=3")
    m.set("recomp_algorithm", "priority=2 algo=lz4hc")
    lines = m.read("recomp_algorithm").splitlines()
    assert [algorithm_line(line)[::2] for line in lines] == [
        (1, "zstd"),
        (2, "lz4hc"),
        (3, "deflate"),
    ], lines
    assert all(line.startswith(f"#{i + 1}: ") for i, line in enumerate(lines))
    # Without priority=, the algorithm goes to priority 1.
    m.set("recomp_algorithm", "algo=lz4hc")
    assert algorithm_line(m.read("recomp_algorithm").splitlines()[0])[::2] == (1, "lz4hc")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("algo=zstd priority=0", errno.EINVAL),  # 0 is the primary: comp_algorithm's
        ("algo=zstd priority=4", errno.EINVAL),
        ("algo=zstd priority=-1", errno.EINVAL),
        ("algo=zstd priority=one", errno.EINVAL),
        ("algo=bogus priority=1", errno.EINVAL),
        ("priority=1", errno.EINVAL),  # no algo=
        ("algo priority=1", errno.EINVAL),  # a parameter without a value
        ("algo= priority=1", errno.EINVAL),
        ("\n", errno.EINVAL),
        ("algo=" + "z" * 128, errno.E2BIG),  # a name may be at most 127 bytes
        ("algo=" + "z" * 127, errno.EINVAL),  # short enough, but unknown
    ],
)
def test_recomp_algorithm_bad_input_changes_nothing(
    zramfs: ZramfsFactory, value: str, expected: int
) -> None:
    m = zramfs(size="0")
    m.set("recomp_algorithm", "algo=zstd priority=1")
    before = m.read("recomp_algorithm")
    assert_errno(m.write("recomp_algorithm", value), expected, f"recomp_algorithm <- {value!r}")
    assert m.read("recomp_algorithm") == before


def test_recomp_algorithm_is_busy_once_initialised(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    m.set("recomp_algorithm", "algo=zstd priority=1")
    m.set("disksize", "16M")
    before = m.read("recomp_algorithm")
    assert_errno(m.write("recomp_algorithm", "algo=deflate priority=2"), errno.EBUSY, "after init")
    assert m.read("recomp_algorithm") == before
    m.set("reset", "1")
    assert m.read("recomp_algorithm") == "", "reset keeps a recompression algorithm"


def test_algorithm_params_priority_selects_a_recompression_algorithm(
    zramfs: ZramfsFactory,
) -> None:
    m = zramfs(size="0")
    m.set("recomp_algorithm", "algo=zstd priority=1")
    m.set("algorithm_params", "priority=1 level=19")
    m.set("algorithm_params", "algo=zstd level=12")  # algo= finds zstd at priority 1
    for value in ("priority=4 level=3", "priority=x level=3", "priority= level=3",
                  "algo=deflate level=3"):
        assert_errno(m.write("algorithm_params", value), errno.EINVAL, f"params <- {value!r}")
    m.set("disksize", "16M")
    put_pages(m, 0, text_pages(4))
    m.set("recompress", "priority=1")
    assert get_page(m, 2) == text_pages(4)[2]


# -- recompress --


def recompress_device(zramfs: ZramfsFactory) -> ZramMount:
    m = zramfs(size="0", algo="lz4")
    m.set("recomp_algorithm", "algo=zstd priority=1")
    m.set("disksize", "16M")
    return m


def test_recompress_shrinks_pages_and_keeps_their_data(zramfs: ZramfsFactory) -> None:
    m = recompress_device(zramfs)
    pages = text_pages(64)
    put_pages(m, 0, pages)
    before = m.mm_stat()
    m.set("idle", "all")
    m.set("recompress", "type=idle")
    after = m.mm_stat()
    assert after.compr_data_size < before.compr_data_size * 0.9, (before, after)
    assert after.orig_data_size == before.orig_data_size
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i} after recompression"


def test_recompress_max_pages_and_threshold_bound_the_work(zramfs: ZramfsFactory) -> None:
    m = recompress_device(zramfs)
    put_pages(m, 0, text_pages(32))
    before = m.mm_stat()
    m.set("recompress", "max_pages=0")  # a budget of none: nothing is touched
    assert m.mm_stat().compr_data_size == before.compr_data_size
    m.set("recompress", "threshold=3000")  # every text page is smaller than that
    assert m.mm_stat().compr_data_size == before.compr_data_size
    m.set("recompress", "max_pages=4")
    partial = m.mm_stat().compr_data_size
    assert partial < before.compr_data_size
    m.set("recompress", "algo=zstd")
    full = m.mm_stat().compr_data_size
    assert full < partial, "the remaining 28 pages were not recompressed"
    # Each page shrank by a similar amount, so 4 of 32 pages took about an eighth of it.
    assert before.compr_data_size - partial < (before.compr_data_size - full) / 3


def test_recompress_type_huge_touches_only_huge_pages(zramfs: ZramfsFactory) -> None:
    m = recompress_device(zramfs)
    text = text_pages(16)
    put_pages(m, 0, text)
    before = m.mm_stat()
    m.set("recompress", "type=huge")  # no huge page: nothing to do
    assert m.mm_stat().compr_data_size == before.compr_data_size
    m.set("idle", "all")
    m.set("recompress", "type=huge_idle")
    assert m.mm_stat().compr_data_size == before.compr_data_size


@pytest.mark.parametrize(
    "value",
    [
        "type",  # a parameter without a value
        "max_pages=",
        "max_pages=lots",
        "max_pages=-1",
        "threshold=abc",
        "threshold=4096",  # not below the huge class size
        "priority=x",
        "priority=2",  # no algorithm at priority 2
        "algo=deflate",  # not a recompression algorithm of this device
        "algo=lz4",  # the primary is not a recompression algorithm
    ],
)
def test_recompress_bad_input_is_einval_and_changes_nothing(
    zramfs: ZramfsFactory, value: str
) -> None:
    m = recompress_device(zramfs)
    pages = text_pages(16)
    put_pages(m, 0, pages)
    m.set("idle", "all")
    before = m.mm_stat()
    assert_errno(m.write("recompress", value), errno.EINVAL, f"recompress <- {value!r}")
    assert m.mm_stat() == before


def test_recompress_needs_a_recompression_algorithm(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="16M")
    put_pages(m, 0, text_pages(4))
    assert_errno(m.write("recompress", "type=idle"), errno.EINVAL, "recompress, no secondary")
    m2 = zramfs(size="0")
    m2.set("recomp_algorithm", "algo=zstd priority=1")
    assert_errno(m2.write("recompress", "type=idle"), errno.EINVAL, "recompress, uninitialised")


# -- ours: auto_writeback, policy_interval, recompress_after, writeback_after, auto_compact --


def test_auto_writeback_defaults_to_90_once_backing_and_limit_are_set(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m = zramfs(size="0", devices=2)
    assert m.read("auto_writeback") == "0\n"
    m.set("mem_limit", "8M")
    assert m.read("auto_writeback") == "0\n", "no backing store yet"
    m.set("backing_dev", str(sparse_file(tmp_path / "b0", 32 * MiB)))
    assert m.read("auto_writeback") == "90\n"
    m.set("disksize", "32M")
    assert m.read("auto_writeback") == "90\n"
    # Written explicitly, the value stays, whatever is set afterwards.
    m.set("auto_writeback", "0", 1)
    m.set("backing_dev", str(sparse_file(tmp_path / "b1", 32 * MiB)), 1)
    m.set("mem_limit", "8M", 1)
    m.set("disksize", "32M", 1)
    assert m.read("auto_writeback", 1) == "0\n"


def test_auto_writeback_values(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    for good in ("1", "50", "100", "75\n", "0"):
        m.set("auto_writeback", good)
        assert m.read("auto_writeback") == f"{good.strip()}\n"
    m.set("auto_writeback", "40")
    for bad in ("101", "-1", "abc", "\n", "50%", "1e2", "200"):
        assert_errno(m.write("auto_writeback", bad), errno.EINVAL, f"auto_writeback <- {bad!r}")
        assert m.read("auto_writeback") == "40\n"


@pytest.mark.parametrize("name", ["policy_interval", "recompress_after", "writeback_after"])
def test_policy_seconds_files(zramfs: ZramfsFactory, name: str) -> None:
    m = zramfs(size="16M")
    assert m.read(name) == "0\n", f"{name} is off by default"
    for good in ("5", "3600", "0", "120\n"):
        m.set(name, good)
        assert m.read(name) == f"{good.strip()}\n"
    for bad in ("-1", "soon", "\n", "1.5", "5s"):
        assert_errno(m.write(name, bad), errno.EINVAL, f"{name} <- {bad!r}")
        assert m.read(name) == "120\n"


def test_auto_compact_values(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="16M")
    assert m.read("auto_compact") == "25\n"
    for good in ("0", "100", "10", "33\n"):
        m.set("auto_compact", good)
        assert m.read("auto_compact") == f"{good.strip()}\n"
    for bad in ("101", "-1", "half", "\n"):
        assert_errno(m.write("auto_compact", bad), errno.EINVAL, f"auto_compact <- {bad!r}")
        assert m.read("auto_compact") == "33\n"


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_policy_writes_back_pages_idle_longer_than_writeback_after(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m, _ = tier_device(zramfs, tmp_path)
    pages = text_pages(32)
    put_pages(m, 0, pages)
    m.set("writeback_after", "1")
    m.set("policy_interval", "1")
    assert wait_until(lambda: bd_stat(m)[0] == 32, 30), f"bd_stat {m.read('bd_stat')}"
    m.set("policy_interval", "0")
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i}"


def test_policy_recompresses_pages_idle_longer_than_recompress_after(
    zramfs: ZramfsFactory,
) -> None:
    m = recompress_device(zramfs)
    pages = text_pages(32)
    put_pages(m, 0, pages)
    before = m.mm_stat().compr_data_size
    m.set("recompress_after", "1")
    m.set("policy_interval", "1")
    assert wait_until(lambda: m.mm_stat().compr_data_size < before * 0.9, 30), m.mm_stat()
    m.set("policy_interval", "0")
    for i, page in enumerate(pages):
        assert get_page(m, i) == page, f"page {i}"


def test_auto_compact_compacts_a_fragmented_pool(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    m.set("auto_compact", "10")
    pages = text_pages(4096)
    put_pages(m, 0, pages)
    # Free three pages in four: most zspages keep a live object, so little memory comes back
    # without moving objects; compaction can give about three quarters of the pool back.
    punch_hole(m.image(), [(i * PAGE, PAGE) for i in range(4096) if i % 4])
    assert wait_until(lambda: m.mm_stat().pages_compacted > 0, 30), m.mm_stat()
    for i in range(0, 4096, 4):
        assert get_page(m, i) == pages[i], f"page {i} after compaction"
