#!/usr/bin/env python3
"""Interleaved A/B of where large requests (de)compress: on the trio thread or on workers.

Each round mounts a fresh zramfs device per variant ("inline": ZRAMFS_BATCH_THREADS=0,
"threads": =1, which the daemon inherits), attaches it to a loop device with direct I/O,
fills it with fio (1 MiB, QD8, compressible data) and reads it back, and prints one JSON
line: MiB/s, the daemon's CPU per MiB on its trio thread and on all its threads (from
/proc/PID/task/*/stat) and the share of /proc/stat idle during each job. The order
alternates (A B, B A, ...) so drifting load hits both variants alike. Needs root.

    sudo .venv/bin/python benchmarks/threads_ab.py --rounds 4 --size-mib 1024 [--algo lz4]
    sudo nice -n -20 .venv/bin/python benchmarks/threads_ab.py    # ahead of other load
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_lib.contenders import Zramfs  # noqa: E402
from compare_lib.fio import FioJob, run_fio  # noqa: E402

MiB = 1 << 20
VARIANTS = {"inline": "0", "threads": "1"}
WRITE = FioJob("seqwrite", "write 1 MiB QD8", "write", "1M", 8, False)
READ = FioJob("seqread", "read 1 MiB QD8", "read", "1M", 8, False)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """utime + stime in seconds of each thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def idle_and_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def measure(job: FioJob, device: str, pid: int, size: int) -> dict[str, float]:
    cpu0, (idle0, total0) = thread_cpu_s(pid), idle_and_total()
    result = run_fio(job, device, size, 0)
    cpu1, (idle1, total1) = thread_cpu_s(pid), idle_and_total()
    mib = size / MiB
    trio_s = cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0)
    all_s = sum(cpu1.values()) - sum(cpu0.values())
    return {
        "mib_s": round(result.mib_s),
        "trio_ms_per_mib": round(1000 * trio_s / mib, 2),
        "all_ms_per_mib": round(1000 * all_s / mib, 2),
        "idle_pct": round(100 * (idle1 - idle0) / max(1, total1 - total0)),
        "threads": len(cpu1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--algo", default="lz4")
    a = p.parse_args()
    size = a.size_mib * MiB
    names = list(VARIANTS)
    for rnd in range(a.rounds):
        for variant in names if rnd % 2 == 0 else names[::-1]:
            os.environ["ZRAMFS_BATCH_THREADS"] = VARIANTS[variant]
            with Zramfs(a.algo).open(size) as dev:
                pid = dev.notes["daemon_pid"]
                assert isinstance(pid, int), "no daemon pid"
                with open("/proc/loadavg") as f:
                    load = f.read().split()[0]
                write = measure(WRITE, dev.path, pid, size)
                read = measure(READ, dev.path, pid, size)
            row = {"time": time.strftime("%H:%M:%S"), "round": rnd, "variant": variant,
                   "load": load, "write": write, "read": read}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
