"""The control files as pure state (zramfs.device), and the dictionary reader, without a mount.

Every case here is what a write to a /sys/block/zramN file would do on the kernel (its parsing,
its errno, nothing changed on refusal); the mount tests check the same through FUSE.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zramfs.codecs import MAX_DICT_SIZE
from zramfs.device import ControlError, DeviceTable, ZramDevice
from zramfs.dictionary import read_dictionary, zramfs_devices
from zramfs.sizes import memparse

PAGE = 4096
MiB = 1 << 20
GiB = 1 << 30


def refused(err: int, fn: object, *args: object) -> None:
    assert callable(fn)
    with pytest.raises(ControlError) as info:
        fn(*args)
    assert info.value.errno == err, (args, info.value)


# -- memparse: lib/cmdline.c ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GiB", (GiB, 2)),  # one suffix letter, the rest is the caller's
        ("1 G", (1, 1)),  # a space ends the number: one byte
        ("4096", (4096, 4)),
        ("0x1000", (4096, 6)),
        ("0X1fK", (31 << 10, 5)),
        ("010", (8, 3)),  # octal
        ("08", (0, 1)),  # octal "0", then '8' ends it
        ("0x", (0, 1)),  # no hex digit after 0x: octal "0"
        ("1e", (1 << 60, 2)),  # E is exa
        ("1k\n", (1024, 2)),
        ("", (0, 0)),
        (" 1", (0, 0)),  # no leading space skipped
        ("-1", (0, 0)),  # no sign
        ("+1", (0, 0)),
        ("G", (0, 0)),
    ],
)
def test_memparse_matches_the_kernel(text: str, expected: tuple[int, int]) -> None:
    assert memparse(text) == expected


@given(st.integers(0, 2**40), st.sampled_from(["", "k", "M", "g", "T"]), st.text(max_size=5))
def test_memparse_reads_number_and_one_suffix_only(n: int, suffix: str, rest: str) -> None:
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[suffix.lower()]
    if rest[:1].lower() in "kmgtpe0123456789abcdefx" and rest:
        rest = "!" + rest  # keep the rest from extending the number or the suffix
    value, used = memparse(f"{n}{suffix}{rest}")
    assert value == n << shift
    assert used == len(str(n)) + len(suffix)


# -- disksize / mem_limit -------------------------------------------------------------------


def test_disksize_reads_like_disksize_store() -> None:
    for text, size in (("1GiB", GiB), ("1 G", PAGE), ("5000", 2 * PAGE), ("0x10Mb", 16 * MiB)):
        d = ZramDevice(0)
        d.write_attr("disksize", text.encode())
        assert d.disksize == size, text
        assert d.read_attr("disksize") == f"{size}\n".encode()
    for bad in (b"0", b"", b"\n", b" 1G", b"G", b"-1", b"0x", b"99999999999999999999"):
        d = ZramDevice(0)
        refused(errno.EINVAL, d.write_attr, "disksize", bad)
        assert d.disksize == 0 and d.store is None, bad
    d = ZramDevice(0)
    d.write_attr("disksize", b"1M")
    refused(errno.EBUSY, d.write_attr, "disksize", b"2M")
    refused(errno.EINVAL, d.write_attr, "disksize", b"x")  # EINVAL before EBUSY, as the kernel
    assert d.disksize == MiB


def test_mem_limit_reads_like_mem_limit_store() -> None:
    d = ZramDevice(0)
    for text, limit in (("1GiB", GiB), ("1 G", PAGE), ("64Mxyz", 64 * MiB), ("0", 0)):
        d.write_attr("mem_limit", text.encode())
        assert d.mem_limit == limit, text
    for bad in (b" 1G", b"G", b"-1", b"", b"18446744073709551615"):
        refused(errno.EINVAL, d.write_attr, "mem_limit", bad)
        assert d.mem_limit == 0, bad


# -- hot_remove: kstrtoint ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "err"),
    [
        (b"1 ", errno.EINVAL),
        (b" 1", errno.EINVAL),
        (b"1\n\n", errno.EINVAL),
        (b"", errno.EINVAL),
        (b"\n", errno.EINVAL),
        (b"-1", errno.EINVAL),
        (b"-+1", errno.EINVAL),
        (b"0x1", errno.EINVAL),
        (b"1.0", errno.EINVAL),
        (b"2147483648", errno.ERANGE),
        (b"-2147483649", errno.ERANGE),
        (b"7", errno.ENODEV),
        (b"-2147483648", errno.EINVAL),  # fits an int, but negative
    ],
)
def test_hot_remove_refuses_like_kstrtoint(text: bytes, err: int) -> None:
    table = DeviceTable()
    table.hot_add()
    table.hot_add()
    refused(err, table.hot_remove, text)
    assert len(table) == 2


@pytest.mark.parametrize(("text", "dev_id"), [(b"-0", 0), (b"+1", 1), (b"1\n", 1), (b"01", 1)])
def test_hot_remove_accepts_like_kstrtoint(text: bytes, dev_id: int) -> None:
    table = DeviceTable()
    table.hot_add()
    table.hot_add()
    assert table.hot_remove(text).dev_id == dev_id
    assert table.get(dev_id) is None


def test_a_removed_device_refuses_every_control_file() -> None:
    table = DeviceTable()
    table.hot_add()
    device = table.hot_add()
    table.hot_remove(b"1")
    for attr, value in (
        ("comp_algorithm", b"zstd"),
        ("disksize", b"1G"),
        ("mem_limit", b"1M"),
        ("reset", b"1"),
        ("algorithm_params", b"level=3"),
    ):
        refused(errno.ENODEV, device.write_attr, attr, value)
    refused(errno.ENODEV, device.read_attr, "disksize")
    refused(errno.ENODEV, device.prepare_algorithm_params, b"level=3")
    assert device.store is None and device.algorithm == "lz4"
    again = table.hot_add()  # the id is reused by a new device the old one cannot reach
    assert again.dev_id == 1 and again is not device and not again.removed


def test_embedded_nul_ends_the_written_text() -> None:
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", b"zstd\0lz4")
    assert d.algorithm == "zstd"
    d.write_attr("algorithm_params", b"level=3\0level=99")
    assert d.params["zstd"].level == 3
    d.write_attr("algorithm_params", b"level=99\0level=3")
    assert d.params["zstd"].level == 99  # "level=3" after the NUL is not part of the write


@pytest.mark.parametrize(
    ("text", "err"),
    [
        (b"x" * 127, errno.EINVAL),  # an unknown name
        (b"x" * 128, errno.E2BIG),  # strlen(buf) >= ZRAM_MAX_ALGO_NAME_SZ, newline included
        (b"lz4" + b"\n" * 124, errno.EINVAL),
        (b"lz4" + b"\n" * 125, errno.E2BIG),
        (b"zstd" + b" " * 200 + b"\0", errno.E2BIG),
    ],
)
def test_comp_algorithm_refuses_a_long_name_like_the_kernel(text: bytes, err: int) -> None:
    """The kernel 6.18 (checked on a hot_added zram device) answers E2BIG before looking the
    name up when the written text, newline included, is 128 bytes or more."""
    d = ZramDevice(0)
    refused(err, d.write_attr, "comp_algorithm", text)
    assert d.algorithm == "lz4"
    d.write_attr("disksize", b"1M")
    refused(err, d.write_attr, "comp_algorithm", text)  # before EBUSY, as the kernel


# -- algorithm_params parsed as the kernel's algorithm_params_store() (Linux 6.18) ---------


@pytest.mark.parametrize(
    ("algo", "text", "level"),
    [
        # backend_lz4.c: the level is LZ4_compress_fast's acceleration factor
        ("lz4", b"level=8", 8),
        ("lz4", b"level=0", 1),  # below 1: LZ4's default acceleration
        ("lz4hc", b"level=13", 12),  # LZ4_compress_HC caps the level
        ("zstd", b"level=99", 22),  # zstd_get_params() clamps to ZSTD_maxCLevel()
        ("zstd", b"level=0", 3),
        ("deflate", b"level=-1", 6),  # Z_DEFAULT_COMPRESSION
        # unknown keys ignored, the last of a repeated key wins
        ("zstd", b"level=5 bogus=1 level=7\n", 7),
        ("zstd", b'"level=4" colour="dark blue"', 4),
        ("zstd", b"  level=6  \n", 6),
        # algo= naming the selected algorithm overrides priority=
        ("zstd", b"priority=7 algo=zstd level=2", 2),
    ],
)
def test_algorithm_params_accepted_as_the_kernel(algo: str, text: bytes, level: int) -> None:
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", algo.encode())
    d.write_attr("algorithm_params", text)
    d.write_attr("disksize", b"1M")
    assert d.store is not None and d.store.codec.level == level
    page = b"zramfs " * 585 + b"z"
    assert d.store.codec.decompress(d.store.codec.compress(page)) == page


@pytest.mark.parametrize(
    ("text", "err"),
    [
        (b"level", errno.EINVAL),  # no value: algorithm_params_store() refuses the token
        (b"level=", errno.EINVAL),
        (b"bogus", errno.EINVAL),
        (b"level=3 dict", errno.EINVAL),
        (b"level=abc", errno.EINVAL),  # kstrtoint
        (b"level=2147483648", errno.ERANGE),  # kstrtoint: outside a C int
        (b"priority=99999999999", errno.ERANGE),
        (b"algo=zstd", errno.EINVAL),  # not selected at any priority
        (b"algo=lzo", errno.EINVAL),
        (b"priority=4", errno.EINVAL),  # past ZRAM_MAX_COMPS - 1
        (b"priority=-1", errno.EINVAL),
        (b"priority=2", errno.EINVAL),  # no recompression algorithm there
    ],
)
def test_algorithm_params_refused_as_the_kernel(text: bytes, err: int) -> None:
    d = ZramDevice(0)
    d.write_attr("algorithm_params", b"level=9")
    refused(err, d.write_attr, "algorithm_params", text)
    assert d.params["lz4"].level == 9  # a refused write changes nothing


def test_each_algorithm_params_write_replaces_the_last() -> None:
    # comp_params_store() resets the algorithm's parameters before taking the new ones:
    # a write without level= (even one of unknown keys only, or an empty one) is level unset.
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", b"lz4hc")
    d.write_attr("algorithm_params", b"level=3")
    d.write_attr("algorithm_params", b"bogus=1")
    d.write_attr("disksize", b"1M")
    assert d.store is not None and d.store.codec.level == 9


def test_algorithm_params_for_a_recompression_algorithm_by_algo_or_priority() -> None:
    d = ZramDevice(0)
    d.write_attr("recomp_algorithm", b"algo=zstd priority=2")
    d.write_attr("algorithm_params", b"algo=zstd level=9 priority=0")  # algo= decides
    assert d.recomp_params[2].level == 9 and d.params == {}
    d.write_attr("algorithm_params", b"priority=2 level=1")
    assert d.recomp_params[2].level == 1 and d._recomp_codec(2).level == 1
    d.write_attr("disksize", b"1M")
    assert d.store is not None


@pytest.mark.parametrize(
    "text", [b"level=10", b"level=-2", b"deflate.winbits=16", b"deflate.winbits=8"]
)
def test_a_bad_deflate_level_fails_disksize_not_the_write(text: bytes) -> None:
    # The kernel stores any level; backend_deflate.c's zlib_deflateInit2() refuses it when
    # disksize creates the compression streams, and disksize answers EINVAL.
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", b"deflate")
    d.write_attr("algorithm_params", text)
    refused(errno.EINVAL, d.write_attr, "disksize", b"1M")
    assert d.store is None and d.read_attr("initstate") == b"0\n"
    d.write_attr("algorithm_params", b"level=9 deflate.winbits=9")  # fixed: it initialises
    d.write_attr("disksize", b"1M")
    assert d.store is not None and d.store.codec.level == 9


def test_a_bad_recompression_level_fails_disksize() -> None:
    d = ZramDevice(0)
    d.write_attr("recomp_algorithm", b"algo=deflate priority=1")
    d.write_attr("algorithm_params", b"algo=deflate level=12")
    refused(errno.EINVAL, d.write_attr, "disksize", b"1M")
    assert d.store is None


# -- algorithm_params with a dictionary: prepare, read (shell), apply -------------------------


def test_dictionary_parameters_need_the_file_read_by_the_shell(tmp_path: Path) -> None:
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", b"zstd")
    path = tmp_path / "d"
    path.write_bytes(b"dictionary " * 100)
    refused(errno.EINVAL, d.write_attr, "algorithm_params", f"dict={path}".encode())
    assert d.params == {}
    params = d.prepare_algorithm_params(f"level=5 dict={path}\n".encode())
    d.apply_algorithm_params(params, read_dictionary(str(path)))
    assert d.dictionaries["zstd"] == path.read_bytes()
    d.write_attr("disksize", b"1M")
    assert d.store is not None and d.store.codec.dict_path == str(path)
    refused(errno.EBUSY, d.apply_algorithm_params, params, b"x")


def test_apply_rechecks_what_changed_while_the_file_was_read(tmp_path: Path) -> None:
    d = ZramDevice(0)
    d.write_attr("comp_algorithm", b"zstd")
    params = d.prepare_algorithm_params(b"algo=zstd level=5 dict=/x\n")
    d.write_attr("comp_algorithm", b"lz4")
    refused(errno.EINVAL, d.apply_algorithm_params, params, b"dictionary")
    d.write_attr("comp_algorithm", b"zstd")
    d.write_attr("disksize", b"1M")
    refused(errno.EBUSY, d.apply_algorithm_params, params, b"dictionary")
    assert d.params == {} and d.dictionaries == {}


def test_read_dictionary_refuses_what_could_hang_or_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"b" * (MAX_DICT_SIZE + 1))
    empty = tmp_path / "empty"
    empty.touch()
    sock_dir = tmp_path
    good = tmp_path / "good"
    good.write_bytes(b"g" * 1000)
    done = threading.Event()

    def attempts() -> None:
        for path, err in (
            (fifo, errno.EINVAL),  # stat says FIFO: never opened, so never blocks
            (sock_dir, errno.EISDIR),
            (Path("/dev/null"), errno.EINVAL),
            (big, errno.EFBIG),
            (empty, errno.EINVAL),
            (tmp_path / "missing", errno.EINVAL),
        ):
            refused(err, read_dictionary, str(path), frozenset())
        # on a forbidden file system (as a zramfs mount would be): refused before any open
        refused(errno.EINVAL, read_dictionary, str(good), frozenset({good.stat().st_dev}))
        assert read_dictionary(str(good), frozenset()) == b"g" * 1000
        done.set()

    t = threading.Thread(target=attempts, daemon=True)
    t.start()
    t.join(30)
    assert done.is_set(), "read_dictionary blocked"


def test_zramfs_devices_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "95 22 0:52 / /mnt/z rw,nosuid,nodev,relatime shared:1 - fuse.zramfs zramfs rw\n"
        "96 22 0:53 / /mnt/o rw - fuse.other x rw\n"
    )
    assert zramfs_devices(str(info)) == frozenset({os.makedev(0, 52)})
    assert zramfs_devices(str(tmp_path / "none")) == frozenset()


def test_io_stat_text_is_the_kernels() -> None:
    """io_stat_show() prints "%8llu %8llu 0 %8llu\n": the old invalid_io column is a bare 0
    (checked on a 6.18 zram device), initialised or not."""
    d = ZramDevice(0)
    assert d.read_attr("io_stat") == b"       0        0 0        0\n"
    d.write_attr("disksize", b"1M")
    assert d.read_attr("io_stat") == b"       0        0 0        0\n"


@pytest.mark.parametrize(
    ("text", "err"),
    [(b"0", errno.EINVAL), (b"65536", errno.ERANGE), (b"-1", errno.EINVAL), (b"x", errno.EINVAL)],
)
def test_reset_parses_like_kstrtou16(text: bytes, err: int) -> None:
    d = ZramDevice(0)
    d.write_attr("disksize", b"1M")
    refused(err, d.write_attr, "reset", text)
    assert d.store is not None  # nothing changed
    d.write_attr("reset", b"65535")
    assert d.store is None
