"""The real workload: unpack the kernel source onto ext4 on a device, then read it all back."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .contenders import Device, Memory
from .system import (
    CommandError,
    MiB,
    drop_caches,
    log,
    make_dir,
    mem_available,
    mount,
    run,
)

PACKAGE = "linux-source-6.1"
DECOMPRESSORS = {".xz": ["xz", "-dc"], ".bz2": ["bzip2", "-dc"], ".gz": ["gzip", "-dc"]}


@dataclass(frozen=True)
class TreeResult:
    """Seconds to unpack (tar -x, then syncfs) and to read every file back from cold caches;
    the device's memory figures and MemAvailable's drop, both after sync and drop_caches."""

    untar_s: float
    read_s: float
    memavail_drop: int
    memory: Memory


def kernel_tarball(cache: Path) -> Path:
    """The uncompressed kernel source tarball, cached in ``cache`` (downloaded once).

    ``apt-get download linux-source-6.1`` -> ``dpkg-deb -x`` -> the inner tarball,
    decompressed once so that the timed unpack measures the device, not xz.
    """
    tar = cache / f"{PACKAGE}.tar"
    if tar.exists():
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        log(f"downloading {PACKAGE} into {cache}")
        run(["apt-get", "download", PACKAGE], cwd=cache, timeout=3600)
        debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise CommandError(f"apt-get download {PACKAGE} left no .deb in {cache}")
    log(f"extracting the kernel source tarball from {debs[-1].name}")
    with tempfile.TemporaryDirectory(dir=cache, prefix="deb-") as tmp:
        run(["dpkg-deb", "-x", str(debs[-1]), tmp], timeout=1800)
        inner = sorted(Path(tmp).glob(f"usr/src/{PACKAGE}.tar*"))
        if not inner:
            raise CommandError(f"no usr/src/{PACKAGE}.tar* in {debs[-1].name}")
        partial = tar.with_suffix(".tar.partial")
        decompress = DECOMPRESSORS.get(inner[0].suffix)
        if decompress is None:
            shutil.move(str(inner[0]), partial)
        else:
            with open(partial, "wb") as out:
                subprocess.run([*decompress, str(inner[0])], stdout=out, check=True)
        partial.rename(tar)
    return tar


def _warm(path: Path) -> None:
    """Read ``path`` once so that the timed unpack does not wait for the disk."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def run_kernel_tree(device: Device, tarball: Path) -> TreeResult:
    """mkfs.ext4 on ``device``, mount, unpack, sync; measure; read everything back."""
    with ExitStack() as stack:
        mnt = make_dir(stack, "ktree-compare-")
        drop_caches()
        before = mem_available()
        run(["mkfs.ext4", "-F", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
             device.path], timeout=600)
        mount(stack, device.path, mnt, "-t", "ext4")
        _warm(tarball)

        t0 = time.monotonic()
        run(["tar", "-xf", str(tarball), "-C", str(mnt)], timeout=7200)
        run(["sync", "-f", str(mnt)], timeout=3600)
        untar_s = time.monotonic() - t0

        drop_caches()
        after = mem_available()
        memory = device.memory()

        t0 = time.monotonic()
        # Not `tar cf /dev/null`: GNU tar notices /dev/null and reads no file at all.
        run(["bash", "-c", "set -o pipefail; find . -type f -print0 | xargs -0 cat > /dev/null"],
            cwd=mnt, timeout=7200)
        read_s = time.monotonic() - t0
    return TreeResult(untar_s, read_s, before - after, memory)
