"""What zramfs/fusepatch.py adds to pyfuse3, seen through a real mount.

- A huge discard (fallocate PUNCH_HOLE of 512 MiB of stored pages) is answered later, freed
  in bounded steps, so 4 KiB reads of the image keep being answered while it runs.
- FUSE_DIRECT_IO_ALLOW_MMAP: the image can be mmap()ed MAP_SHARED (as LTP's zram03 does with
  /dev/zramN): fill it with 'a', msync, and a separate read sees the bytes.
- The start-up self-check: a daemon whose pyfuse3 does not look as expected refuses to mount
  and says why.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    ZRAMFS,
    MiB,
    Resources,
    ZramfsFactory,
    compressible_chunks,
    is_mounted,
    punch_hole,
)

pytestmark = pytest.mark.mount


def test_reads_are_answered_while_a_huge_discard_runs(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="1G")
    fill = 512 * MiB
    fd = os.open(m.image(), os.O_RDWR)
    try:
        offset = 0
        for chunk in compressible_chunks(fill, seed=41):
            os.pwrite(fd, chunk, offset)
            offset += len(chunk)
        probe = b"p" * 2048 + os.urandom(2048)
        os.pwrite(fd, probe, 768 * MiB)  # outside the discarded range
        before = m.mm_stat()
        assert before.orig_data_size >= fill

        discard: dict[str, float] = {}
        reads: list[tuple[float, float]] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:
            rfd = os.open(m.image(), os.O_RDONLY)
            try:
                while not stop.is_set():
                    t0 = time.monotonic()
                    data = os.pread(rfd, 4096, 768 * MiB)
                    reads.append((t0, time.monotonic()))
                    assert data == probe
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                os.close(rfd)

        t = threading.Thread(target=reader)
        t.start()
        try:
            while len(reads) < 10:  # the reader is under way
                time.sleep(0.001)
            discard["start"] = time.monotonic()
            punch_hole(m.image(), [(0, fill)])
            discard["end"] = time.monotonic()
        finally:
            stop.set()
            t.join(60)
        assert not errors, errors
        during = [r for r in reads if r[0] > discard["start"] and r[1] < discard["end"]]
        after = m.mm_stat()
        print(
            f"\nhuge discard: {fill // MiB} MiB freed in {discard['end'] - discard['start']:.2f} s;"
            f" {len(during)} 4 KiB reads issued and answered meanwhile;"
            f" mem_used_total {before.mem_used_total / MiB:.1f} -> {after.mem_used_total / MiB:.1f}"
            " MiB"
        )
        # Done inside the fallocate callback, the whole discard held up every other request:
        # no read issued after it arrived could be answered before it was. Deferred and
        # freed in steps, reads keep flowing.
        assert len(during) >= 20, len(during)
        assert after.orig_data_size <= before.orig_data_size - fill
        assert os.pread(fd, 4096, 100 * MiB) == bytes(4096)
        assert os.pread(fd, 4096, 768 * MiB) == probe
    finally:
        os.close(fd)


def test_image_can_be_mmapped_shared_like_ltp_zram03(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    size = 32 * MiB
    fd = os.open(m.image(), os.O_RDWR)
    try:
        # Without FUSE_DIRECT_IO_ALLOW_MMAP this mmap fails with ENODEV (the image is
        # opened with FOPEN_DIRECT_IO).
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            mm[:] = b"a" * size
            mm.flush()  # msync(MS_SYNC)
        finally:
            mm.close()
    finally:
        os.close(fd)
    # A separate open and read, as zram03 reads the device back, sees every byte.
    data = m.pread(size, 0)
    assert data == b"a" * size
    s = m.mm_stat()
    assert s.orig_data_size == size and s.same_pages == size // 4096


# Loaded by the daemon's interpreter (PYTHONPATH): makes the pyfuse3 it imports claim 4.1.0.
_NEWER_PYFUSE3 = """
import importlib.abc, importlib.util, sys

class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "pyfuse3":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.__version__ = "4.1.0"

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Patch())
"""


def test_mount_refuses_a_pyfuse3_the_patches_do_not_fit(
    registry: Resources, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NEWER_PYFUSE3)
    mnt = tmp_path / "mnt"
    registry.zramfs_mounts.append(mnt)  # cleaned up should it mount after all
    assert ZRAMFS is not None
    res = subprocess.run(
        [ZRAMFS, "mount", str(mnt), "-s", "16M"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert res.returncode != 0
    assert "FusePatchError" in res.stderr and "pyfuse3 4.1.0 is outside" in res.stderr, res.stderr
    assert not is_mounted(mnt)
