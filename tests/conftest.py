"""Shared fixtures for the real-mount tests (tests/test_mount_*.py).

Every test that mounts zramfs is marked ``@pytest.mark.mount`` and is skipped, with the reason,
when the machine cannot run it (not root, no /dev/fuse, no zramfs command).  The fixtures drive
the system exactly as a user would: the ``zramfs`` command, losetup, mkfs, mount, swapon.

Everything a test creates is recorded in a :class:`Resources` registry and released in its
teardown, also when the test fails, in dependency order: swaps, filesystem mounts, loop devices,
then the zramfs mounts (``zramfs umount``, falling back to ``zramfs umount --force``).  Only
resources the test itself created are touched: never /dev/zram0, never other people's loop
devices or mounts.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096
KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
CMD_TIMEOUT = 120


def _zramfs_command() -> str | None:
    for candidate in (Path(sys.executable).with_name("zramfs"), ROOT / ".venv" / "bin" / "zramfs"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("zramfs")


ZRAMFS = _zramfs_command()


def mount_skip_reason() -> str | None:
    """Why the real-mount tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (FUSE mount, loop devices, swap)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if ZRAMFS is None:
        return "the zramfs command is not installed (make venv)"
    for tool in ("losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = mount_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "mount" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note each phase's outcome on the item, so that teardown knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def require(*tools: str) -> None:
    """Skip the calling test unless every command in `tools` is installed."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


# -- running commands ---------------------------------------------------------------------------


def run(
    *args: str | os.PathLike[str], check: bool = True, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command; with `check`, a non-zero exit fails the test with its stderr."""
    argv = [os.fspath(a) for a in args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited with {res.returncode}:\n{res.stdout}{res.stderr}".rstrip()
        )
    return res


def zramfs_cmd(
    *args: str | os.PathLike[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert ZRAMFS is not None
    return run(ZRAMFS, *args, check=check)


def sh(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell script, as a user at a shell would (echo X > file, cat file).

    bash, not dash: dash reports every failed write as "I/O error", bash names the errno.
    """
    return run(shutil.which("bash") or "sh", "-c", script, check=check)


# -- reading the system's tables -----------------------------------------------------------------


def proc_mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, type) of every mount."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[0], parts[1].replace("\\040", " "), parts[2]))
    return out


def is_zramfs_mount(path: os.PathLike[str] | str) -> bool:
    p = os.path.abspath(path)
    return any(m == p and t == "fuse.zramfs" for _, m, t in proc_mounts())


def is_mounted(path: os.PathLike[str] | str) -> bool:
    p = os.path.abspath(path)
    return any(m == p for _, m, _ in proc_mounts())


def active_swaps() -> list[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


def loop_backing(dev: str) -> str | None:
    """The backing file of /dev/loopN, or None once it is detached."""
    try:
        text = Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file").read_text()
    except OSError:
        return None
    return text.strip() or None


def process_running(pid: int) -> bool:
    """True while `pid` runs; an exited process not yet reaped (a zombie) does not count."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            out[key] = int(fields[0]) * (KiB if fields[1:] == ["kB"] else 1)
    return out


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- test data ------------------------------------------------------------------------------------

_LINES = (
    "{t} kernel: zram{d}: page {n} stored in class {c} ({s} bytes)\n",
    "{t} zramfs[{p}]: write offset={n} length=4096 status=ok\n",
    "{t} kernel: loop{d}: discard sector {n} count 8\n",
    "{t} kernel: EXT4-fs (loop{d}): mounted filesystem with ordered data mode\n",
    "{t} systemd[1]: Started session {c} of user {w}.\n",
)
_WORDS = ("root", "daemon", "zram", "alice", "bob")


def text_bytes(size: int, seed: int = 0) -> bytes:
    """`size` bytes of log-like text: about 3x with lz4 on 4 KiB pages, none same-filled."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        line = rng.choice(_LINES).format(
            t=f"Nov 25 21:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            d=rng.randint(0, 3),
            n=rng.randint(0, 1 << 20),
            c=rng.randint(0, 254),
            s=rng.randint(32, 4096),
            p=rng.randint(1000, 1010),
            w=rng.choice(_WORDS),
        )
        parts.append(line)
        length += len(line)
    return "".join(parts).encode()[:size]


def compressible_chunks(total: int, chunk: int = MiB, seed: int = 0) -> Iterator[bytes]:
    """`total` bytes of compressible text in `chunk`-sized pieces; every page is distinct."""
    base = bytearray(text_bytes(chunk, seed))
    for n in range(total // chunk):
        buf = bytearray(base)
        for off in range(0, chunk, PAGE):
            buf[off : off + 24] = f"<chunk {n:08d} page {off // PAGE:05d}>".encode()[:24]
        yield bytes(buf)


# -- the zram files of a mount -------------------------------------------------------------------


class MmStat(NamedTuple):
    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int


class IoStat(NamedTuple):
    failed_reads: int
    failed_writes: int
    invalid_io: int
    notify_free: int


def ctl_write(path: os.PathLike[str] | str, data: bytes | str) -> int:
    """Open `path` write-only and write `data` in one write(2): 0, or the errno it failed with."""
    if isinstance(data, str):
        data = data.encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return exc.errno or -1
    try:
        n = os.write(fd, data)
        assert n == len(data), f"short write {n} of {len(data)} to {path}"
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(fd)
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def punch_hole(path: os.PathLike[str] | str, ranges: Sequence[tuple[int, int]]) -> None:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) each (offset, length), as the loop driver's discard."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, length in ranges:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if _libc.fallocate(fd, mode, offset, length) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"punch hole {offset}+{length}: {os.strerror(err)}")
    finally:
        os.close(fd)


def ctl_read(path: os.PathLike[str] | str) -> str:
    with open(path) as f:
        return f.read()


def errname(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "OK"


class ZramMount:
    """A live `zramfs mount` and convenient access to its files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"ZramMount({self.path})"

    def dev(self, n: int = 0) -> Path:
        return self.path / f"zram{n}"

    def image(self, n: int = 0) -> Path:
        return self.dev(n) / "image"

    def read(self, name: str, n: int = 0) -> str:
        return ctl_read(self.dev(n) / name)

    def write(self, name: str, data: bytes | str, n: int = 0) -> int:
        """Write a control file; 0 or the errno."""
        return ctl_write(self.dev(n) / name, data)

    def set(self, name: str, data: bytes | str, n: int = 0) -> None:
        """Write a control file that must accept the value."""
        err = self.write(name, data, n)
        assert err == 0, f"writing {data!r} to zram{n}/{name} failed with {errname(err)}"

    def mm_stat(self, n: int = 0) -> MmStat:
        return MmStat(*(int(x) for x in self.read("mm_stat", n).split()))

    def io_stat(self, n: int = 0) -> IoStat:
        return IoStat(*(int(x) for x in self.read("io_stat", n).split()))

    def disksize(self, n: int = 0) -> int:
        return int(self.read("disksize", n))

    def pid(self) -> int:
        name = str(self.path).strip("/").replace("/", "-")
        return int(Path(f"/run/zramfs/{name}.pid").read_text())

    def pwrite(self, data: bytes, offset: int, n: int = 0) -> None:
        fd = os.open(self.image(n), os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
        finally:
            os.close(fd)

    def pread(self, length: int, offset: int, n: int = 0) -> bytes:
        fd = os.open(self.image(n), os.O_RDONLY)
        try:
            out = bytearray()
            while len(out) < length:
                part = os.pread(fd, length - len(out), offset + len(out))
                if not part:
                    break
                out += part
            return bytes(out)
        finally:
            os.close(fd)


# -- the registry of what a test created ----------------------------------------------------------


class Resources:
    """What one test created, released in teardown in dependency order."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.swaps: list[str] = []
        self.mounts: list[str] = []
        self.loops: list[str] = []
        self.zramfs_mounts: list[Path] = []
        self._loop_images: dict[str, str] = {}  # loop device -> the backing file we gave it
        self._serial = 0

    # creating ----------------------------------------------------------------------------

    def mount_zramfs(
        self,
        size: str | None = "256M",
        algo: str | None = "lz4",
        mem_limit: str | None = None,
        devices: int | None = None,
    ) -> ZramMount:
        self._serial += 1
        mnt = self.tmp_path / f"zramfs{self._serial}"
        argv: list[str] = ["mount", str(mnt)]
        if size is not None:
            argv += ["-s", size]
        if algo is not None:
            argv += ["-a", algo]
        if mem_limit is not None:
            argv += ["--mem-limit", mem_limit]
        if devices is not None:
            argv += ["-n", str(devices)]
        self.zramfs_mounts.append(mnt)  # before the command: a half-done mount is cleaned too
        zramfs_cmd(*argv)
        assert is_zramfs_mount(mnt), f"`zramfs mount` returned but {mnt} is not mounted"
        return ZramMount(mnt)

    def loop(self, image: os.PathLike[str] | str, direct_io: bool = True) -> str:
        args = ["losetup", "-f", "--show"]
        if direct_io:
            args.append("--direct-io=on")
        dev = run(*args, os.fspath(image)).stdout.strip()
        assert dev.startswith("/dev/loop"), dev
        self.loops.append(dev)
        self._loop_images[dev] = loop_backing(dev) or os.path.realpath(image)
        return dev

    def owns_loop(self, dev: str) -> bool:
        """True while `dev` is still the loop device we attached (not a reused number)."""
        backing = loop_backing(dev)
        if backing is None:
            return False
        if dev in self._loop_images:
            return backing == self._loop_images[dev]
        return any(backing.startswith(f"{m}/") for m in self.zramfs_mounts)

    def mount(self, source: str, target: os.PathLike[str] | str, *options: str) -> Path:
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        opts = ["-o", ",".join(options)] if options else []
        run("mount", *opts, source, target)
        self.mounts.append(str(target))
        return target

    def swapon(self, dev: str, *options: str) -> None:
        self.swaps.append(dev)
        run("swapon", *options, dev)

    # releasing (by the test, and by teardown) -----------------------------------------------

    def swapoff(self, dev: str) -> None:
        run("swapoff", dev)
        self.swaps.remove(dev)

    def umount(self, target: os.PathLike[str] | str) -> None:
        target = str(target)
        for attempt in range(20):
            res = run("umount", target, check=False)
            if res.returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            pytest.fail(f"umount {target}: {res.stderr.strip()}")
        self.mounts.remove(target)

    def detach(self, dev: str) -> None:
        run("losetup", "-d", dev)
        self.loops.remove(dev)

    def cleanup(self) -> list[str]:
        """Release everything still held; returns what went wrong (teardown reports it)."""
        problems: list[str] = []
        for dev in reversed(self.swaps):
            if dev in active_swaps() and (not dev.startswith("/dev/loop") or self.owns_loop(dev)):
                res = run("swapoff", dev, check=False)
                if res.returncode:
                    problems.append(f"swapoff {dev}: {res.stderr.strip()}")
        self.swaps.clear()
        for target in reversed(self.mounts):
            if is_mounted(target):
                res = run("umount", target, check=False)
                if res.returncode:
                    problems.append(f"umount {target}: {res.stderr.strip()}; lazy umount")
                    run("umount", "-l", target, check=False)
        self.mounts.clear()
        for dev in reversed(self.loops):
            if self.owns_loop(dev):  # a number freed earlier may be someone else's by now
                res = run("losetup", "-d", dev, check=False)
                if res.returncode:
                    problems.append(f"losetup -d {dev}: {res.stderr.strip()}")
        self.loops.clear()
        # Anything else a test attached to one of its images (e.g. from a shell command).
        for mnt in self.zramfs_mounts:
            problems += _release_strays(mnt)
        for mnt in reversed(self.zramfs_mounts):
            problems += _stop_zramfs(mnt)
        return problems

    def daemon_logs(self) -> list[Path]:
        """The daemon logs of this test's mounts (`zramfs mount` keeps them in /run/zramfs)."""
        names = (str(mnt).strip("/").replace("/", "-") + ".log" for mnt in self.zramfs_mounts)
        return [p for p in (Path("/run/zramfs") / n for n in names) if p.exists()]


def _release_strays(mnt: Path) -> list[str]:
    from zramfs.holders import holders_under  # stdlib only; safe without the core

    problems = []
    for h in holders_under(str(mnt)):
        problems.append(f"stray holder of {h.image}: {h.describe()}")
        if h.swap:
            run("swapoff", h.loop, check=False)
        for m in h.mounts:
            if run("umount", m, check=False).returncode:
                run("umount", "-l", m, check=False)
        run("losetup", "-d", h.loop, check=False)
    return problems


def _stop_zramfs(mnt: Path) -> list[str]:
    if not is_zramfs_mount(mnt):
        return []
    res = zramfs_cmd("umount", str(mnt), check=False)
    if res.returncode == 0 and not is_zramfs_mount(mnt):
        return []
    problems = [f"zramfs umount {mnt} failed ({res.returncode}): {res.stderr.strip()}"]
    res = zramfs_cmd("umount", "--force", str(mnt), check=False)
    if res.returncode or is_zramfs_mount(mnt):
        problems.append(f"zramfs umount --force {mnt} failed: {res.stderr.strip()}")
    return problems


@pytest.fixture
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Resources]:
    res = Resources(tmp_path)
    try:
        yield res
    finally:
        problems = res.cleanup()
        call = getattr(request.node, "rep_call", None)
        passed = call is not None and (call.passed or hasattr(call, "wasxfail"))
        for log in res.daemon_logs():
            if passed and not problems:
                log.unlink()  # nothing to look at: do not pile up files in /run (tmpfs)
            else:
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print(f"--- {log} (last lines) ---", *tail, sep="\n")
        if problems:
            pytest.fail("teardown had to clean up:\n  " + "\n  ".join(problems), pytrace=False)


class ZramfsFactory(Protocol):
    def __call__(
        self,
        size: str | None = "256M",
        algo: str | None = "lz4",
        mem_limit: str | None = None,
        devices: int | None = None,
    ) -> ZramMount: ...


@pytest.fixture
def zramfs(registry: Resources) -> ZramfsFactory:
    """`zramfs(size="256M", algo="lz4", mem_limit=None, devices=None)` mounts a fresh instance.

    size=None omits -s (the default disksize); size="0" leaves the devices uninitialised.
    """
    return registry.mount_zramfs


class LoopFactory(Protocol):
    def __call__(self, image: os.PathLike[str] | str, direct_io: bool = True) -> str: ...


@pytest.fixture
def loop(registry: Resources) -> LoopFactory:
    """`loop(image, direct_io=True)` attaches a loop device (detached in teardown)."""
    return registry.loop


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every regular file under `root`, by relative path."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def assert_errno(got: int, expected: int, what: str) -> None:
    assert got == expected, f"{what}: got {errname(got)}, expected {errname(expected)}"


def mm_delta(before: MmStat, after: MmStat) -> MmStat:
    return MmStat(*(a - b for a, b in zip(after, before, strict=True)))
