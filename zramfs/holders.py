"""Who is using an image: loop devices backed by it, and where those are mounted or swapped.

Read from /sys/block/loop*/loop/backing_file, /proc/mounts and /proc/swaps,
and /proc/PID/fd, so that `zramfs umount` can refuse with a precise answer, `zramfs status`
can fill zramctl's MOUNTPOINT column and the daemon can say what holds it
when asked to stop.  Read-only: nothing here changes the system.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    """A loop device whose backing file is an image, and what uses the loop device."""

    image: str
    loop: str
    mounts: tuple[str, ...]
    swap: bool

    def describe(self) -> str:
        uses = list(self.mounts) + (["[SWAP]"] if self.swap else [])
        return f"{self.loop} ({', '.join(uses)})" if uses else self.loop

    def where(self) -> str:
        """zramctl's MOUNTPOINT column: the loop device and where it is mounted, or [SWAP]."""
        uses = list(self.mounts) + (["[SWAP]"] if self.swap else [])
        return " ".join([self.loop, *uses])


def _unescape(field: str) -> str:
    """/proc/mounts escapes spaces and friends as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def loop_backing_files() -> dict[str, str]:
    """/dev/loopN -> its backing file, for every attached loop device."""
    loops = {}
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        name = path.split("/")[3]
        backing = _read(path).rstrip("\n")
        if backing:
            loops[f"/dev/{name}"] = backing.removesuffix(" (deleted)")
    return loops


def mounts_by_source() -> dict[str, list[str]]:
    """Mount source (e.g. /dev/loop0) -> its mount points."""
    found: dict[str, list[str]] = {}
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found.setdefault(_unescape(parts[0]), []).append(_unescape(parts[1]))
    return found


def active_swaps() -> set[str]:
    return {line.split()[0] for line in _read("/proc/swaps").splitlines()[1:] if line.strip()}


def holders_under(mountpoint: str) -> list[Holder]:
    """Loop devices backed by any file below `mountpoint` (found without touching it)."""
    prefix = os.path.abspath(mountpoint).rstrip("/") + "/"
    mounts = mounts_by_source()
    swaps = active_swaps()
    return [
        Holder(backing, loop, tuple(mounts.get(loop, [])), loop in swaps)
        for loop, backing in sorted(loop_backing_files().items())
        if backing.startswith(prefix)
    ]


def openers_under(mountpoint: str) -> list[str]:
    """Processes holding a file below `mountpoint` open, as "PID (COMM)", like fuser(1).

    The loop driver holds its backing file from the kernel, with no process: those
    show up in holders_under() instead.
    """
    prefix = os.path.abspath(mountpoint).rstrip("/") + "/"
    found = []
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        pid = fd_dir.split("/")[2]
        if pid == str(os.getpid()):
            continue
        try:
            targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:  # the process went away, or is not ours to read
            continue
        if any(t.startswith(prefix) for t in targets):
            found.append(f"{pid} ({_read(f'/proc/{pid}/comm').strip()})")
    return found


def zramfs_mounts() -> list[str]:
    """Mount points of every zramfs instance, from /proc/mounts."""
    out = []
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "fuse.zramfs":
            out.append(_unescape(parts[1]))
    return out
