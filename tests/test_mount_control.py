"""The control files of a mounted device, checked as a user would: values and the kernel's errnos.

Writes go through os.open/os.write so that the errno is exact; one test uses `echo X > file`
through sh, which adds the trailing newline and opens with O_TRUNC.  Uninitialised devices come
from `zramfs mount -s 0`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from conftest import (
    PAGE,
    GiB,
    LoopFactory,
    MiB,
    ZramfsFactory,
    assert_errno,
    ctl_write,
    run,
    sh,
    text_bytes,
)

pytestmark = pytest.mark.mount

ALGORITHMS = ["lz4", "lz4hc", "zstd", "deflate"]


def read_errno(path: Path) -> int:
    """0 if `path` opens and reads, else the errno."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return exc.errno or -1
    try:
        os.read(fd, 4096)
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(fd)
    return 0


def selected(comp_algorithm: str) -> str:
    names = [n[1:-1] for n in comp_algorithm.split() if n.startswith("[")]
    assert len(names) == 1, f"not exactly one selected algorithm in {comp_algorithm!r}"
    return names[0]


# -- disksize / initstate ----------------------------------------------------------------------


def test_disksize_accepts_suffixes_and_rounds_to_pages(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", devices=3)
    for n in range(3):
        assert m.read("disksize", n) == "0\n"
        assert m.read("initstate", n) == "0\n"
        assert m.image(n).stat().st_size == 0
    m.set("disksize", "512M", 0)
    m.set("disksize", "1G\n", 1)
    m.set("disksize", "10000", 2)
    assert m.read("disksize", 0) == f"{512 * MiB}\n"
    assert m.read("disksize", 1) == f"{GiB}\n"
    assert m.read("disksize", 2) == f"{3 * PAGE}\n"  # 10000 rounded up to a page multiple
    for n, size in enumerate((512 * MiB, GiB, 3 * PAGE)):
        assert m.read("initstate", n) == "1\n"
        assert m.image(n).stat().st_size == size


@pytest.mark.parametrize("value", [b"0", b"0\n", b"garbage\n", b"\n", b"-1\n", b"K\n"], ids=repr)
def test_disksize_rejects_zero_and_garbage(zramfs: ZramfsFactory, value: bytes) -> None:
    m = zramfs(size="0")
    assert_errno(m.write("disksize", value), errno.EINVAL, f"disksize <- {value!r}")
    assert m.read("disksize") == "0\n"
    assert m.read("initstate") == "0\n"


def test_disksize_is_busy_once_initialised(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="512M")
    assert m.read("initstate") == "1\n"
    for value in ("1G", "512M", "4096"):
        assert_errno(m.write("disksize", value), errno.EBUSY, f"disksize <- {value}")
        assert m.read("disksize") == f"{512 * MiB}\n"
    assert m.image().stat().st_size == 512 * MiB


def test_echo_through_the_shell(zramfs: ZramfsFactory) -> None:
    """`echo X > file` adds a newline and opens with O_TRUNC: both must be fine."""
    m = zramfs(size="0")
    d = m.dev()
    sh(f"echo zstd > {d}/comp_algorithm && echo 64M > {d}/mem_limit && echo 512M > {d}/disksize")
    assert sh(f"cat {d}/disksize").stdout == f"{512 * MiB}\n"
    assert selected(sh(f"cat {d}/comp_algorithm").stdout) == "zstd"
    assert sh(f"cat {d}/initstate").stdout == "1\n"
    res = sh(f"echo 1G > {d}/disksize", check=False)
    assert res.returncode != 0 and "busy" in res.stderr.lower(), res
    sh(f"echo 1 > {d}/reset")
    assert sh(f"cat {d}/disksize").stdout == "0\n"
    res = sh(f"echo 0 > {d}/disksize", check=False)
    assert res.returncode != 0 and "invalid argument" in res.stderr.lower(), res


def test_oversized_write_is_einval_and_changes_nothing(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert_errno(m.write("disksize", b"512M" + b"\n" * 5000), errno.EINVAL, "5 KB disksize")
    assert_errno(m.write("comp_algorithm", b"zstd" + b" " * 5000), errno.EINVAL, "5 KB algo")
    assert m.read("disksize") == "0\n"
    assert selected(m.read("comp_algorithm")) == "lz4"


# -- reset -----------------------------------------------------------------------------------


def test_reset_rejects_zero_and_garbage(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M")
    data = text_bytes(64 * 1024, seed=1)
    m.pwrite(data, 0)
    for value in (b"0", b"0\n", b"garbage\n", b"\n"):
        assert_errno(m.write("reset", value), errno.EINVAL, f"reset <- {value!r}")
    assert m.read("initstate") == "1\n"
    assert m.disksize() == 256 * MiB
    assert m.pread(len(data), 0) == data


def test_reset_is_busy_while_the_image_is_open(zramfs: ZramfsFactory, loop: LoopFactory) -> None:
    m = zramfs(size="256M")
    fd = os.open(m.image(), os.O_RDWR)
    try:
        assert_errno(m.write("reset", "1"), errno.EBUSY, "reset with the image open")
        assert m.read("initstate") == "1\n"
    finally:
        os.close(fd)
    dev = loop(m.image())
    assert_errno(m.write("reset", "1"), errno.EBUSY, f"reset with {dev} attached")
    assert m.read("initstate") == "1\n"


def test_reset_frees_everything_and_restores_defaults(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M", algo="zstd", mem_limit="64M")
    m.pwrite(text_bytes(MiB, seed=2), 0)
    m.pwrite(bytes(8 * PAGE), 4 * MiB)
    before = m.mm_stat()
    assert before.orig_data_size > 0 and before.mem_limit == 64 * MiB
    m.set("reset", "1")
    assert m.read("disksize") == "0\n"
    assert m.read("initstate") == "0\n"
    assert m.image().stat().st_size == 0
    assert tuple(m.mm_stat()) == (0,) * 9
    assert selected(m.read("comp_algorithm")) == "lz4"
    # The device can be set up again, and holds nothing of the old data.
    m.set("disksize", "1M")
    assert m.pread(MiB, 0) == bytes(MiB)


# -- comp_algorithm / algorithm_params ------------------------------------------------------


def test_comp_algorithm_lists_all_with_the_selected_one_in_brackets(
    zramfs: ZramfsFactory,
) -> None:
    m = zramfs(size="0")
    assert m.read("comp_algorithm").split() == ["[lz4]", "lz4hc", "zstd", "deflate"]
    assert m.read("comp_algorithm").endswith("\n")
    for name in ALGORITHMS:
        m.set("comp_algorithm", f"{name}\n")
        listed = m.read("comp_algorithm").split()
        assert [n.strip("[]") for n in listed] == ALGORITHMS
        assert selected(m.read("comp_algorithm")) == name


def test_comp_algorithm_rejects_unknown_and_is_busy_once_initialised(
    zramfs: ZramfsFactory,
) -> None:
    m = zramfs(size="0")
    m.set("comp_algorithm", "zstd")
    for bad in (b"nosuch\n", b"lzo\n", b"\n", b"ZSTD\n"):
        assert_errno(m.write("comp_algorithm", bad), errno.EINVAL, f"comp_algorithm <- {bad!r}")
        assert selected(m.read("comp_algorithm")) == "zstd"
    m.set("disksize", "64M")
    assert_errno(m.write("comp_algorithm", "lz4"), errno.EBUSY, "comp_algorithm after init")
    assert selected(m.read("comp_algorithm")) == "zstd"


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_each_algorithm_stores_and_compresses(zramfs: ZramfsFactory, algo: str) -> None:
    m = zramfs(size="64M", algo=algo)
    assert selected(m.read("comp_algorithm")) == algo
    data = text_bytes(MiB, seed=3) + os.urandom(4 * PAGE)
    m.pwrite(data, 12 * PAGE)
    assert m.pread(len(data), 12 * PAGE) == data
    s = m.mm_stat()
    assert s.orig_data_size == len(data)
    assert 0 < s.compr_data_size < s.orig_data_size * 0.7, s
    assert s.huge_pages == 4, s


def test_algorithm_params(zramfs: ZramfsFactory, tmp_path: Path) -> None:
    m = zramfs(size="0")
    m.set("comp_algorithm", "zstd")
    dictionary = tmp_path / "zstd.dict"
    dictionary.write_bytes(text_bytes(16 * 1024, seed=4))
    for good in ("algo=zstd level=3", "level=9\n", f"algo=zstd level=5 dict={dictionary}\n"):
        assert_errno(m.write("algorithm_params", good), 0, f"algorithm_params <- {good!r}")
    for bad in (
        "level=\n",
        "level\n",
        "level=abc\n",
        f"algo=zstd dict={tmp_path / 'missing.dict'}\n",
        "algo=nosuch level=1\n",
        "algo=\n",
        "algo=lz4 level=1\n",  # not the selected algorithm (zstd): the kernel says EINVAL
    ):
        assert_errno(m.write("algorithm_params", bad), errno.EINVAL, f"algorithm_params <- {bad!r}")
    # The last accepted parameters (level 5 with the dictionary) serve the device.
    m.set("disksize", "16M")
    data = text_bytes(256 * 1024, seed=5)
    m.pwrite(data, 0)
    assert m.pread(len(data), 0) == data
    assert 0 < m.mm_stat().compr_data_size < len(data)


def test_algorithm_params_parse_as_the_kernel(zramfs: ZramfsFactory) -> None:
    # Linux 6.18's algorithm_params_store() (zram_drv.c), checked on the kernel's own zram:
    # lz4 takes level= (backend_lz4.c's LZ4 acceleration factor), an unknown key is
    # ignored, the last of a repeated key wins, a number outside a C int is ERANGE.
    m = zramfs(size="0")
    for good in ("level=8", "level=1 level=8 colour=red\n", '  "level=8"  ', "level=8 bogus=1"):
        assert_errno(m.write("algorithm_params", good), 0, f"algorithm_params <- {good!r}")
    assert_errno(m.write("algorithm_params", "level=2147483648"), errno.ERANGE, "level=2**31")
    assert_errno(m.write("algorithm_params", "algo=zstd"), errno.EINVAL, "zstd not selected")
    assert_errno(m.write("algorithm_params", "priority=4"), errno.EINVAL, "priority=4")
    m.set("disksize", "16M")
    data = text_bytes(256 * 1024, seed=6)
    m.pwrite(data, 0)
    assert m.pread(len(data), 0) == data
    assert 0 < m.mm_stat().compr_data_size < len(data)


def test_a_bad_deflate_level_fails_disksize(zramfs: ZramfsFactory) -> None:
    # The kernel takes level=10 for deflate; zlib_deflateInit2 refuses it when disksize
    # creates the compression streams, so disksize answers EINVAL and nothing initialises.
    m = zramfs(size="0")
    m.set("comp_algorithm", "deflate")
    m.set("algorithm_params", "level=10")
    assert_errno(m.write("disksize", "16M"), errno.EINVAL, "disksize with deflate level=10")
    assert m.read("initstate") == "0\n"
    m.set("algorithm_params", "level=9")
    m.set("disksize", "16M")
    assert m.read("initstate") == "1\n"


# -- mem_limit / mem_used_max / compact / idle -------------------------------------------


def test_mem_limit_suffixes_show_in_mm_stat(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M")
    assert m.mm_stat().mem_limit == 0
    for value, expected in (
        ("64M", 64 * MiB),
        ("1G\n", GiB),
        ("512K", 512 * 1024),
        ("5000", 2 * PAGE),  # page aligned, up
        ("0", 0),
        ("128M\n", 128 * MiB),
    ):
        m.set("mem_limit", value)
        assert m.mm_stat().mem_limit == expected, value
    for bad in (b"garbage\n", b"\n", b"M\n"):
        assert_errno(m.write("mem_limit", bad), errno.EINVAL, f"mem_limit <- {bad!r}")
        assert m.mm_stat().mem_limit == 128 * MiB


def test_mem_limit_before_initialisation(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", mem_limit="32M")
    assert m.mm_stat().mem_limit == 32 * MiB
    m.set("mem_limit", "16M")
    m.set("disksize", "64M")
    assert m.mm_stat().mem_limit == 16 * MiB


def test_mem_used_max_takes_only_zero(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="256M")
    data = os.urandom(2 * MiB)
    m.pwrite(data, 0)
    peak = m.mm_stat()
    assert peak.mem_used_max >= peak.mem_used_total >= len(data)
    # Free the data (a hole punched in the image): the peak stays until it is reset.
    run("fallocate", "--punch-hole", "--offset", "0", "--length", str(len(data)), m.image())
    after = m.mm_stat()
    assert after.mem_used_total < peak.mem_used_total
    assert after.mem_used_max == peak.mem_used_max
    for bad in (b"1\n", b"garbage\n", b"\n", b"-1\n"):
        assert_errno(m.write("mem_used_max", bad), errno.EINVAL, f"mem_used_max <- {bad!r}")
        assert m.mm_stat().mem_used_max == peak.mem_used_max
    m.set("mem_used_max", "0\n")
    now = m.mm_stat()
    assert now.mem_used_max == now.mem_used_total


def test_compact_needs_an_initialised_device(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert_errno(m.write("compact", "1"), errno.EINVAL, "compact before init")
    m.set("disksize", "64M")
    m.pwrite(text_bytes(MiB, seed=6), 0)
    m.set("compact", "1\n")
    assert m.pread(PAGE, 0) == text_bytes(MiB, seed=6)[:PAGE]


def idle_pages(stats: str) -> int:
    found = re.search(r"^idle pages\s+(\d+)", stats, re.MULTILINE)
    assert found, stats
    return int(found.group(1))


def test_idle(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert_errno(m.write("idle", "all"), errno.EINVAL, "idle before init")
    m.set("disksize", "64M")
    m.pwrite(text_bytes(64 * PAGE, seed=7), 0)
    assert idle_pages(m.read("stats")) == 0
    for good in ("3600\n", "0", "all\n", "all"):
        m.set("idle", good)
    assert idle_pages(m.read("stats")) == 64
    m.pread(2 * PAGE, 10 * PAGE)  # any access clears the mark
    assert idle_pages(m.read("stats")) == 62
    for bad in (b"garbage\n", b"\n", b"-5\n", b"1.5\n"):
        assert_errno(m.write("idle", bad), errno.EINVAL, f"idle <- {bad!r}")
    assert idle_pages(m.read("stats")) == 62


# -- access modes ----------------------------------------------------------------------------

WRITE_ONLY = ["reset", "algorithm_params", "mem_limit", "mem_used_max", "compact", "idle"]
READ_ONLY = ["initstate", "mm_stat", "io_stat", "debug_stat", "stats"]


def test_reading_a_write_only_file_is_eacces(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    for name in WRITE_ONLY:
        assert_errno(read_errno(m.dev() / name), errno.EACCES, f"read {name}")
    assert_errno(read_errno(m.path / "hot_remove"), errno.EACCES, "read hot_remove")


def test_writing_a_read_only_file_is_eacces(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    before = m.mm_stat()
    for name in READ_ONLY:
        assert_errno(m.write(name, "1\n"), errno.EACCES, f"write {name}")
    assert_errno(ctl_write(m.path / "hot_add", "1\n"), errno.EACCES, "write hot_add")
    assert m.mm_stat() == before
    assert sorted(os.listdir(m.path)) == ["hot_add", "hot_remove", "metrics", "zram0"]


EXPECTED_MODES = {
    "image": 0o600,
    "stats": 0o444,
    "disksize": 0o644,
    "initstate": 0o444,
    "reset": 0o200,
    "comp_algorithm": 0o644,
    "algorithm_params": 0o200,
    "mem_limit": 0o200,
    "mem_used_max": 0o200,
    "compact": 0o200,
    "idle": 0o200,
    "mm_stat": 0o444,
    "io_stat": 0o444,
    "debug_stat": 0o444,
    # the writeback and recompression tier
    "backing_dev": 0o644,
    "writeback": 0o200,
    "writeback_limit_enable": 0o644,
    "writeback_limit": 0o644,
    "bd_stat": 0o444,
    "recomp_algorithm": 0o644,
    "recompress": 0o200,
    "auto_writeback": 0o644,
    "policy_interval": 0o644,
    "recompress_after": 0o644,
    "writeback_after": 0o644,
    "auto_compact": 0o644,
    "recompress_params": 0o644,
}


def test_file_modes_and_owner(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    assert sorted(os.listdir(m.dev())) == sorted(EXPECTED_MODES)
    for name, mode in EXPECTED_MODES.items():
        st = os.stat(m.dev() / name)
        assert stat.S_ISREG(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == mode, f"{name}: {oct(stat.S_IMODE(st.st_mode))}"
        assert (st.st_uid, st.st_gid) == (0, 0), name
    # hot_add is 0400 in the kernel too: reading it creates a device, so only root may.
    for name, mode in (("hot_add", 0o400), ("hot_remove", 0o200)):
        st = os.stat(m.path / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
    assert stat.S_ISDIR(os.stat(m.dev()).st_mode)


def test_image_size_and_blocks(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0")
    st = m.image().stat()
    assert (st.st_size, st.st_blocks) == (0, 0)
    fd = os.open(m.image(), os.O_RDWR)
    try:  # an uninitialised device has no room, and reads as empty
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x" * PAGE, 0)
        assert exc.value.errno == errno.ENOSPC
        assert os.pread(fd, PAGE, 0) == b""
    finally:
        os.close(fd)
    m.set("disksize", "300M")
    st = m.image().stat()
    assert st.st_size == 300 * MiB == m.disksize()
    assert st.st_blocks == 0
    fd = os.open(m.image(), os.O_RDWR)
    try:  # the image ends where the device does: a write across the end is cut short
        assert os.pwrite(fd, b"y" * (2 * PAGE), 300 * MiB - PAGE) == PAGE
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"z" * PAGE, 300 * MiB)
        assert exc.value.errno == errno.ENOSPC
        assert os.pread(fd, 2 * PAGE, 300 * MiB - PAGE) == b"y" * PAGE
    finally:
        os.close(fd)
    m.set("reset", "1")
    m.set("disksize", "300M")
    m.pwrite(os.urandom(MiB) + text_bytes(MiB, seed=8), 0)
    st = m.image().stat()
    used = m.mm_stat().mem_used_total
    assert used > MiB
    assert st.st_blocks * 512 == used
    assert st.st_size == 300 * MiB


# -- hot_add / hot_remove ------------------------------------------------------------------


def test_hot_add_and_hot_remove(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    assert sh(f"cat {m.path}/hot_add").stdout == "1\n"
    assert (m.path / "zram1").is_dir()
    assert m.read("disksize", 1) == "0\n"  # a new device is uninitialised
    assert sh(f"cat {m.path}/hot_add").stdout == "2\n"
    assert sorted(os.listdir(m.path)) == [
        "hot_add", "hot_remove", "metrics", "zram0", "zram1", "zram2"
    ]
    m.set("disksize", "16M", 2)
    m.pwrite(text_bytes(64 * 1024, seed=9), 0, n=2)

    hot_remove = m.path / "hot_remove"
    assert_errno(ctl_write(hot_remove, "7\n"), errno.ENODEV, "hot_remove 7")
    assert_errno(ctl_write(hot_remove, "garbage\n"), errno.EINVAL, "hot_remove garbage")
    sh(f"echo 1 > {hot_remove}")
    assert not (m.path / "zram1").exists()
    assert_errno(ctl_write(hot_remove, "1"), errno.ENODEV, "hot_remove 1 twice")
    assert_errno(ctl_write(hot_remove, "2"), 0, "hot_remove initialised zram2")
    assert sorted(os.listdir(m.path)) == ["hot_add", "hot_remove", "metrics", "zram0"]
    # Ids are reused lowest first, and the device comes back fresh.
    assert sh(f"cat {m.path}/hot_add").stdout == "1\n"
    assert m.read("disksize", 1) == "0\n"


def test_hot_remove_is_busy_while_the_image_is_held(
    zramfs: ZramfsFactory, loop: LoopFactory
) -> None:
    m = zramfs(size="64M", devices=2)
    hot_remove = m.path / "hot_remove"
    fd = os.open(m.image(1), os.O_RDONLY)
    try:
        assert_errno(ctl_write(hot_remove, "1"), errno.EBUSY, "hot_remove with image open")
        assert (m.path / "zram1").is_dir()
    finally:
        os.close(fd)
    dev = loop(m.image(0))
    assert_errno(ctl_write(hot_remove, "0"), errno.EBUSY, f"hot_remove with {dev} attached")
    assert m.disksize(0) == 64 * MiB
    assert_errno(ctl_write(hot_remove, "1"), 0, "hot_remove after close")
    assert not (m.path / "zram1").exists()
