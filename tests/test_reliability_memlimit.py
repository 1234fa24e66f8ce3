"""mem_limit: writes past the limit fail cleanly and nothing written before is lost.

The kernel's zram fails a write that would take the pool over mem_limit with an I/O error
and counts it in io_stat's failed_writes; the limit may be raised at any time and writes go on.
Checked on the bare loop device (O_DIRECT, so every write reaches the device and its error
comes straight back) and with ext4 on it: the filesystem reports the errors (fsync EIO, the
kernel's log), the files completed before stay intact, and once the limit is raised e2fsck
repairs what the failed writes left and the filesystem takes new files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from conftest import MiB, Resources, drop_caches, require, run, text_bytes
from test_reliability_common import direct_read, direct_write, log_since

pytestmark = pytest.mark.mount

CHUNK = MiB


def half_compressible(size: int, seed: int) -> bytes:
    """Each 4 KiB page half random, half text: about 2:1, so the pool fills predictably."""
    rng = random.Random(seed)
    text = text_bytes(2048, seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(2048) + text
    return bytes(out[:size])


def test_writes_past_mem_limit_fail_with_eio_then_resume(registry: Resources) -> None:
    m = registry.mount_zramfs(size="64M", mem_limit="4M")
    dev = registry.loop(m.image())
    base_io = m.io_stat()

    written: dict[int, bytes] = {}
    failed_at = None
    for n in range(64):
        data = half_compressible(CHUNK, seed=n)
        try:
            direct_write(dev, n * CHUNK, data)
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            failed_at = n
            break
        written[n] = data
    assert failed_at is not None, "64 MiB went into a 4 MiB limit"
    at_limit, io = m.mm_stat(), m.io_stat()
    assert io.failed_writes > base_io.failed_writes, io
    assert at_limit.mem_used_total <= 4 * MiB, at_limit
    # As in the kernel, the peak is taken before the limit check: the zspage (at most a chain
    # of 8 pages) that the failing write allocated and gave back may show in it.
    assert at_limit.mem_used_max <= 4 * MiB + 8 * 4096, at_limit
    assert at_limit.mem_limit == 4 * MiB

    # Still over: a retry fails again, and counts again; reads are unaffected.
    with pytest.raises(OSError) as exc_info:
        direct_write(dev, failed_at * CHUNK, half_compressible(CHUNK, seed=failed_at))
    assert exc_info.value.errno == errno.EIO
    assert m.io_stat().failed_writes > io.failed_writes
    for n, data in written.items():
        assert direct_read(dev, n * CHUNK, CHUNK) == data, f"chunk {n} changed at the limit"
    assert m.io_stat().failed_reads == base_io.failed_reads

    # Raise the limit: the same write and the rest of the device go in.
    m.set("mem_limit", "64M")
    assert m.mm_stat().mem_limit == 64 * MiB
    for n in range(failed_at, 40):
        written[n] = half_compressible(CHUNK, seed=n)
        direct_write(dev, n * CHUNK, written[n])
    for n, data in written.items():
        assert direct_read(dev, n * CHUNK, CHUNK) == data, f"chunk {n}"
    final = m.mm_stat()
    assert final.mem_used_total > 4 * MiB
    print(
        f"\nmem_limit (block): {len(written) - (40 - failed_at)} MiB fitted under 4 MiB "
        f"(mem_used_total {at_limit.mem_used_total / MiB:.2f} MiB), write {failed_at} failed with "
        f"EIO, failed_writes {base_io.failed_writes} -> {m.io_stat().failed_writes}; limit raised "
        f"to 64 MiB: 40 MiB stored in {final.mem_used_total / MiB:.1f} MiB, all read back"
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dmesg_tail() -> str:
    res = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    return res.stdout[-20000:] if res.returncode == 0 else ""


def test_ext4_at_mem_limit_keeps_what_was_written(registry: Resources, tmp_path: Path) -> None:
    require("mkfs.ext4", "e2fsck")
    m = registry.mount_zramfs(size="256M", mem_limit="24M")
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
    target = registry.mount(dev, tmp_path / "ext4")
    base_io = m.io_stat()
    kernel_log_before = dmesg_tail()

    good: dict[str, str] = {}
    error = None
    for n in range(100):
        path = target / f"file{n:03d}"
        try:
            with open(path, "wb") as f:
                f.write(half_compressible(2 * MiB, seed=1000 + n))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            error = exc
            break
        good[path.name] = sha(path)
    assert error is not None, "200 MiB of 2:1 data fitted in a 24 MiB limit"
    assert error.errno == errno.EIO, error  # the filesystem reports the device's errors
    assert len(good) >= 4, f"only {len(good)} files before the limit"
    io = m.io_stat()
    assert io.failed_writes > base_io.failed_writes, io
    loop_name = os.path.basename(dev)
    new_kernel_log = dmesg_tail().removeprefix(kernel_log_before)
    kernel_reported = [line for line in new_kernel_log.splitlines() if loop_name in line]

    # What was written before is intact, read from the device (caches dropped).
    drop_caches()
    for name, digest in good.items():
        assert sha(target / name) == digest, f"{name} changed when the limit was hit"

    # Raise the limit; the journal was aborted, so: unmount, repair, mount again.
    m.set("mem_limit", "256M")
    registry.umount(target)
    fsck = run("e2fsck", "-f", "-y", dev, check=False)
    assert fsck.returncode in (0, 1), f"e2fsck -fy: {fsck.returncode}\n{fsck.stdout}"
    clean = run("e2fsck", "-f", "-n", dev, check=False)
    assert clean.returncode == 0, clean.stdout
    target = registry.mount(dev, tmp_path / "ext4")
    for name, digest in good.items():
        assert sha(target / name) == digest, f"{name} after e2fsck"
    more: dict[str, str] = {}
    for n in range(8):
        path = target / f"more{n}"
        with open(path, "wb") as f:
            f.write(half_compressible(2 * MiB, seed=2000 + n))
            os.fsync(f.fileno())
        more[path.name] = sha(path)
    registry.umount(target)
    final_check = run("e2fsck", "-f", "-n", dev, check=False)
    assert final_check.returncode == 0, final_check.stdout
    target = registry.mount(dev, tmp_path / "ext4")
    for name, digest in {**good, **more}.items():
        assert sha(target / name) == digest, name
    assert "unexpected error" not in log_since(m, 0)
    s = m.mm_stat()
    print(
        f"\nmem_limit (ext4): {len(good)} x 2 MiB files fsynced under a 24 MiB limit, file "
        f"{len(good)} failed with {errno.errorcode[error.errno]}; failed_writes "
        f"{base_io.failed_writes} -> {io.failed_writes}; kernel log lines for {loop_name}: "
        f"{len(kernel_reported)} (e.g. {kernel_reported[-1].strip() if kernel_reported else '-'}); "
        f"e2fsck -fy exit {fsck.returncode}; limit raised to 256 MiB: {len(more)} more files, all "
        f"{len(good) + len(more)} checksums intact, mem_used_total {s.mem_used_total / MiB:.1f} MiB"
    )
