"""A filesystem and a swap area on a loop device over an image, as a user sets them up.

For each of ext4, xfs and btrfs: mkfs, mount, copy in a tree of real and generated files,
umount, detach, attach again, fsck must be clean, mount, every checksum must match.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import (
    KiB,
    MiB,
    Resources,
    active_swaps,
    checksums,
    require,
    run,
    text_bytes,
)

pytestmark = pytest.mark.mount

FILESYSTEMS = {
    # name: (mkfs command, fsck command that must exit 0 on a clean filesystem)
    "ext4": (["mkfs.ext4", "-q", "-F"], ["e2fsck", "-f", "-n"]),
    "xfs": (["mkfs.xfs", "-q", "-f"], ["xfs_repair", "-n"]),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], ["btrfs", "check"]),
}


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 8 MiB: documentation files, generated text, random and zero-filled files."""
    root = tmp_path_factory.mktemp("tree")
    docs = root / "doc"
    budget = 3 * MiB
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if budget <= 0:
            break
        if path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        if size > 256 * KiB:
            continue
        dest = docs / path.relative_to("/usr/share/doc")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        budget -= size
    gen = root / "generated" / "deep" / "er"
    gen.mkdir(parents=True)
    for i in range(12):
        (gen / f"text{i:02d}.txt").write_bytes(text_bytes(200 * KiB + i * 777, seed=100 + i))
    rnd = root / "random"
    rnd.mkdir()
    for i in range(3):
        (rnd / f"noise{i}.bin").write_bytes(os.urandom(300 * KiB + i * 4099))
    (root / "zeros.bin").write_bytes(bytes(MiB))
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello, zram\n")
    return root


@pytest.mark.parametrize("fstype", list(FILESYSTEMS))
def test_filesystem_roundtrip(
    registry: Resources, tmp_path: Path, source_tree: Path, fstype: str
) -> None:
    mkfs, fsck = FILESYSTEMS[fstype]
    require(mkfs[0], fsck[0])
    expected = checksums(source_tree)
    total = sum((source_tree / p).stat().st_size for p in expected)
    assert len(expected) > 20 and total > 5 * MiB

    m = registry.mount_zramfs(size="512M")
    dev = registry.loop(m.image())
    run(*mkfs, dev)
    target = registry.mount(dev, tmp_path / "fs")
    shutil.copytree(source_tree, target / "tree")
    registry.umount(target)
    registry.detach(dev)

    stored = m.mm_stat()
    assert stored.orig_data_size > total, stored  # the data went into the device
    assert stored.mem_used_total < stored.orig_data_size, stored

    # A fresh loop device: nothing can come from the old one's caches.
    dev = registry.loop(m.image())
    res = run(*fsck, dev, check=False)
    assert res.returncode == 0, f"{' '.join(fsck)} {dev}:\n{res.stdout}{res.stderr}"
    target = registry.mount(dev, tmp_path / "fs")
    assert checksums(target / "tree") == expected
    assert (target / "tree" / "small.txt").read_text() == "hello, zram\n"


def test_swap_on_a_loop_device(registry: Resources) -> None:
    require("mkswap", "swapon", "swapoff")
    m = registry.mount_zramfs(size="256M")
    dev = registry.loop(m.image())
    run("mkswap", dev)
    assert m.mm_stat().orig_data_size > 0  # the swap header went in
    registry.swapon(dev)
    lines = [line.split() for line in Path("/proc/swaps").read_text().splitlines()[1:]]
    (entry,) = [fields for fields in lines if fields[0] == dev]
    assert entry[1] == "partition"
    assert int(entry[2]) == 256 * 1024 - 4  # KiB, the header page excluded
    registry.swapoff(dev)
    assert dev not in active_swaps()


def test_large_requests_on_worker_threads(
    registry: Resources, tmp_path: Path, source_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZRAMFS_BATCH_THREADS=1 (lz4's large requests compressed and decompressed on worker
    threads, several in flight): what goes in comes back, through 1 MiB writes of the image
    itself and through ext4 on a loop device."""
    require("mkfs.ext4", "e2fsck")
    monkeypatch.setenv("ZRAMFS_BATCH_THREADS", "1")  # the daemon inherits it
    m = registry.mount_zramfs(size="128M")
    chunks = [text_bytes(MiB, seed=7), bytes(MiB), os.urandom(MiB), text_bytes(MiB, seed=8)]
    data = b"".join(chunks) * 2
    with open(m.image(), "r+b", buffering=0) as f:  # direct_io: one request per write
        for pos in range(0, len(data), MiB):
            assert f.write(data[pos : pos + MiB]) == MiB
        f.seek(0)
        back = b"".join(f.read(MiB) for _ in range(len(data) // MiB))
    assert back == data
    stored = m.mm_stat()
    assert stored.orig_data_size == len(data), stored
    assert stored.same_pages == 2 * MiB // 4096, stored  # the zero MiB, twice

    expected = checksums(source_tree)
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", dev)
    target = registry.mount(dev, tmp_path / "fs")
    shutil.copytree(source_tree, target / "tree")
    registry.umount(target)
    registry.detach(dev)
    dev = registry.loop(m.image())
    res = run("e2fsck", "-f", "-n", dev, check=False)
    assert res.returncode == 0, f"e2fsck {dev}:\n{res.stdout}{res.stderr}"
    target = registry.mount(dev, tmp_path / "fs")
    assert checksums(target / "tree") == expected
