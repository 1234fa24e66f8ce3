"""Memory groups, swap on zramfs or the kernel's zram, the hog, and a sampler.

A memory group is a child of the cgroup v1 memory controller that only our processes join;
swap devices are swapped on with the highest priority (so the group's pages go to them,
not to any other swap area) and swapped off, reset and removed on the way out; the kernel's
device is always a freshly hot-added one, never an existing /dev/zramN.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compare_lib.system import (
    CommandError,
    MiB,
    log,
    make_dir,
    read_file,
    release,
    run,
    wait_for,
    write_file,
)

HERE = Path(__file__).resolve().parents[1]
REPO = HERE.parent
ZRAMFS_CLI = REPO / ".venv" / "bin" / "zramfs"
MEMCG = Path("/sys/fs/cgroup/memory")
ZRAM_CONTROL = Path("/sys/class/zram-control")
RESULTS = HERE / "results"
SWAP_PRIORITY = "32767"


# -- the hog ------------------------------------------------------------------------------------


def build_hog(stack: ExitStack) -> Path:
    """Compile tier_randhog.c into a temporary directory."""
    out = make_dir(stack, "tier-hog-") / "tier_randhog"
    run(["gcc", "-O2", "-o", str(out), str(HERE / "tier_randhog.c")], timeout=120)
    stack.callback(release, f"remove {out}", out.unlink, 3)
    return out


# -- memory groups ----------------------------------------------------------------------------


class Group:
    """A cgroup v1 memory group we created; our processes join it before they exec."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, name: str) -> str:
        return read_file(self.path / name)

    def set(self, name: str, value: str) -> None:
        write_file(self.path / name, value)

    def number(self, name: str) -> int:
        try:
            return int(self.get(name).split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    def oom_kills(self) -> int:
        for line in self.get("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        script = f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", *argv], text=True, **kw)

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in self.get("cgroup.procs").split()]
        except OSError:
            return []


@contextmanager
def memory_group(limit: int, swappiness: int = 100) -> Iterator[Group]:
    if not (MEMCG / "memory.limit_in_bytes").exists():
        raise CommandError("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    path = MEMCG / f"zramfs-tier-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    group = Group(path)
    try:
        group.set("memory.limit_in_bytes", str(limit))
        group.set("memory.swappiness", str(swappiness))
        yield group
    finally:
        for _ in range(200):
            pids = group.procs()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        release(f"remove {path}", path.rmdir, 50, 0.2)


# -- swap devices ------------------------------------------------------------------------------


@dataclass
class SwapDevice:
    """A swap area we set up: its block device and where its zram-style files are."""

    kind: str
    dev: str
    sysdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, name: str) -> str:
        try:
            return read_file(self.sysdir / name)
        except OSError:
            return ""

    def numbers(self, name: str) -> list[int]:
        return [int(x) for x in self.read(name).split() if x.lstrip("-").isdigit()]


def _swapon(stack: ExitStack, dev: str, discard: bool = False) -> None:
    run(["mkswap", "-f", dev], timeout=120)
    run(["swapon", "-p", SWAP_PRIORITY, *(["--discard"] if discard else []), dev], timeout=120)
    stack.callback(release, f"swapoff {dev}", lambda: run(["swapoff", dev], timeout=1800), 5)


def other_swaps() -> list[str]:
    lines = read_file("/proc/swaps").splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


@contextmanager
def kernel_zram_swap(size: int, mem_limit: int, algorithm: str = "lz4") -> Iterator[SwapDevice]:
    """A freshly hot-added kernel zram device as swap; swapoff, reset, hot_remove afterwards."""
    with ExitStack() as stack:
        dev_id = int(read_file(ZRAM_CONTROL / "hot_add").strip())
        sysdir = Path(f"/sys/block/zram{dev_id}")
        stack.callback(release, f"hot_remove zram{dev_id}",
                       lambda: write_file(ZRAM_CONTROL / "hot_remove", str(dev_id)), 40)
        stack.callback(release, f"reset zram{dev_id}",
                       lambda: write_file(sysdir / "reset", "1"), 40)
        write_file(sysdir / "comp_algorithm", algorithm)
        write_file(sysdir / "mem_limit", str(mem_limit))
        write_file(sysdir / "disksize", str(size))
        dev = f"/dev/zram{dev_id}"
        wait_for(lambda: os.path.exists(dev), 10, dev)
        _swapon(stack, dev)
        yield SwapDevice("kernel zram", dev, sysdir, {"zram_id": dev_id})


