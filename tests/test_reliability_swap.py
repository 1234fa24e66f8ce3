"""Swap under pressure: a program in a 256 MiB memory group fills and checks 1 GiB, three
rounds, with swap on a zramfs image through a loop device.

The program (tests/swap_hog.c, compiled here with gcc) writes every 4 KiB page with its index,
the round and log-like text (about 4:1 with lz4), then compares every byte.  The group's
limit (cgroup v1 memory.limit_in_bytes, swappiness 100) pushes three quarters of it through the
swap device and back each round, while the daemon, outside the group, serves it.  Checked:
the program ends in bounded time with every byte right, the device's counters show the pages
that went through it, the memory comes back once the program exits (swapon --discard), and
the daemon's memory is locked and never swapped itself.  A hang is reported with the kernel
stacks of the program and of every daemon thread.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import MiB, Resources, ZramMount, require, run
from test_reliability_common import (
    PF_LOCAL_THROTTLE,
    PF_MEMALLOC_NOIO,
    kernel_stacks,
    log_since,
    memory_group,
    stats_pages,
    status_kib,
    thread_flags,
)

pytestmark = pytest.mark.mount

HOG_MIB = 1024
ROUNDS = 3
GROUP_LIMIT = 256 * MiB
SWAP_SIZE = "2G"
HOG_TIMEOUT = 300.0  # measured: ~90 s on 2 cores
RELEASE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def swap_hog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    exe = tmp_path_factory.mktemp("swap_hog") / "swap_hog"
    src = Path(__file__).with_name("swap_hog.c")
    run("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, src)
    return exe


class Monitor(threading.Thread):
    """Samples mm_stat and the swap's use while the program runs: the peaks.

    Swap is system-wide: any other swap area in use meanwhile (another test run, say) takes
    part of the traffic, so it is recorded and the per-device figures are judged with it.
    """

    def __init__(self, m: ZramMount, dev: str) -> None:
        super().__init__(daemon=True)
        self.m, self.dev = m, dev
        self.stop = threading.Event()
        self.peak_orig = self.peak_used = self.peak_swap_kib = 0
        self.samples = 0
        self.errors: list[str] = []
        self.others: dict[str, int] = {}  # other swap areas in use: peak KiB

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                s = self.m.mm_stat()
                self.peak_orig = max(self.peak_orig, s.orig_data_size)
                self.peak_used = max(self.peak_used, s.mem_used_total)
                for line in Path("/proc/swaps").read_text().splitlines()[1:]:
                    f = line.split()
                    if f and f[0] == self.dev:
                        self.peak_swap_kib = max(self.peak_swap_kib, int(f[3]))
                    elif f and int(f[3]) > 0:
                        self.others[f[0]] = max(self.others.get(f[0], 0), int(f[3]))
                self.samples += 1
            except OSError as exc:  # reported, not raised: the main thread decides
                self.errors.append(str(exc))


@pytest.mark.slow
def test_swap_under_memory_pressure(registry: Resources, swap_hog: Path) -> None:
    require("mkswap", "swapon", "swapoff")
    m = registry.mount_zramfs(size=SWAP_SIZE)
    pid = m.pid()
    dev = registry.loop(m.image())
    run("mkswap", dev)
    registry.swapon(dev, "--discard")
    base_io, base_pages = m.io_stat(), stats_pages(m)

    monitor = Monitor(m, dev)
    with memory_group(GROUP_LIMIT, swappiness=100) as group:
        monitor.start()
        started = time.monotonic()
        proc = group.popen([str(swap_hog), str(HOG_MIB), str(ROUNDS)])
        try:
            out, err = proc.communicate(timeout=HOG_TIMEOUT)
        except subprocess.TimeoutExpired:
            report = (
                f"swap_hog did not finish in {HOG_TIMEOUT:.0f} s: a hang or deadlock.\n"
                f"== swap_hog (pid {proc.pid}) ==\n{kernel_stacks(proc.pid)}\n"
                f"== daemon (pid {pid}) ==\n{kernel_stacks(pid)}\n"
                f"== mm_stat ==\n{m.read('mm_stat')}"
            )
            proc.kill()
            proc.communicate()
            pytest.fail(report)
        finally:
            monitor.stop.set()
            monitor.join()
        elapsed = time.monotonic() - started
        cg_max = int(group.get("memory.max_usage_in_bytes"))
        cg_stat = group.stat()
        memsw = group.path / "memory.memsw.max_usage_in_bytes"
        cg_memsw_max = int(memsw.read_text()) if memsw.exists() else 0

    assert proc.returncode == 0, f"swap_hog exited {proc.returncode}:\n{out}\n{err}"
    assert f"ok {HOG_MIB * MiB // 4096 * ROUNDS}" in out, out
    rounds = {
        (int(r), phase): float(t)
        for r, phase, t in re.findall(r"round (\d+) (fill|verify) ([\d.]+)", out)
    }
    assert len(rounds) == 2 * ROUNDS, out
    assert cg_max <= GROUP_LIMIT

    after_mm, after_io, after_pages = m.mm_stat(), m.io_stat(), stats_pages(m)
    written = after_pages["writes"] - base_pages["writes"]
    read = after_pages["reads"] - base_pages["reads"]
    over = (HOG_MIB * MiB - GROUP_LIMIT) // 4096  # pages that cannot stay in memory
    if monitor.others:
        # Shared with another swap area: the program's pages were split between them.
        shared = f"; WARNING: other swap areas were in use too: {monitor.others} (KiB)"
        assert written > 0 and read > 0, (written, read)
    else:
        # Each round the program's pages beyond the limit go out and come back in.
        shared = ""
        assert written >= over * ROUNDS * 0.8, (written, over)
        assert read >= over * ROUNDS * 0.8, (read, over)
        assert monitor.peak_orig >= over * 4096 * 0.8, monitor.peak_orig
    assert monitor.peak_used < monitor.peak_orig, "the swapped pages did not compress"
    assert (after_io.failed_reads, after_io.failed_writes) == (
        base_io.failed_reads,
        base_io.failed_writes,
    ), after_io
    assert not monitor.errors, monitor.errors[:3]

    # The program is gone: its swap slots are freed and, with --discard, given back.  The
    # lowest figure seen counts: another process may start swapping here afterwards.
    target = max(monitor.peak_used // 10, 4 * MiB)
    release_start = time.monotonic()
    released = m.mm_stat()
    while released.mem_used_total > target:
        if time.monotonic() > release_start + RELEASE_TIMEOUT:
            break
        time.sleep(0.2)
        now = m.mm_stat()
        if now.mem_used_total < released.mem_used_total:
            released = now
    release_s = time.monotonic() - release_start
    assert released.mem_used_total <= target, (
        f"mem_used_total still {released.mem_used_total / MiB:.1f} MiB "
        f"{RELEASE_TIMEOUT:.0f} s after the program exited (peak "
        f"{monitor.peak_used / MiB:.1f} MiB)"
    )

    # The pages went back as discards (fallocate PUNCH_HOLE from the loop driver).
    freed = m.io_stat().notify_free - base_io.notify_free
    assert freed >= over, f"only {freed} pages discarded"

    # The daemon: its memory locked (mlockall MCL_ONFAULT), none of it in swap.
    vm_lck, vm_swap = status_kib(pid, "VmLck"), status_kib(pid, "VmSwap")
    vm_rss, vm_hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    assert vm_lck > 0, "the daemon's memory is not locked"
    assert vm_swap == 0, f"the daemon itself has {vm_swap} KiB in swap"
    # PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE: where the kernel refuses it, the daemon
    # must say so in its log; where it is granted, the threads that serve and (de)compress
    # carry the flags (the main thread, and the trio workers it starts afterwards; a
    # library's idle thread started before the prctl does not).
    log = log_since(m, 0)
    flusher_bits = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE
    flags = thread_flags(pid)
    serving = {tid: f for tid, (name, f) in flags.items() if tid == pid or "Trio" in name}
    refused = re.search(r"PR_SET_IO_FLUSHER failed: (.*)", log)
    if refused:
        io_flusher = f"refused by the kernel, logged: {refused.group(1)}"
    else:
        assert all(f & flusher_bits == flusher_bits for f in serving.values()), flags
        io_flusher = f"set on the {len(serving)} serving threads of {len(flags)}"
    assert "unexpected error" not in log, log[-3000:]

    times = ", ".join(
        f"round {r}: fill {rounds[r, 'fill']:.1f} s + verify {rounds[r, 'verify']:.1f} s"
        for r in range(1, ROUNDS + 1)
    )
    print(
        f"\nswap under pressure: {HOG_MIB} MiB x {ROUNDS} rounds in a "
        f"{GROUP_LIMIT // MiB} MiB group, {elapsed:.1f} s ({times}); "
        f"group peak {cg_max / MiB:.0f} MiB (mem+swap peak {cg_memsw_max / MiB:.0f} MiB), "
        f"major faults {cg_stat.get('total_pgmajfault', 0)}; "
        f"device: {written} pages written ({written * 4096 / MiB:.0f} MiB), {read} pages "
        f"read ({read * 4096 / MiB:.0f} MiB), {after_pages['discarded'] - base_pages['discarded']}"
        f" pages discarded; peak swap used {monitor.peak_swap_kib // 1024} MiB, peak "
        f"orig_data_size {monitor.peak_orig / MiB:.0f} MiB, peak mem_used_total "
        f"{monitor.peak_used / MiB:.0f} MiB (ratio {monitor.peak_orig / monitor.peak_used:.2f}), "
        f"mem_used_max {after_mm.mem_used_max / MiB:.0f} MiB; after exit mem_used_total "
        f"{after_mm.mem_used_total / MiB:.1f} MiB -> {released.mem_used_total / MiB:.2f} MiB in "
        f"{release_s:.1f} s (notify_free +{freed}); daemon VmLck {vm_lck // 1024} MiB, "
        f"VmSwap {vm_swap} KiB, VmRSS "
        f"{vm_rss // 1024} MiB, VmHWM {vm_hwm // 1024} MiB; PR_SET_IO_FLUSHER {io_flusher}"
        f"{shared}"
    )
