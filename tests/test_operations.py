"""The Operations class (zramfs.fs) without a mount: its handlers called directly under trio.

s3ql's t3_fs_api is the model: pyfuse3 imports without mounting anything, so each request
handler can be awaited with the arguments the kernel would send, and what it answers (the
attributes, the bytes, the FUSEError's errno) is what a user of the mount would see. Every
control file's good and bad inputs are here with the kernel's errno; nothing needs root,
/dev/fuse or a loop device, and the whole file runs in well under a second of handler time.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pyfuse3
import pytest
import trio

from zramfs.device import DeviceTable, ZramDevice
from zramfs.fs import (
    DEVICE_FILES,
    FILE_MODES,
    HOT_ADD_INODE,
    HOT_REMOVE_INODE,
    ROOT_INODE,
    ZramOperations,
)
from zramfs.fusepatch import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE

PAGE = 4096
MiB = 1 << 20
T = TypeVar("T")
CTX = pyfuse3.RequestContext()


class Ops(ZramOperations):
    """ZramOperations with the one call that needs a live FUSE session recorded instead."""

    def __init__(self, table: DeviceTable) -> None:
        super().__init__(table)
        self.forgotten: list[str] = []

    def forget_entry(self, name: str) -> None:
        self.forgotten.append(name)


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return trio.run(fn, *args)


def fuse_errno(fn: Callable[..., Awaitable[Any]], *args: Any) -> int:
    """0 if the handler succeeds, else the errno of the FUSEError it raised."""
    try:
        trio.run(fn, *args)
    except pyfuse3.FUSEError as exc:
        return int(exc.errno)
    return 0


def make(devices: int = 1, disksize: int = 0, algorithm: str = "lz4") -> Ops:
    table = DeviceTable()
    for _ in range(devices):
        table.hot_add().configure(disksize, algorithm)
    return Ops(table)


def inode_of(ops: Ops, dev_id: int, name: str) -> int:
    return int(run(ops.lookup, ops.dir_inode(dev_id), name.encode(), CTX).st_ino)


def open_file(ops: Ops, inode: int, flags: int) -> int:
    return int(run(ops.open, inode, flags, CTX).fh)


def write_ctl(ops: Ops, dev_id: int, name: str, data: bytes) -> int:
    """Open the control file write-only, write ``data``, release: 0 or the errno."""
    fh = open_file(ops, inode_of(ops, dev_id, name), os.O_WRONLY)
    try:
        return fuse_errno(ops.write, fh, 0, data)
    finally:
        run(ops.release, fh)


def read_ctl(ops: Ops, inode: int) -> bytes:
    fh = open_file(ops, inode, os.O_RDONLY)
    try:
        return run(ops.read, fh, 0, 4096)
    finally:
        run(ops.release, fh)


# -- the tree -------------------------------------------------------------------------------


def test_tree_names_and_modes_come_from_one_table() -> None:
    ops = make(devices=2)
    root = run(ops.getattr, ROOT_INODE, CTX)
    assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 4
    for name, inode in (("hot_add", HOT_ADD_INODE), ("hot_remove", HOT_REMOVE_INODE)):
        a = run(ops.lookup, ROOT_INODE, name.encode(), CTX)
        assert a.st_ino == inode and stat.S_IMODE(a.st_mode) == FILE_MODES[name]
    assert stat.S_IMODE(run(ops.getattr, HOT_ADD_INODE, CTX).st_mode) == 0o400
    for name in DEVICE_FILES:
        a = run(ops.lookup, ops.dir_inode(1), name.encode(), CTX)
        assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == FILE_MODES[name], name
    for parent, missing in ((ROOT_INODE, b"zram2"), (ops.dir_inode(0), b"nosuch")):
        assert fuse_errno(ops.lookup, parent, missing, CTX) == errno.ENOENT
    assert fuse_errno(ops.getattr, ops.dir_inode(5), CTX) == errno.ENOENT
    assert fuse_errno(ops.opendir, HOT_ADD_INODE, CTX) == errno.ENOTDIR


def test_attribute_modes_agree_with_what_the_device_reads_and_writes() -> None:
    device = ZramDevice(0)
    for name, mode in ZramDevice.ATTRIBUTES.items():
        assert bool(mode & 0o444) == device.readable(name), name
        assert bool(mode & 0o222) == device.writable(name), name


def test_open_follows_the_modes() -> None:
    ops = make()
    for name in DEVICE_FILES:
        inode = inode_of(ops, 0, name)
        mode = FILE_MODES[name]
        for flags, allowed in (
            (os.O_RDONLY, mode & 0o444),
            (os.O_WRONLY, mode & 0o222),
            (os.O_RDWR, mode & 0o444 and mode & 0o222),
        ):
            got = fuse_errno(ops.open, inode, flags, CTX)
            assert got == (0 if allowed else errno.EACCES), (name, flags)
    assert fuse_errno(ops.open, HOT_ADD_INODE, os.O_WRONLY, CTX) == errno.EACCES
    assert fuse_errno(ops.open, HOT_REMOVE_INODE, os.O_RDONLY, CTX) == errno.EACCES
    assert fuse_errno(ops.open, ops.dir_inode(0), os.O_RDONLY, CTX) == errno.EISDIR
    assert fuse_errno(ops.open, ROOT_INODE, os.O_RDONLY, CTX) == errno.EISDIR


# -- every control file: good and bad input, the kernel's errno -----------------------------

UNINITIALISED: list[tuple[str, bytes, int]] = [
    ("disksize", b"abc\n", errno.EINVAL),
    ("disksize", b"0\n", errno.EINVAL),
    ("disksize", b"-1", errno.EINVAL),
    ("disksize", b"x" * 4097, errno.EINVAL),
    ("reset", b"0\n", errno.EINVAL),
    ("reset", b"x\n", errno.EINVAL),
    ("reset", b"1\n", 0),
    ("comp_algorithm", b"nosuch\n", errno.EINVAL),
    ("comp_algorithm", b"zstd \n", errno.EINVAL),
    ("comp_algorithm", b"zstd\n", 0),
    ("algorithm_params", b"level=3\n", 0),  # zstd was selected just above
    # As algorithm_params_store() (zram_drv.c): the level is the backend's business when
    # disksize initialises the device (zstd clamps 99 to 22), unknown keys are ignored,
    # a repeated key's last value wins.
    ("algorithm_params", b"level=99\n", 0),
    ("algorithm_params", b"bogus=1\n", 0),
    ("algorithm_params", b"level=1 level=2\n", 0),
    ("algorithm_params", b"level\n", errno.EINVAL),
    ("algorithm_params", b"level=x\n", errno.EINVAL),
    ("algorithm_params", b"level=99999999999\n", errno.ERANGE),
    ("algorithm_params", b"algo=lz4 level=1\n", errno.EINVAL),
    ("algorithm_params", b"priority=1\n", errno.EINVAL),
    ("algorithm_params", b"priority=4\n", errno.EINVAL),
    ("algorithm_params", b"dict=/nonexistent\n", errno.EINVAL),
    ("mem_limit", b"1M\n", 0),
    ("mem_limit", b"x\n", errno.EINVAL),
    ("mem_used_max", b"0\n", 0),
    ("mem_used_max", b"1\n", errno.EINVAL),
    ("compact", b"1\n", errno.EINVAL),  # not initialised
    ("idle", b"all\n", errno.EINVAL),  # not initialised
    ("disksize", b"16M\n", 0),
]
INITIALISED: list[tuple[str, bytes, int]] = [
    ("disksize", b"32M\n", errno.EBUSY),
    ("disksize", b"x\n", errno.EINVAL),
    ("comp_algorithm", b"lz4\n", errno.EBUSY),
    ("comp_algorithm", b"nosuch\n", errno.EINVAL),
    ("algorithm_params", b"level=5\n", errno.EBUSY),
    ("mem_limit", b"8M\n", 0),
    ("mem_used_max", b"0\n", 0),
    ("compact", b"1\n", 0),
    ("idle", b"all\n", 0),
    ("idle", b"60\n", 0),
    ("idle", b"soon\n", errno.EINVAL),
]


def test_every_control_file_good_and_bad_inputs() -> None:
    ops = make()
    for name, data, expected in UNINITIALISED + INITIALISED:
        got = write_ctl(ops, 0, name, data)
        assert got == expected, (name, data, errno.errorcode.get(got, got))
    device = ops.table.get(0)
    assert device is not None
    assert device.disksize == 16 * MiB and device.algorithm == "zstd"
    assert device.mem_limit == 8 * MiB


def test_a_first_read_past_offset_zero_sees_the_text() -> None:
    """As sysfs (seq_file renders when a read does not continue the last one): pread at
    offset 3 of a freshly opened control file gives bytes 3.. of its text, not nothing,
    which is what ``dd skip=3`` or a pread() saw."""
    ops = make(disksize=16 << 20)
    inode = inode_of(ops, 0, "disksize")
    whole = read_ctl(ops, inode)
    assert whole == b"16777216\n"
    fh = open_file(ops, inode, os.O_RDONLY)
    try:
        assert run(ops.read, fh, 3, 4) == whole[3:7]
        assert run(ops.read, fh, 7, 100) == whole[7:]
    finally:
        run(ops.release, fh)


def test_reading_control_files() -> None:
    ops = make(disksize=16 * MiB)

    def ino(name: str) -> int:
        return inode_of(ops, 0, name)

    assert read_ctl(ops, ino("disksize")) == b"16777216\n"
    assert read_ctl(ops, ino("initstate")) == b"1\n"
    assert read_ctl(ops, ino("comp_algorithm")).startswith(b"[lz4] ")
    assert read_ctl(ops, ino("mm_stat")).split()[:3] == [b"0", b"0", b"0"]
    assert len(read_ctl(ops, ino("io_stat")).split()) == 4
    assert read_ctl(ops, ino("debug_stat")).startswith(b"version: 1\n")
    assert read_ctl(ops, ino("stats")).startswith(b"zram0: 16M disk, lz4")
    assert read_ctl(ops, HOT_ADD_INODE) == b"1\n"
    assert ops.table.get(1) is not None


def test_hot_remove() -> None:
    ops = make(devices=3)
    fh = open_file(ops, HOT_REMOVE_INODE, os.O_WRONLY)
    for data, expected in (
        (b"7\n", errno.ENODEV),
        (b"x\n", errno.EINVAL),
        (b"1 ", errno.EINVAL),
        (b"-1", errno.EINVAL),
        (b"9999999999", errno.ERANGE),
        (b"-0", 0),
        (b"2\n", 0),
    ):
        assert fuse_errno(ops.write, fh, 0, data) == expected, data
    assert [d.dev_id for d in ops.table] == [1]
    assert ops.forgotten == ["zram0", "zram2"]
    image = inode_of(ops, 1, "image")
    img = open_file(ops, image, os.O_RDONLY)
    assert fuse_errno(ops.write, fh, 0, b"1") == errno.EBUSY
    run(ops.release, img)
    assert fuse_errno(ops.write, fh, 0, b"1") == 0
    assert len(ops.table) == 0


def test_files_opened_before_hot_remove_answer_enodev() -> None:
    ops = make(devices=2)
    fhs = {n: open_file(ops, inode_of(ops, 1, n), os.O_WRONLY) for n in ("disksize", "reset")}
    stats = open_file(ops, inode_of(ops, 1, "stats"), os.O_RDONLY)
    assert write_ctl_root(ops, b"1") == 0
    assert fuse_errno(ops.write, fhs["disksize"], 0, b"1G") == errno.ENODEV
    assert fuse_errno(ops.write, fhs["reset"], 0, b"1") == errno.ENODEV
    assert fuse_errno(ops.read, stats, 0, 4096) == errno.ENODEV
    assert read_ctl(ops, HOT_ADD_INODE) == b"1\n"  # a new zram1, which the old fh cannot reach
    assert fuse_errno(ops.write, fhs["disksize"], 0, b"1G") == errno.ENODEV
    new = ops.table.get(1)
    assert new is not None and not new.initialised


def write_ctl_root(ops: Ops, data: bytes) -> int:
    fh = open_file(ops, HOT_REMOVE_INODE, os.O_WRONLY)
    try:
        return fuse_errno(ops.write, fh, 0, data)
    finally:
        run(ops.release, fh)


def test_reset_is_busy_while_the_image_is_open() -> None:
    ops = make(disksize=MiB)
    img = open_file(ops, inode_of(ops, 0, "image"), os.O_RDWR)
    assert write_ctl(ops, 0, "reset", b"1") == errno.EBUSY
    run(ops.release, img)
    assert write_ctl(ops, 0, "reset", b"1") == 0
    device = ops.table.get(0)
    assert device is not None and not device.initialised


# -- the image ---------------------------------------------------------------------------------


def test_image_io_bounds_and_discard() -> None:
    ops = make(disksize=MiB)
    image = inode_of(ops, 0, "image")
    fh = open_file(ops, image, os.O_RDWR)
    data = os.urandom(3 * PAGE) + b"z" * (5 * PAGE)
    assert run(ops.write, fh, PAGE, data) == len(data)
    assert run(ops.read, fh, PAGE, len(data)) == data
    assert run(ops.read, fh, MiB - PAGE, 4 * PAGE) == bytes(PAGE)  # clipped at the end
    assert run(ops.read, fh, MiB, PAGE) == b""
    assert run(ops.write, fh, MiB - PAGE, b"t" * (2 * PAGE)) == PAGE  # clipped
    assert fuse_errno(ops.write, fh, MiB, b"x") == errno.ENOSPC
    assert run(ops.getattr, image, CTX).st_size == MiB
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    assert ops.fallocate(image, mode, PAGE, 2 * PAGE, fh) == 0
    assert run(ops.read, fh, 0, 4 * PAGE) == bytes(3 * PAGE) + data[2 * PAGE : 3 * PAGE]
    assert ops.fallocate(image, mode, -1, PAGE, fh) == errno.EINVAL
    assert ops.fallocate(image, 0, 0, 2 * MiB, fh) == errno.EOPNOTSUPP  # cannot grow
    assert ops.fallocate(HOT_ADD_INODE, mode, 0, PAGE, fh) == errno.EOPNOTSUPP
    s = run(ops.statfs, CTX)
    assert s.f_blocks == MiB // PAGE and s.f_bfree < s.f_blocks
    run(ops.release, fh)


def test_setattr_allows_only_truncation_noops() -> None:
    ops = make(disksize=MiB)
    image = inode_of(ops, 0, "image")
    size_only = SimpleNamespace(
        update_mode=False, update_uid=False, update_gid=False, update_size=True
    )
    chmod = SimpleNamespace(update_mode=True, update_uid=False, update_gid=False, update_size=False)
    attr = pyfuse3.EntryAttributes()
    for st_size, inode, expected in (
        (0, image, 0),
        (MiB, image, 0),
        (2 * MiB, image, errno.EINVAL),
        (0, inode_of(ops, 0, "disksize"), 0),
        (0, ops.dir_inode(0), errno.EINVAL),
    ):
        attr.st_size = st_size
        assert fuse_errno(ops.setattr, inode, attr, size_only, None, CTX) == expected
    assert fuse_errno(ops.setattr, image, attr, chmod, None, CTX) == errno.EPERM


# -- algorithm_params with a dictionary, read on a worker thread ---------------------------------


def test_dictionary_files_through_the_shell(tmp_path: Path) -> None:
    ops = make()
    assert write_ctl(ops, 0, "comp_algorithm", b"zstd") == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    good = tmp_path / "good"
    good.write_bytes(b"some dictionary words " * 200)
    for path, expected in ((fifo, errno.EINVAL), (tmp_path, errno.EISDIR), (good, 0)):
        assert write_ctl(ops, 0, "algorithm_params", f"dict={path}\n".encode()) == expected
    device = ops.table.get(0)
    assert device is not None and device.dictionaries["zstd"] == good.read_bytes()


@pytest.mark.parametrize("name", ["disksize", "mem_limit"])
def test_control_write_errors_change_nothing(name: str) -> None:
    ops = make()
    device = ops.table.get(0)
    assert device is not None
    before = (device.disksize, device.mem_limit, device.algorithm, device.initialised)
    for bad in (b"", b"\n", b"G", b" 1", b"\xff", b"1" * 4097):
        assert write_ctl(ops, 0, name, bad) == errno.EINVAL, bad
    assert (device.disksize, device.mem_limit, device.algorithm, device.initialised) == before
