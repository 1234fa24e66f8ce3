"""The daemon process: harden it for swap, mount, serve until told to stop, unmount.

A swap device served from user space must not need memory to give memory
back: under pressure the kernel swaps out to this daemon, and a daemon that
must first fault its own pages back in, or whose allocations recurse into
reclaim, can deadlock the machine (nbdkit --swap locks its memory for the
same reason; prctl(2) names FUSE daemons as PR_SET_IO_FLUSHER's users).  So
before it serves the daemon locks its memory
(mlockall with MCL_ONFAULT: pages are pinned as they are touched, so the
pool's accounting stays honest) and marks itself an I/O flusher
(PR_SET_IO_FLUSHER), which keeps its own allocations from recursing into
reclaim; and it sets its oom_score_adj to -1000, since the OOM killer taking
it would lose every page swapped to it.  SIGTERM, SIGINT, SIGHUP and SIGQUIT
unmount cleanly unless an image is in use, in which case the daemon says what
holds it and keeps serving: stopping would turn every I/O of the holder into
an error.  Every other signal whose default action would end the process
(USR1, USR2, ALRM, the profiling and power signals, SYS, TRAP, ABRT, the
real-time signals) is answered with a log line and otherwise ignored; SIGPIPE
and SIGXFSZ are already ignored by Python.  Only SIGKILL and the faults (SEGV,
BUS, ILL, FPE) can end the daemon at once.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from . import fusepatch, zsmalloc
from .backing import FileBacking, open_backing
from .device import DeviceTable
from .dictionary import zramfs_devices
from .holders import holders_under

log = logging.getLogger(__name__)

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
PR_SET_IO_FLUSHER = 57
RUN_DIR = "/run/zramfs"
RELEASE_GRACE_S = 2.0
OOM_SCORE_ADJ_MIN = -1000

# Signals that ask the daemon to stop: unmount if no image is in use, else keep serving.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Signals whose default action would kill the daemon, but which nobody sends to stop it
# (a stray kill -USR1, a timer): logged and ignored, never fatal to a device in use.
IGNORED_SIGNALS: tuple[int, ...] = (
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPOLL,
    signal.SIGPWR,
    signal.SIGSTKFLT,
    signal.SIGXCPU,
    # These three end the process with a core dump by default, and kill(1) sends them as
    # easily as USR1. Ignoring a sent one is safe: abort() re-raises SIGABRT with the default
    # action after a handler returns, so a real abort still ends the daemon.
    signal.SIGSYS,
    signal.SIGTRAP,
    signal.SIGABRT,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)


def signal_name(signum: int) -> str:
    """SIGUSR1, ..., or SIGRTMIN+n for a real-time signal (which has no Signals member)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


@dataclass(frozen=True)
class MountConfig:
    """What `zramfs mount` asks for."""

    devices: int = 1
    disksize: int = 0
    algorithm: str = "lz4"
    mem_limit: int = 0
    allow_other: bool = False
    lock_memory: bool = True


def pidfile_path(mountpoint: str) -> str:
    """/run/zramfs/<mount point with / as ->.pid, where the CLI finds the daemon."""
    name = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
    return os.path.join(RUN_DIR, f"{name}.pid")


