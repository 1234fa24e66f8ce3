"""The block devices under test.

Each contender's ``open(size)`` is a context manager that yields a ``Device`` (a block device
path and a way to read its memory use) and, on the way out, releases everything it set up
in reverse order: loop devices detached, mounts unmounted, processes it started stopped by
their pid, the kernel's zram device reset (and removed again if it was hot-added).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .system import (
    CommandError,
    MiB,
    Unavailable,
    attach_loop,
    ensure_tools,
    have,
    log,
    make_dir,
    mount,
    parse_mm_stat,
    read_file,
    release,
    run,
    vm_rss,
    wait_for,
    write_file,
)

REPO = Path(__file__).resolve().parents[2]
ZRAMFS_CLI = REPO / ".venv" / "bin" / "zramfs"
ZRAMFS_RUN_DIR = Path("/run/zramfs")
ZRAM_CONTROL = Path("/sys/class/zram-control")

Memory = dict[str, int | None]


@dataclass
class Device:
    """A block device ready for I/O, and how to read what storing its data costs."""

    path: str
    memory: Callable[[], Memory]
    notes: dict[str, object] = field(default_factory=dict)


class Contender:
    """One line of the comparison: a name, a description and ``open(size) -> Device``."""

    name = ""
    description = ""

    @contextmanager
    def open(self, size: int) -> Iterator[Device]:
        raise NotImplementedError
        yield  # pragma: no cover


def mounted(path: str | Path) -> bool:
    """True if ``path`` is a mount point (read from /proc/self/mounts, never stat'ing it)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _stop_process(proc: subprocess.Popen[bytes], name: str, grace: float = 10.0) -> None:
    """Stop a process this script started, by its pid: wait, then SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    log(f"  warning: {name} (pid {proc.pid}) did not stop")


# -- zramfs ---------------------------------------------------------------------------------


class Zramfs(Contender):
    """zramfs through its CLI: ``zramfs mount MNT -s SIZE -a ALGO``, MNT/zram0/image on loop."""

    def __init__(self, algorithm: str, cli: Path = ZRAMFS_CLI) -> None:
        self.algorithm = algorithm
        self.cli = cli
        self.name = f"zramfs-{algorithm}"
        self.description = f"zramfs {algorithm} (FUSE image, loop device with direct I/O)"

    @staticmethod
    def pidfile(mountpoint: Path) -> Path:
        """/run/zramfs/<mount point without its leading /, / replaced by ->.pid"""
        name = str(mountpoint.resolve()).strip("/").replace("/", "-") or "root"
        return ZRAMFS_RUN_DIR / f"{name}.pid"

    @staticmethod
    def daemon_pid(mountpoint: Path) -> int | None:
        try:
            return int(read_file(Zramfs.pidfile(mountpoint)).strip())
        except (OSError, ValueError):
            return None

    @contextmanager
    def mounted(self, size: int) -> Iterator[tuple[Path, int | None]]:
        """A zramfs mount of one ``size`` device; yields (mountpoint, daemon pid)."""
        if not self.cli.exists():
            raise Unavailable(f"zramfs CLI not found at {self.cli} (make venv)")
        with ExitStack() as stack:
            mnt = make_dir(stack, f"zramfs-compare-{self.algorithm}-")
            stack.callback(self._umount, mnt)
            cmd = [str(self.cli), "mount", str(mnt), "-s", str(size),
                   "-a", self.algorithm]
            try:
                run(cmd, timeout=120)
            except CommandError as exc:
                raise Unavailable(f"zramfs mount failed: {exc}") from None
            if not mounted(mnt):
                raise Unavailable(f"zramfs mount returned but nothing is mounted on {mnt}")
            yield mnt, self.daemon_pid(mnt)

    def _umount(self, mnt: Path) -> None:
        """``zramfs umount``; if that fails, ``--force``, then SIGTERM to the daemon we started."""
        if not mounted(mnt):
            return
        pid = self.daemon_pid(mnt)
        cli = str(self.cli)

        def umount() -> None:
            if mounted(mnt):
                run([cli, "umount", str(mnt)], timeout=120)

        release(f"zramfs umount {mnt}", umount, attempts=8, delay=0.5)
        if mounted(mnt):
            release(f"zramfs umount --force {mnt}",
                    lambda: run([cli, "umount", "--force", str(mnt)], timeout=120), attempts=1)
        if mounted(mnt) and pid is not None:
            log(f"  warning: sending SIGTERM to zramfs daemon {pid}")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while mounted(mnt) and time.monotonic() < deadline:
                time.sleep(0.1)
        if not mounted(mnt):
            # The CLI's daemon log for this throw-away mount point (kept when it failed).
            self.pidfile(mnt).with_suffix(".log").unlink(missing_ok=True)

    @contextmanager
    def open(self, size: int) -> Iterator[Device]:
        with ExitStack() as stack:
            mnt, pid = stack.enter_context(self.mounted(size))
            image = mnt / "zram0" / "image"
            if not image.exists():
                raise Unavailable(f"{image} does not exist after mounting")
            dev, dio = attach_loop(stack, image)

            def memory() -> Memory:
                mm: Memory = dict(parse_mm_stat(read_file(mnt / "zram0" / "mm_stat")))
                mm["rss"] = vm_rss(pid) if pid is not None else None
                return mm

            yield Device(dev, memory, {"mountpoint": str(mnt), "daemon_pid": pid, "dio": dio})


# -- the kernel's zram ----------------------------------------------------------------------


class KernelZram(Contender):
    """The kernel's zram with lz4: a hot-added device, or a free /dev/zramN (disksize 0)."""

    name = "zram"
    description = "kernel zram lz4 (block device)"
    algorithm = "lz4"

    def _claim(self) -> tuple[int, bool]:
        """(device id, hot-added?)."""
        if not ZRAM_CONTROL.exists():
            subprocess.run(["modprobe", "zram"], capture_output=True, check=False)
        hot_add = ZRAM_CONTROL / "hot_add"
        if hot_add.exists():
            try:
                return int(read_file(hot_add).strip()), True
            except (OSError, ValueError) as exc:
                log(f"  zram hot_add failed ({exc}); looking for a free device")
        for sysdir in sorted(Path("/sys/block").glob("zram*")):
            try:
                free = int(read_file(sysdir / "disksize")) == 0
            except (OSError, ValueError):
                continue
            if free:
                return int(sysdir.name[4:]), False
        raise Unavailable("no zram-control/hot_add and no /dev/zramN with disksize 0")

    @contextmanager
    def open(self, size: int) -> Iterator[Device]:
        with ExitStack() as stack:
            dev_id, hot = self._claim()
            sysdir = Path(f"/sys/block/zram{dev_id}")
            if hot:
                stack.callback(release, f"hot_remove zram{dev_id}",
                               lambda: write_file(ZRAM_CONTROL / "hot_remove", str(dev_id)))
            stack.callback(release, f"reset zram{dev_id}",
                           lambda: write_file(sysdir / "reset", "1"), 40)
            algorithms = read_file(sysdir / "comp_algorithm").replace("[", "").replace("]", "")
            if self.algorithm not in algorithms.split():
                raise Unavailable(f"zram{dev_id} has no {self.algorithm} ({algorithms.strip()})")
            try:
                write_file(sysdir / "comp_algorithm", self.algorithm)
                write_file(sysdir / "disksize", str(size))
            except OSError as exc:
                raise Unavailable(f"zram{dev_id}: {exc}") from None
            path = f"/dev/zram{dev_id}"
            wait_for(lambda: os.path.exists(path), 10, path)

            def memory() -> Memory:
                return dict(parse_mm_stat(read_file(sysdir / "mm_stat")))

            yield Device(path, memory, {"device": path, "hot_added": hot})


# -- nbdkit memory allocator=zstd behind nbdfuse ------------------------------------------------


class Nbdkit(Contender):
    """``nbdkit memory SIZE allocator=zstd`` on a unix socket, ``nbdfuse`` file on loop."""

    name = "nbdkit"
    description = "nbdkit memory allocator=zstd + nbdfuse (loop device with direct I/O)"

    @contextmanager
    def open(self, size: int) -> Iterator[Device]:
        reason = ensure_tools({"nbdkit": "nbdkit", "nbdfuse": "libnbd-bin"})
        if reason:
            raise Unavailable(f"skipping nbdkit: {reason}")
        with ExitStack() as stack:
            tmp = make_dir(stack, "nbdkit-compare-")
            sock, pidfile, logfile = tmp / "nbd.sock", tmp / "nbdfuse.pid", tmp / "log"
            mnt = tmp / "mnt"
            mnt.mkdir()
            stack.callback(release, f"remove {mnt}", mnt.rmdir, 3)
            for path in (sock, pidfile, logfile):
                stack.callback(release, f"remove {path}", partial(path.unlink, True), 1)
            log_fd = stack.enter_context(open(logfile, "wb"))

            server = subprocess.Popen(
                ["nbdkit", "-f", "-U", str(sock), "memory", str(size), "allocator=zstd"],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            )
            stack.callback(_stop_process, server, "nbdkit")
            self._wait(sock.exists, server, logfile, "nbdkit socket")

            client = subprocess.Popen(
                ["nbdfuse", "-P", str(pidfile), str(mnt), "--unix", str(sock)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            )
            stack.callback(_stop_process, client, "nbdfuse")
            stack.callback(self._fuse_umount, mnt)
            image = mnt / "nbd"
            self._wait(lambda: pidfile.exists() and image.exists(), client, logfile, "nbdfuse")
            dev, dio = attach_loop(stack, image)

            def memory() -> Memory:
                rss = vm_rss(server.pid)
                return {"orig_data_size": None, "compr_data_size": None,
                        "mem_used_total": rss, "rss": rss, "nbdfuse_rss": vm_rss(client.pid)}

            yield Device(dev, memory, {"nbdkit_pid": server.pid, "nbdfuse_pid": client.pid,
                                       "dio": dio})

    @staticmethod
    def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], logfile: Path,
              what: str) -> None:
        try:
            wait_for(ready, 20, what, alive=lambda: proc.poll() is None)
        except Unavailable as exc:
            raise Unavailable(f"{exc}; log: {read_file(logfile).strip()[-500:]}") from None

    @staticmethod
    def _fuse_umount(mnt: Path) -> None:
        if not mounted(mnt):
            return
        cmd = ["fusermount3", "-u", str(mnt)] if have("fusermount3") else ["umount", str(mnt)]
        release(f"unmount nbdfuse {mnt}", lambda: run(cmd, timeout=60))


