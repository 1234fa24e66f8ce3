"""Discard gives memory back: fstrim on ext4, blkdiscard on the loop device, swapon --discard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import (
    MiB,
    Resources,
    active_swaps,
    compressible_chunks,
    require,
    run,
)

pytestmark = pytest.mark.mount


def fill_device(dev: str, total: int, seed: int) -> None:
    """Write `total` bytes of compressible data to a block device and flush them."""
    with open(dev, "r+b", buffering=0) as f:
        for chunk in compressible_chunks(total, seed=seed):
            f.write(chunk)
        os.fsync(f.fileno())


def test_fstrim_frees_deleted_files(registry: Resources, tmp_path: Path) -> None:
    require("mkfs.ext4", "fstrim")
    m = registry.mount_zramfs(size="512M")
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
    target = registry.mount(dev, tmp_path / "ext4")
    os.sync()
    base = m.mm_stat()

    files = target / "files"
    files.mkdir()
    chunks = compressible_chunks(80 * MiB, seed=31)
    for i, chunk in enumerate(chunks):
        (files / f"text{i:03d}").write_bytes(chunk)
    for i in range(20):
        (files / f"noise{i:03d}").write_bytes(os.urandom(MiB))
    os.sync()
    full = m.mm_stat()
    added = full.mem_used_total - base.mem_used_total
    assert full.orig_data_size - base.orig_data_size >= 100 * MiB, (base, full)
    assert added > 20 * MiB, (base, full)

    for p in files.iterdir():
        p.unlink()
    os.sync()
    deleted = m.mm_stat()
    res = run("fstrim", "-v", target)
    trimmed = m.mm_stat()
    freed = full.mem_used_total - trimmed.mem_used_total
    print(
        f"\nfstrim: mem_used_total base {base.mem_used_total / MiB:.1f} MiB, "
        f"with files {full.mem_used_total / MiB:.1f} MiB, "
        f"after rm {deleted.mem_used_total / MiB:.1f} MiB, "
        f"after fstrim {trimmed.mem_used_total / MiB:.1f} MiB "
        f"(orig_data_size {full.orig_data_size / MiB:.1f} -> {trimmed.orig_data_size / MiB:.1f} "
        f"MiB); {res.stdout.strip()}"
    )
    assert freed >= 0.9 * added, f"fstrim freed {freed} of the {added} bytes the files took"
    assert trimmed.orig_data_size - base.orig_data_size < 5 * MiB, (base, trimmed)
    assert m.io_stat().notify_free > 0


def test_blkdiscard_frees_everything(registry: Resources) -> None:
    require("blkdiscard")
    m = registry.mount_zramfs(size="256M")
    dev = registry.loop(m.image())
    fill_device(dev, 32 * MiB, seed=32)
    full = m.mm_stat()
    assert full.orig_data_size == 32 * MiB and full.mem_used_total > 8 * MiB, full
    run("blkdiscard", dev)
    s = m.mm_stat()
    assert (s.orig_data_size, s.compr_data_size, s.mem_used_total) == (0, 0, 0), s
    assert m.io_stat().notify_free >= 32 * MiB // 4096
    assert m.pread(MiB, 0) == bytes(MiB)


def test_swapon_discard_frees_old_data(registry: Resources) -> None:
    require("mkswap", "swapon", "swapoff")
    m = registry.mount_zramfs(size="256M")
    dev = registry.loop(m.image())
    fill_device(dev, 64 * MiB, seed=33)  # old contents the swap area no longer needs
    run("mkswap", dev)
    full = m.mm_stat()
    assert full.orig_data_size >= 64 * MiB, full
    registry.swapon(dev, "--discard")
    assert dev in active_swaps()
    on = m.mm_stat()
    assert on.orig_data_size <= 16 * 4096, on  # the header and little else
    assert on.mem_used_total < full.mem_used_total * 0.1, (full, on)
    registry.swapoff(dev)
    assert dev not in active_swaps()
    off = m.mm_stat()
    assert off.mem_used_total <= on.mem_used_total + 64 * 1024, (on, off)
