"""Commands, sizes, memory readings and loop devices, with releases that never raise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

# One reading and rendering of sizes for the whole repository: --size 256M reads as
# `zramfs mount -s 256M` would, and labels print as zramctl (and `zramfs status`) do.
from zramfs.sizes import format_size as format_size
from zramfs.sizes import parse_size as parse_size

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40



class CommandError(RuntimeError):
    """A command exited non-zero (or timed out); the message carries its output's tail."""


class Unavailable(RuntimeError):
    """A contender cannot run on this machine (missing tool, no free device, failed mount)."""


def log(message: str) -> None:
    """Progress lines go to stderr so that stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


def _tail(text: str | bytes | None, lines: int = 12) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: Sequence[str],
    *,
    timeout: float | None = 600,
    cwd: str | Path | None = None,
    input_text: str | None = None,
) -> str:
    """Run ``cmd``, return its stdout; raise CommandError with the output's tail on failure."""
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd,
            input=input_text, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"{' '.join(cmd)}: timed out after {timeout} s\n{_tail(exc.stderr)}"
        ) from None
    except FileNotFoundError:
        raise CommandError(f"{cmd[0]}: command not found") from None
    if proc.returncode != 0:
        out = _tail(proc.stderr) or _tail(proc.stdout)
        raise CommandError(f"{' '.join(cmd)}: exit status {proc.returncode}\n{out}".strip())
    return proc.stdout


def release(what: str, action: Callable[[], object], attempts: int = 20,
            delay: float = 0.25) -> None:
    """Best-effort release: retry ``action`` (EBUSY right after a close is common), warn last."""
    for attempt in range(attempts):
        try:
            action()
            return
        except (OSError, CommandError) as exc:
            if attempt == attempts - 1:
                log(f"  warning: could not {what}: {str(exc).strip()}")
            else:
                time.sleep(delay)


def write_file(path: str | Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read_file(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


# -- memory readings ------------------------------------------------------------------------


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: page cache, dentries and inodes."""
    os.sync()
    write_file("/proc/sys/vm/drop_caches", "3\n")


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in read_file("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * KiB
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def vm_rss(pid: int) -> int | None:
    """VmRSS of a process in bytes, None if it is gone (or a kernel thread)."""
    try:
        for line in read_file(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    except OSError:
        return None
    return None


MM_STAT_FIELDS = (
    "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
    "same_pages", "pages_compacted", "huge_pages", "huge_pages_since",
)


def parse_mm_stat(text: str) -> dict[str, int]:
    """The kernel's 9-column mm_stat by position (older kernels print fewer columns)."""
    return dict(zip(MM_STAT_FIELDS, (int(x) for x in text.split()), strict=False))


# -- tools and packages -----------------------------------------------------------------------


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def ensure_tools(tools: dict[str, str]) -> str | None:
    """Install the Debian packages of missing tools ({tool: package}); None or why not."""
    missing = {t: p for t, p in tools.items() if not have(t)}
    if not missing:
        return None
    packages = sorted(set(missing.values()))
    if not have("apt-get"):
        return f"{', '.join(missing)} missing and no apt-get to install {' '.join(packages)}"
    log(f"installing {' '.join(packages)} with apt-get")
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    try:
        run(env_cmd + ["apt-get", "install", "-y", "-qq", *packages], timeout=900)
    except CommandError:
        try:
            run(["apt-get", "update", "-qq"], timeout=900)
            run(env_cmd + ["apt-get", "install", "-y", "-qq", *packages], timeout=900)
        except CommandError as exc:
            return f"apt-get install {' '.join(packages)} failed: {exc}"
    still = [t for t in missing if not have(t)]
    if still:
        return f"{', '.join(still)} still missing after apt-get install {' '.join(packages)}"
    return None


# -- block devices -----------------------------------------------------------------------------


def attach_loop(stack: ExitStack, image: str | Path) -> tuple[str, bool]:
    """``losetup --direct-io=on`` on ``image``; detach registered on ``stack``.

    Returns the device and whether direct I/O is really on (/sys/block/loopN/loop/dio).
    """
    dev = run(["losetup", "--find", "--show", "--direct-io=on", str(image)], timeout=60).strip()
    stack.callback(release, f"detach {dev}", lambda: run(["losetup", "-d", dev], timeout=60))
    try:
        dio = read_file(f"/sys/block/{os.path.basename(dev)}/loop/dio").strip() == "1"
    except OSError:
        dio = False
    return dev, dio


def mount(stack: ExitStack, source: str, target: str | Path, *options: str) -> None:
    """``mount [options] source target``; umount registered on ``stack``."""
    run(["mount", *options, source, str(target)], timeout=120)
    stack.callback(release, f"umount {target}", lambda: run(["umount", str(target)], timeout=300))


def make_dir(stack: ExitStack, prefix: str) -> Path:
    """A fresh directory under /tmp, removed (if empty) when ``stack`` closes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    stack.callback(release, f"remove {path}", path.rmdir, 3)
    return path


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             alive: Callable[[], bool] | None = None) -> None:
    """Poll ``predicate`` until true; Unavailable on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive is not None and not alive():
            raise Unavailable(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what}: timed out after {timeout:.0f} s")
        time.sleep(0.05)
