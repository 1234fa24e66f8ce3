"""The `zramfs` command: mount, umount and status, with zramctl's flag letters.

`mount` checks its arguments, starts the daemon in a new session and returns
once the mount is live (or prints why it failed); `--foreground` serves in
this process instead.  `umount` refuses, naming them, while loop devices,
mounts or swaps use an image, and `--force` aborts the FUSE connection and
detaches them.  `status` prints zramctl's table read from the mounted files,
so it shows what any user of the mount would see.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from .codecs import ALGORITHMS
from .daemon import RUN_DIR, MountConfig, pidfile_path
from .holders import Holder, holders_under, openers_under, zramfs_mounts
from .report import COLUMNS, EXTRA_COLUMNS, StatusRow, render_json, render_table
from .sizes import parse_size

PAGE_SIZE = 4096
DEFAULT_MAX_SIZE = 4 << 30
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


class CliError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def default_disksize() -> int:
    """zram-generator's default: half the RAM, at most 4 GiB."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(ram // 2, DEFAULT_MAX_SIZE) // PAGE_SIZE * PAGE_SIZE


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_mounted(mountpoint: str) -> bool:
    return os.path.abspath(mountpoint) in zramfs_mounts()


def _enclosing_zramfs(mountpoint: str) -> str | None:
    """The zramfs mount point that ``mountpoint`` lies strictly inside, if any."""
    for base in (os.path.abspath(mountpoint), os.path.realpath(mountpoint)):
        for mount in zramfs_mounts():
            if base.startswith(mount.rstrip("/") + "/"):
                return mount
    return None


def _read_pid(mountpoint: str) -> int | None:
    try:
        with open(pidfile_path(mountpoint)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _log_path(mountpoint: str) -> str:
    return pidfile_path(mountpoint).removesuffix(".pid") + ".log"


# -- mount ----------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if os.geteuid() != 0:
        raise CliError("zramfs mount needs root (loop devices, mlockall, /dev/fuse)")
    if _is_mounted(mountpoint):
        raise CliError(f"{mountpoint}: zramfs is already mounted there")
    inside = _enclosing_zramfs(mountpoint)
    if inside is not None:
        # A mount over one of its device directories would hide that device's image and
        # control files from everyone (status included) while the daemon keeps serving it.
        raise CliError(
            f"{mountpoint}: inside the zramfs mounted at {inside}; choose a directory outside it"
        )
    if args.devices < 1 or args.devices > 255:
        raise CliError("--devices must be between 1 and 255")
    os.makedirs(mountpoint, exist_ok=True)
    config = MountConfig(
        devices=args.devices,
        disksize=default_disksize() if args.size is None else args.size,
        algorithm=args.algorithm,
        mem_limit=args.mem_limit,
        allow_other=args.allow_other,
    )
    if args.foreground or args.ready_fd is not None:
        return _serve_here(mountpoint, config, args)
    return _spawn_daemon(mountpoint, args)


def _serve_here(mountpoint: str, config: MountConfig, args: argparse.Namespace) -> int:
    from .daemon import serve

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )

    def ready() -> None:
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ok\n")
            os.close(args.ready_fd)
        else:
            print(f"zramfs mounted at {mountpoint} (pid {os.getpid()})", file=sys.stderr)

    serve(mountpoint, config, ready)
    return 0


def _spawn_daemon(mountpoint: str, args: argparse.Namespace) -> int:
    """Start `zramfs mount --ready-fd` in its own session and wait for its word."""
    os.makedirs(RUN_DIR, exist_ok=True)
    log_path = _log_path(mountpoint)
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "zramfs", "mount", mountpoint, "--ready-fd", str(write_end)]
    argv += ["--devices", str(args.devices), "--algorithm", args.algorithm]
    argv += ["--mem-limit", str(args.mem_limit)]
    if args.size is not None:
        argv += ["--size", str(args.size)]
    if args.debug:
        argv.append("--debug")
    if args.allow_other:
        argv.append("--allow-other")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_end,),
            start_new_session=True,
            cwd="/",
        )
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
    answer = os.read(read_end, 64) if ready else b""
    os.close(read_end)
    if answer.startswith(b"ok"):
        print(f"zramfs mounted at {mountpoint} (pid {proc.pid}, log {log_path})")
        return 0
    if proc.poll() is None:
        proc.terminate()
    tail = _tail(log_path)
    raise CliError(f"mount failed{' (timed out)' if not ready else ''}; daemon log:\n{tail}")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


# -- umount ---------------------------------------------------------------------------------


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not _is_mounted(mountpoint):
        raise CliError(f"{mountpoint}: no zramfs mounted there")
    held = holders_under(mountpoint)
    if args.force:
        return _force_umount(mountpoint, held)
    openers = openers_under(mountpoint)
    if held or openers:
        lines = "\n".join(
            [f"  {os.path.basename(os.path.dirname(h.image))}: {h.describe()}" for h in held]
            + [f"  open by process {p}" for p in openers]
        )
        raise CliError(
            f"{mountpoint} is in use, nothing stopped:\n{lines}\n"
            "release them (swapoff, umount, losetup -d, close the files) or use --force"
        )
    pid = _read_pid(mountpoint)
    if pid is None:
        subprocess.run(["umount", mountpoint], check=True)
    else:
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(mountpoint, pid, STOP_TIMEOUT_S):
        raise CliError(f"{mountpoint}: daemon did not stop; see {_log_path(mountpoint)}")
    print(f"zramfs unmounted from {mountpoint}")
    return 0