@contextmanager
def zramfs_device(size: int, mem_limit: int, backing: Path | str | None,
                  algorithm: str = "lz4",
                  extra_files: dict[str, str] | None = None) -> Iterator[SwapDevice]:
    """A zramfs mount of one device, configured through its files (backing_dev before
    disksize), its image on a loop device with direct I/O. Not yet swapped on."""
    with ExitStack() as stack:
        mnt = make_dir(stack, "zramfs-tier-")
        cli = str(ZRAMFS_CLI)
        run([cli, "mount", str(mnt), "-s", "0", "-a", algorithm], timeout=120)

        def umount() -> None:
            if os.path.ismount(mnt):
                try:
                    run([cli, "umount", str(mnt)], timeout=300)
                except CommandError:
                    run([cli, "umount", "--force", str(mnt)], timeout=300)

        stack.callback(release, f"zramfs umount {mnt}", umount, 8, 0.5)
        sysdir = mnt / "zram0"
        info: dict[str, Any] = {"mountpoint": str(mnt)}
        if backing is not None:
            write_file(sysdir / "backing_dev", str(backing))
            info["backing_dev"] = str(backing)
        write_file(sysdir / "mem_limit", str(mem_limit))
        for name, value in (extra_files or {}).items():
            write_file(sysdir / name, value)
        write_file(sysdir / "disksize", str(size))
        pidfile = Path("/run/zramfs") / (str(mnt).strip("/").replace("/", "-") + ".pid")
        try:
            info["daemon_pid"] = int(read_file(pidfile).strip())
        except (OSError, ValueError):
            info["daemon_pid"] = None
        dev = run(["losetup", "-f", "--show", "--direct-io=on", str(sysdir / "image")],
                  timeout=60).strip()
        stack.callback(release, f"detach {dev}", lambda: run(["losetup", "-d", dev], timeout=60))
        yield SwapDevice("zramfs", dev, sysdir, info)


@contextmanager
def zramfs_swap(size: int, mem_limit: int, backing: Path | str | None,
                algorithm: str = "lz4",
                extra_files: dict[str, str] | None = None,
                discard: bool = False) -> Iterator[SwapDevice]:
    """zramfs_device() swapped on; with `discard`, `swapon --discard` (freed swap slots reach
    zramfs as discards, as the README's swap set-up does; the kernel's zram learns of freed
    slots without it)."""
    with ExitStack() as stack:
        swap = stack.enter_context(zramfs_device(size, mem_limit, backing, algorithm,
                                                 extra_files))
        _swapon(stack, swap.dev, discard)
        swap.extra["swapon_discard"] = discard
        yield swap


def sparse_backing(stack: ExitStack, size: int) -> Path:
    """A sparse backing file on the root filesystem (a real disk), removed afterwards."""
    path = make_dir(stack, "zramfs-tier-backing-") / "backing.img"
    with open(path, "wb") as f:
        f.truncate(size)
    stack.callback(release, f"remove {path}", path.unlink, 3)
    return path


# -- sampling -------------------------------------------------------------------------------------


def task_states(pids: list[int]) -> dict[str, int]:
    """How many of the tasks (threads included) of `pids` are in each state (R, S, D ...)."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = read_file(f"/proc/{pid}/task/{tid}/stat")
            except OSError:
                continue
            state = text.rsplit(")", 1)[1].split()[0]
            out[state] = out.get(state, 0) + 1
    return out


class Sampler:
    """Every `interval` seconds: the group's tasks' states and memory, the device's counters."""

    def __init__(self, group: Group, swap: SwapDevice, interval: float = 0.5,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.group, self.swap, self.interval, self.extra = group, swap, interval, extra
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, Any]:
        g = self.group
        s: dict[str, Any] = {
            "t": round(time.monotonic() - self.t0, 2),
            "states": task_states(g.procs()),
            "usage": g.number("memory.usage_in_bytes"),
            "memsw_usage": g.number("memory.memsw.usage_in_bytes"),
            "oom_kills": g.oom_kills(),
            "failcnt": g.number("memory.failcnt"),
            "mm_stat": self.swap.numbers("mm_stat"),
            "io_stat": self.swap.numbers("io_stat"),
            "bd_stat": self.swap.numbers("bd_stat"),
        }
        if self.extra is not None:
            s.update(self.extra())
        return s

    def summary(self) -> dict[str, Any]:
        """Peaks and totals over the samples: seconds with a task in D state, failed writes
        at the end, the highest mem_used_total, bd_stat at the end."""
        d_seconds = sum(self.interval for s in self.samples if s["states"].get("D"))
        last = self.samples[-1] if self.samples else {}
        peak_mm = max((s["mm_stat"][2] for s in self.samples if len(s["mm_stat"]) > 2),
                      default=0)
        return {
            "samples": len(self.samples),
            "seconds_with_a_task_in_D_state": round(d_seconds, 1),
            "peak_group_usage_MiB": round(max((s["usage"] for s in self.samples),
                                              default=0) / MiB, 1),
            "peak_mem_used_total_MiB": round(peak_mm / MiB, 1),
            "failed_writes": last.get("io_stat", [0, 0])[1] if last.get("io_stat") else None,
            "failed_reads": last.get("io_stat", [0])[0] if last.get("io_stat") else None,
            "bd_stat": last.get("bd_stat"),
            "oom_kills": max((s["oom_kills"] for s in self.samples), default=0),
        }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    text = json.dumps(result, indent=1)
    path.write_text(text + "\n")
    (RESULTS / f"{name}-latest.json").write_text(text + "\n")
    log(f"results in {path}")
    return path


def reexec_in_venv(script: Path) -> None:
    """Run `script` again with the repository's .venv python unless already in it."""
    import sys

    venv = REPO / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        python = venv / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{python} is missing: run `make venv` in {REPO}")
        os.execv(str(python), [str(python), str(script), *sys.argv[1:]])
    sys.path.insert(0, str(HERE))
