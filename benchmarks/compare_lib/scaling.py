"""Does zramfs slow down as it fills?  And what does an empty (huge) device cost?"""

from __future__ import annotations

import time
from collections.abc import Callable

from .contenders import Device, Zramfs
from .fio import PREFILL, run_fio
from .system import GiB, vm_rss


def fill_steps(device: Device, total: int, step: int,
               progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Write ``device`` sequentially in ``step``-byte pieces (1 MiB, QD8, compressible data);
    seconds per GiB for each piece, by fio's own runtime."""
    per_gib = []
    for i in range(total // step):
        result = run_fio(PREFILL, device.path, size=step, runtime=0, offset=i * step)
        per_gib.append(result.runtime_s / (step / GiB))
        if progress is not None:
            progress(i, per_gib[-1])
    return per_gib


def empty_rss(zramfs: Zramfs, size: int, settle_s: float = 1.0) -> int | None:
    """The zramfs daemon's VmRSS right after ``zramfs mount -s SIZE`` (nothing written)."""
    with zramfs.mounted(size) as (_mnt, pid):
        time.sleep(settle_s)
        return None if pid is None else vm_rss(pid)