def _running(pid: int) -> bool:
    """True while `pid` runs.  A zombie counts as gone: the daemon was re-parented to init at
    start, and an init that reaps slowly (seen: ~1.5 s in a VM) kept umount waiting."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(mountpoint: str, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # fix (tests/test_mount_*): was os.path.exists(f"/proc/{pid}"), true for a zombie
        alive = pid is not None and _running(pid)
        if not _is_mounted(mountpoint) and not alive:
            return True
        time.sleep(0.05)
    return False


FUSECTL = "/sys/fs/fuse/connections"


def _fuse_connection(mountpoint: str) -> str | None:
    """/sys/fs/fuse/connections/N for the mount (N is the minor of its st_dev)."""
    if os.path.isdir(FUSECTL) and not os.path.ismount(FUSECTL):
        # The control filesystem is not always mounted (it is here); abort needs it.
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], check=False)
    for line in open("/proc/self/mountinfo"):
        parts = line.split()
        if parts[4] == mountpoint and " - fuse.zramfs " in line:
            minor = parts[2].split(":")[1]
            return f"{FUSECTL}/{minor}"
    return None


def _force_umount(mountpoint: str, held: Sequence[Holder]) -> int:
    """Abort the FUSE connection so nothing waits on it, then take everything down."""
    conn = _fuse_connection(mountpoint)
    if conn and os.path.exists(conn):
        with open(os.path.join(conn, "abort"), "w") as f:
            f.write("1")
    for h in held:
        for m in h.mounts:
            subprocess.run(["umount", "-l", m], check=False)
        if h.swap:
            subprocess.run(["swapoff", h.loop], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", h.loop], check=False)
        print(f"detached {h.describe()}")
    pid = _read_pid(mountpoint)
    subprocess.run(["umount", "-l", mountpoint], check=False)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(mountpoint, pid, 5.0):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(mountpoint, None, 5.0)
    try:
        os.unlink(pidfile_path(mountpoint))
    except FileNotFoundError:
        pass
    print(f"zramfs forcibly unmounted from {mountpoint}")
    return 0


# -- status ---------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def status_rows(mountpoint: str) -> list[StatusRow]:
    """One row per device of a mount, read through the mount's own files."""
    held = {os.path.basename(os.path.dirname(h.image)): h for h in holders_under(mountpoint)}
    rows = []
    names = [n for n in os.listdir(mountpoint) if n.startswith("zram") and n[4:].isdigit()]
    for name in sorted(names, key=lambda n: int(n[4:])):
        d = os.path.join(mountpoint, name)
        mm = [int(x) for x in _read_text(os.path.join(d, "mm_stat")).split()]
        algo = _read_text(os.path.join(d, "comp_algorithm"))
        selected = algo[algo.index("[") + 1 : algo.index("]")] if "[" in algo else "-"
        h = held.get(name)
        rows.append(
            StatusRow(
                name=d,
                algorithm=selected,
                disksize=int(_read_text(os.path.join(d, "disksize"))),
                data=mm[0],
                compr=mm[1],
                total=mm[2],
                mem_limit=mm[3],
                mem_used=mm[4],
                zero_pages=mm[5],
                migrated=mm[6],
                mountpoint=h.where() if h else "",
            )
        )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    if args.mountpoint:
        mountpoint = os.path.abspath(args.mountpoint)
        if not _is_mounted(mountpoint):
            raise CliError(f"{mountpoint}: no zramfs mounted there")
        mounts = [mountpoint]
    else:
        mounts = zramfs_mounts()
    columns = list(COLUMNS)
    if args.output:
        columns = [c.strip().upper() for c in args.output.split(",") if c.strip()]
        unknown = [c for c in columns if c not in COLUMNS + EXTRA_COLUMNS]
        if unknown or not columns:
            raise CliError(
                f"unknown column(s) {', '.join(unknown) or '(none)'}; "
                f"known: {','.join(COLUMNS + EXTRA_COLUMNS)}"
            )
    rows = [row for m in mounts for row in status_rows(m)]
    if args.json:
        sys.stdout.write(render_json(rows, columns, args.bytes))
    elif rows:
        sys.stdout.write(render_table(rows, columns, args.bytes))
    return 0


# -- argument parsing -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zramfs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount zram devices as image files")
    m.add_argument("mountpoint")
    m.add_argument("-n", "--devices", type=int, default=1, help="number of devices (default 1)")
    m.add_argument("-s", "--size", type=_size, default=None,
                   help="disksize of each device, e.g. 512M, 4G (default min(RAM/2, 4G); "
                        "0 leaves devices uninitialised)")
    m.add_argument("-a", "--algorithm", choices=ALGORITHMS, default="lz4",
                   help="compression algorithm (default lz4)")
    m.add_argument("--mem-limit", type=_size, default=0, help="memory limit per device (0: none)")
    m.add_argument("--allow-other", action="store_true", help="let other users reach the mount")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--debug", action="store_true", help="debug logging")
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="stop a mount (refuses while its images are in use)")
    u.add_argument("mountpoint")
    u.add_argument("--force", action="store_true",
                   help="abort the FUSE connection and detach loop devices using it")
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="zramctl-style table of the devices")
    s.add_argument("mountpoint", nargs="?")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("-o", "--output", help="columns, comma-separated")
    s.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"zramfs: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"zramfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