def protect_from_oom_killer() -> None:
    """oom_score_adj -1000: the OOM killer never picks the daemon, whoever started it.

    Killing it would lose every page swapped to it (and every process swapped out would
    then fault), so it must be the last thing to go, as the kernel's own zram is.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(f"{OOM_SCORE_ADJ_MIN}\n")
    except OSError as exc:
        log.warning("cannot set oom_score_adj to %d: %s", OOM_SCORE_ADJ_MIN, exc)


def under_systemd() -> bool:
    """True when systemd started us: the journal takes stderr, no log file in /run."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def harden() -> None:
    """Lock memory and become an I/O flusher; warn (not fail) where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        log.warning("mlockall failed: %s", os.strerror(ctypes.get_errno()))
        zsmalloc.set_memory_locked(False)
    else:
        zsmalloc.set_memory_locked(True)  # zspage releases munlock before MADV_DONTNEED
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        log.warning("PR_SET_IO_FLUSHER failed: %s", os.strerror(ctypes.get_errno()))


def _open_backing(path: str) -> FileBacking:
    """backing_dev for writes made in-process before the mount (config): refuses files on
    zramfs mounts, as the mounted control file does."""
    return open_backing(path, zramfs_devices())


def build_table(config: MountConfig) -> DeviceTable:
    table = DeviceTable(open_backing=_open_backing)
    for _ in range(config.devices):
        device = table.hot_add()
        device.configure(config.disksize, config.algorithm, config.mem_limit)
    return table


# The C extensions built in place next to their sources (``make venv``, pip install -e).
C_EXTENSIONS = ("_fallocate", "_pagecodec")


def stale_extensions(package_dir: str | None = None) -> list[str]:
    """The C extensions of a checkout whose source changed after they were built (a
    ``git pull`` without ``make venv``). Such a build can load and still fail every request:
    an older _pagecodec takes other arguments, and each write would answer EIO. An installed
    package ships no sources and is never stale here."""
    here = package_dir or os.path.dirname(os.path.abspath(__file__))
    stale = []
    for name in C_EXTENSIONS:
        try:
            source = os.stat(os.path.join(here, name + ".c")).st_mtime
        except FileNotFoundError:
            continue
        built = [
            os.stat(os.path.join(here, f)).st_mtime
            for f in os.listdir(here)
            if f.startswith(name + ".") and f.endswith(".so")
        ]
        if built and max(built) < source:
            stale.append(name)
    return stale


def serve(mountpoint: str, config: MountConfig, ready: Callable[[], None]) -> None:
    """Mount at `mountpoint` and serve until unmounted or stopped by a signal.

    `ready` is called once the mount is live.  Raises on set-up failure, before
    `ready`, so the caller can report it.
    """
    stale = stale_extensions()
    if stale:
        raise RuntimeError(
            f"zramfs/{', '.join(n + '.c' for n in stale)} changed after it was built: "
            "rebuild with `make venv` (or pip install -e .)"
        )
    fusepatch.install()  # must precede the first import of pyfuse3
    import pyfuse3
    import trio

    from .fs import ZramOperations, open_images

    fusepatch.check_pyfuse3()  # refuse to mount if pyfuse3 is not what the patches expect

    table = build_table(config)  # validates size/algorithm before anything is mounted
    protect_from_oom_killer()  # also without lock_memory: losing the daemon loses the data
    if config.lock_memory:
        harden()
    ops = ZramOperations(table)
    fusepatch.set_fallocate_handler(ops.fallocate)
    options = {"fsname=zramfs", "subtype=zramfs", "default_permissions"}
    if config.allow_other:
        options.add("allow_other")
    pyfuse3.init(ops, mountpoint, options)
    fusepatch.install_fastloop()  # a cheaper request hand-off in pyfuse3's loop
    try:
        fusepatch.check_session()
    except fusepatch.FusePatchError:
        pyfuse3.close(unmount=True)
        raise
    pidfile = pidfile_path(mountpoint)
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")

    async def watch_signals() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS, *IGNORED_SIGNALS) as signals:
            async for signum in signals:
                if signum in IGNORED_SIGNALS:
                    log.warning(
                        "%s ignored: zramfs stops only on TERM, INT, HUP or QUIT",
                        signal_name(signum),
                    )
                    continue
                # The kernel sends RELEASE asynchronously after the last close (and
                # after losetup -d), so an image closed just before the signal may
                # still count as open here: give those releases a moment to arrive.
                with trio.move_on_after(RELEASE_GRACE_S):
                    while open_images(table):
                        await trio.sleep(0.02)
                busy = open_images(table)
                if not busy:
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return
                held = ", ".join(h.describe() for h in holders_under(mountpoint))
                names = ", ".join(f"{d.name} (opened {d.open_count}x)" for d in busy)
                log.warning(
                    "%s ignored: images in use: %s%s; still serving",
                    signal.Signals(signum).name,
                    names,
                    f"; held by {held}" if held else "",
                )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            nursery.start_soon(ops.tier.run)  # backing store, auto writeback, policy, compaction
            nursery.start_soon(ops.run_discards)
            ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    unmounted = False
    try:
        trio.run(main)
    except BaseException:
        log.exception("main loop failed")
        raise
    finally:
        try:
            pyfuse3.close(unmount=True)
            unmounted = True
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                log.warning("unmount: %s", exc)
        for device in table:
            device.reset()
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
        log.info("stopped%s", "" if unmounted else " (mount already gone)")