# -- tmpfs ----------------------------------------------------------------------------------------


class Tmpfs(Contender):
    """A sparse file on a tmpfs of its own: the uncompressed baseline."""

    name = "tmpfs"
    description = "tmpfs file, uncompressed (loop device with direct I/O)"

    @contextmanager
    def open(self, size: int) -> Iterator[Device]:
        with ExitStack() as stack:
            mnt = make_dir(stack, "tmpfs-compare-")
            mount(stack, "tmpfs", mnt, "-t", "tmpfs", "-o", f"size={size + MiB},mode=0700")
            image = mnt / "image"
            with open(image, "wb") as f:
                f.truncate(size)
            dev, dio = attach_loop(stack, image)

            def memory() -> Memory:
                allocated = os.stat(image).st_blocks * 512
                return {"orig_data_size": allocated, "compr_data_size": None,
                        "mem_used_total": allocated}

            yield Device(dev, memory, {"mountpoint": str(mnt), "dio": dio})


def all_contenders(zramfs_cli: Path = ZRAMFS_CLI) -> list[Contender]:
    """In table order; the references for the ratios are ``zram`` and ``nbdkit``."""
    return [Zramfs("lz4", zramfs_cli), Zramfs("zstd", zramfs_cli), KernelZram(), Nbdkit(),
            Tmpfs()]
