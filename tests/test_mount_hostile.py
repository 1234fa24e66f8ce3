"""What a hostile tester found, each reproduced on a real mount (issue 8).

- a dictionary path in algorithm_params that would block the daemon (a FIFO) or make it wait
  on itself (an image of the same mount) is refused with an errno, and every device keeps
  answering;
- SIGHUP, SIGUSR1 and the other signals that would end the process leave a daemon whose image
  is in use serving, with a log line;
- a mount inside a device directory of a live zramfs is refused;
- control files opened before hot_remove answer ENODEV to writes afterwards;
- disksize, mem_limit, hot_remove and algorithm_params parse as the kernel does;
- hot_remove logs no traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    PAGE,
    GiB,
    MiB,
    Resources,
    ZramfsFactory,
    assert_errno,
    ctl_write,
    is_mounted,
    process_running,
    text_bytes,
    wait_for,
    zramfs_cmd,
)
from test_reliability_common import log_since, log_size, wait_exit

pytestmark = pytest.mark.mount

_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    os.write(fd, sys.argv[2].encode())
except OSError as exc:
    print(exc.errno)
else:
    print(0)
"""


def bounded_write(path: Path, text: str, timeout: float = 60) -> int:
    """ctl_write in a child process, so that a daemon that hangs fails the test, not hangs it."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _WRITER, str(path), text],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except subprocess.TimeoutExpired:
        pytest.fail(f"writing {text!r} to {path} hung for {timeout} s")
    return int(out)


def test_dictionary_paths_that_would_hang_the_daemon_are_refused(
    zramfs: ZramfsFactory, tmp_path: Path
) -> None:
    m = zramfs(size="0", devices=2)
    m.set("comp_algorithm", "zstd")
    m.set("disksize", "16M", n=1)
    data = text_bytes(64 * 1024, seed=1)
    m.pwrite(data, 0, n=1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.dict"
    big.write_bytes(b"d" * (16 * MiB + 1))
    empty = tmp_path / "empty.dict"
    empty.write_bytes(b"")
    for path, expected in (
        (fifo, errno.EINVAL),  # a blocking open/read on the event loop stopped every device
        (m.image(1), errno.EINVAL),  # the daemon waited on itself for ever
        (m.dev(1) / "stats", errno.EINVAL),
        (tmp_path, errno.EISDIR),
        (Path("/dev/zero"), errno.EINVAL),
        (big, errno.EFBIG),
        (empty, errno.EINVAL),
    ):
        got = bounded_write(m.dev(0) / "algorithm_params", f"algo=zstd dict={path}\n")
        assert_errno(got, expected, f"dict={path}")
        # the other device still answers, and so does this one
        assert m.pread(len(data), 0, n=1) == data
        assert m.read("initstate") == "0\n"
    assert process_running(m.pid())
    # a good dictionary still works, and the device initialises with it
    good = tmp_path / "zstd.dict"
    good.write_bytes(text_bytes(16 * 1024, seed=4))
    assert_errno(
        bounded_write(m.dev(0) / "algorithm_params", f"algo=zstd level=5 dict={good}\n"),
        0,
        "good dictionary",
    )
    m.set("disksize", "16M")
    page_data = text_bytes(256 * 1024, seed=5)
    m.pwrite(page_data, 0)
    assert m.pread(len(page_data), 0) == page_data


# every signal a stray kill may send whose default action ends the process (the faults SEGV,
# BUS, ILL and FPE stay fatal: a handler that returns from a real one would loop)
@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGPOLL,
        signal.SIGSYS,
        signal.SIGTRAP,
        signal.SIGABRT,
        signal.SIGSTKFLT,
    ],
)
def test_signals_do_not_kill_a_daemon_whose_image_is_in_use(
    registry: Resources, sig: signal.Signals
) -> None:
    m = registry.mount_zramfs(size="64M")
    pid = m.pid()
    fd = os.open(m.image(), os.O_RDWR)  # held, as a loop device would hold it
    try:
        data = text_bytes(MiB, seed=7)
        os.pwrite(fd, data, 0)
        start = log_size(m)
        os.kill(pid, sig)
        assert wait_for(lambda: f"{sig.name} ignored" in log_since(m, start), 10), log_since(
            m, start
        )
        time.sleep(0.3)
        assert process_running(pid) and is_mounted(m.path)
        assert os.pread(fd, len(data), 0) == data
        os.kill(pid, signal.SIGRTMIN + 3)
        assert wait_for(lambda: "SIGRTMIN+3 ignored" in log_since(m, start), 10)
        assert process_running(pid)
    finally:
        os.close(fd)
    if sig == signal.SIGHUP:  # a stop request: once nothing holds an image, it unmounts
        start = log_size(m)
        os.kill(pid, sig)
        assert wait_exit(pid, 20)
        assert wait_for(lambda: not is_mounted(m.path), 5)
        assert "SIGHUP: unmounting" in log_since(m, start)


def test_mount_inside_a_device_directory_is_refused(
    zramfs: ZramfsFactory, registry: Resources
) -> None:
    m = zramfs(size="16M")
    for inner in (m.dev(0), m.dev(0) / "sub"):
        registry.zramfs_mounts.append(inner)  # cleaned up should it succeed
        res = zramfs_cmd("mount", inner, "-s", "16M", check=False)
        assert res.returncode != 0, res
        assert f"inside the zramfs mounted at {m.path}" in res.stderr, res.stderr
    assert (m.dev(0) / "image").exists() and m.read("initstate") == "1\n"


def test_control_files_opened_before_hot_remove_refuse_writes(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", devices=2)
    fds = {
        name: os.open(m.dev(1) / name, os.O_WRONLY)
        for name in ("comp_algorithm", "disksize", "mem_limit", "algorithm_params", "reset")
    }
    try:
        assert_errno(ctl_write(m.path / "hot_remove", "1"), 0, "hot_remove 1")
        for name, value in (
            ("comp_algorithm", b"zstd"),
            ("disksize", b"1G"),
            ("mem_limit", b"1M"),
            ("algorithm_params", b"level=3"),
            ("reset", b"1"),
        ):
            try:
                os.write(fds[name], value)
            except OSError as exc:
                got = exc.errno or -1
            else:
                got = 0
            assert_errno(got, errno.ENODEV, f"{name} of a removed device")
        # a new zram1 is a new device: the old descriptors cannot reach it either
        assert (m.path / "hot_add").read_text() == "1\n"
        try:
            os.write(fds["disksize"], b"1G")
        except OSError as exc:
            assert exc.errno == errno.ENODEV
        else:
            pytest.fail("a stale disksize descriptor initialised the new zram1")
        assert m.read("initstate", n=1) == "0\n"
    finally:
        for fd in fds.values():
            os.close(fd)


def test_sizes_parse_as_the_kernel_memparse(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", devices=3)
    # disksize: memparse, rest ignored; 0 (nothing parsed) is EINVAL
    m.set("disksize", "1GiB")
    assert m.disksize() == GiB
    m.set("disksize", "1 G", n=1)
    assert m.disksize(1) == PAGE  # "1" byte, page aligned
    for bad in (" 1G", "G", "-1", "0", "0x"):
        assert_errno(m.write("disksize", bad, n=2), errno.EINVAL, f"disksize <- {bad!r}")
    m.set("disksize", "0x10Mb", n=2)
    assert m.disksize(2) == 16 * MiB
    # mem_limit: nothing parsed is EINVAL, a rest is ignored
    for value, expected in (("1GiB", GiB), ("1 G", PAGE), ("64Mxyz", 64 * MiB), ("0", 0)):
        m.set("mem_limit", value)
        assert m.mm_stat().mem_limit == expected, value
    for bad in (" 1G", "G", "-1"):
        assert_errno(m.write("mem_limit", bad), errno.EINVAL, f"mem_limit <- {bad!r}")


def test_hot_remove_parses_as_the_kernel_kstrtoint(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="0", devices=3)
    hot_remove = m.path / "hot_remove"
    start = log_size(m)
    for bad, err in (
        ("1 ", errno.EINVAL),
        (" 1", errno.EINVAL),
        ("1\n\n", errno.EINVAL),
        ("-1", errno.EINVAL),
        ("+-1", errno.EINVAL),
        ("0x1", errno.EINVAL),
        ("2147483648", errno.ERANGE),
    ):
        assert_errno(ctl_write(hot_remove, bad), err, f"hot_remove <- {bad!r}")
    assert sorted(os.listdir(m.path)) == [
        "hot_add", "hot_remove", "metrics", "zram0", "zram1", "zram2"
    ]
    assert_errno(ctl_write(hot_remove, "-0"), 0, "hot_remove -0 (kstrtoint reads 0)")
    assert_errno(ctl_write(hot_remove, "+1\n"), 0, "hot_remove +1")
    assert sorted(os.listdir(m.path)) == ["hot_add", "hot_remove", "metrics", "zram2"]
    log = log_since(m, start)
    assert "Traceback" not in log and "invalidate_entry" not in log, log


def test_algorithm_params_stop_at_a_nul_as_the_kernel(zramfs: ZramfsFactory) -> None:
    """kernfs ends the written buffer with a NUL and the kernel's parser stops at the first:
    what follows an embedded NUL is ignored, not an error."""
    m = zramfs(size="0")
    m.set("comp_algorithm", "zstd")
    assert_errno(m.write("algorithm_params", b"level=3\0level=abc"), 0, "level=3 NUL junk")
    assert_errno(m.write("algorithm_params", b"level=abc\0level=3"), errno.EINVAL, "level=abc")
    assert_errno(m.write("comp_algorithm", b"lz4\0zstd"), 0, "lz4 NUL zstd")
    assert "[lz4]" in m.read("comp_algorithm")
