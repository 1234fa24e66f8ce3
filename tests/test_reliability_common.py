"""Helpers shared by the reliability tests (tests/test_reliability_*.py); no tests here.

The mount/loop fixtures come from conftest.py; this module adds what the reliability tests
need on top: a cgroup v1 memory group for memory pressure, the daemon's /proc view (locked
and swapped memory, thread flags, kernel stacks for hang reports), its log, and O_DIRECT I/O
on a loop device with aligned buffers.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import MiB, ZramMount, process_running

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
PF_MEMALLOC_NOIO = 0x00080000
PF_LOCAL_THROTTLE = 0x00100000


# -- the daemon ------------------------------------------------------------------------------


def run_name(m: ZramMount) -> str:
    """The base name of the daemon's pid and log files in /run/zramfs."""
    return str(m.path).strip("/").replace("/", "-")


def pidfile(m: ZramMount) -> Path:
    return Path(f"/run/zramfs/{run_name(m)}.pid")


def logfile(m: ZramMount) -> Path:
    return Path(f"/run/zramfs/{run_name(m)}.log")


def log_size(m: ZramMount) -> int:
    try:
        return logfile(m).stat().st_size
    except FileNotFoundError:
        return 0


def log_since(m: ZramMount, offset: int) -> str:
    """What the daemon logged after byte `offset` of its log (the log is appended to)."""
    with open(logfile(m), "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def status_kib(pid: int, key: str) -> int:
    """A "NNN kB" field of /proc/PID/status, in KiB."""
    return int(proc_status(pid)[key].split()[0])


def thread_flags(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (name, the kernel's task flags: field 9 of /proc/PID/task/TID/stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        out[int(task.name)] = (name, int(text.rsplit(")", 1)[1].split()[6]))
    return out


def kernel_stacks(pid: int) -> str:
    """Every thread's wchan and kernel stack, for a hang report."""
    parts = []
    try:
        tasks = sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name))
    except OSError as exc:
        return f"pid {pid}: {exc}"
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            wchan = (task / "wchan").read_text().strip()
            state = proc_status_line(task / "status", "State")
            stack = (task / "stack").read_text()
        except OSError as exc:
            stack, comm, wchan, state = str(exc), "?", "?", "?"
        parts.append(f"--- tid {task.name} ({comm}) {state} wchan={wchan}\n{stack}")
    return "\n".join(parts)


def proc_status_line(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stats_pages(m: ZramMount, n: int = 0) -> dict[str, int]:
    """The page counters of the human-readable stats file (reads, writes, discarded ...)."""
    out = {}
    for line in m.read("stats", n).splitlines():
        key, _, rest = line.partition("  ")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key.strip()] = int(fields[0])
    return out


# -- a cgroup v1 memory group -----------------------------------------------------------------


class MemoryGroup:
    """A child of the v1 memory controller that the test created and removes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def get(self, name: str) -> str:
        return (self.path / name).read_text()

    def stat(self) -> dict[str, int]:
        out = {}
        for line in self.get("memory.stat").splitlines():
            key, value = line.split()
            out[key] = int(value)
        return out

    def procs(self) -> list[int]:
        return [int(x) for x in self.get("cgroup.procs").split()]

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start `argv` inside the group (it joins before it execs, so all its memory counts),
        its output captured."""
        script = f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"'
        return subprocess.Popen(
            ["sh", "-c", script, "sh", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@contextmanager
def memory_group(limit: int, swappiness: int = 100) -> Iterator[MemoryGroup]:
    """A memory group limited to `limit` bytes; on the way out its processes (the test's own:
    nothing else is ever put in it) are killed and the group removed."""
    if not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
        import pytest

        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    path = MEMCG_ROOT / f"zramfs-reliability-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    group = MemoryGroup(path)
    try:
        group.set("memory.limit_in_bytes", str(limit))
        group.set("memory.swappiness", str(swappiness))
        assert int(group.get("memory.limit_in_bytes")) == limit
        yield group
    finally:
        for _ in range(100):
            pids = group.procs()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for attempt in range(50):
            try:
                path.rmdir()
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == 49:
                    raise
                time.sleep(0.2)


# -- O_DIRECT I/O on a block device --------------------------------------------------------------


def direct_write(dev: str, offset: int, data: bytes) -> None:
    """pwrite with O_DIRECT from a page-aligned buffer: the write reaches the device or fails."""
    buf = mmap.mmap(-1, max(len(data), mmap.PAGESIZE))
    try:
        buf[: len(data)] = data
        fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
        try:
            done = os.pwritev(fd, [memoryview(buf)[: len(data)]], offset)
            assert done == len(data), f"short direct write {done} of {len(data)}"
        finally:
            os.close(fd)
    finally:
        buf.close()


def direct_read(dev: str, offset: int, length: int) -> bytes:
    """pread with O_DIRECT: what the device holds, never the page cache."""
    buf = mmap.mmap(-1, max(length, mmap.PAGESIZE))
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
        try:
            done = os.preadv(fd, [memoryview(buf)[:length]], offset)
        finally:
            os.close(fd)
        return bytes(buf[:done])
    finally:
        buf.close()


def direct_sha256(dev: str, offset: int, length: int, chunk: int = 4 * MiB) -> str:
    h = hashlib.sha256()
    for at in range(offset, offset + length, chunk):
        h.update(direct_read(dev, at, min(chunk, offset + length - at)))
    return h.hexdigest()


def image_sha256(m: ZramMount, offset: int, length: int, n: int = 0) -> str:
    return hashlib.sha256(m.pread(length, offset, n)).hexdigest()
