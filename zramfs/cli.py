"""The `zramfs` command: mount, umount, start, stop, status and top.

`mount` checks its arguments, starts the daemon in a new session and returns
once the mount is live (or prints why it failed); `--foreground` serves in
this process instead.  `umount` refuses, naming them, while loop devices,
mounts or swaps use an image, and `--force` aborts the FUSE connection and
detaches them.  `start` and `stop` bring a configuration (config.py) up and
down (service.py), telling systemd when it is ready (sdnotify.py).  `status`
prints zramctl's table, with its flags, read from the mounted files, so it
shows what any user of the mount would see; `top` is a live view of it.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from . import config as configuration
from . import sdnotify, service
from .codecs import ALGORITHMS
from .daemon import RUN_DIR, MountConfig, pidfile_path, under_systemd
from .holders import Holder, holders_under, openers_under, zramfs_mounts
from .report import (
    ALL_COLUMNS,
    COLUMNS,
    EXTRA_COLUMNS,
    StatusRow,
    render_json,
    render_table,
)
from .sizes import parse_size

PAGE_SIZE = 4096
DEFAULT_MAX_SIZE = 4 << 30
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
LOG_MAX_BYTES = 1 << 20  # the /run log (RAM) is rotated at this size, one old copy kept


class CliError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def default_disksize() -> int:
    """zram-generator's default: half the RAM, at most 4 GiB."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(ram // 2, DEFAULT_MAX_SIZE) // PAGE_SIZE * PAGE_SIZE


_DECIMAL_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGTPE])B\s*", re.IGNORECASE)
_BINARY_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGTPE])iB\s*", re.IGNORECASE)


def parse_cli_size(text: str) -> int:
    """A size as zramctl's --size takes it: 1G and 1GiB are 2**30, 1GB is 10**9.

    Plain numbers and the kernel's forms (0x1000, 64M) go through parse_size.
    """
    m = _BINARY_SIZE.fullmatch(text)
    if m:
        return parse_size(m.group(1) + m.group(2))
    m = _DECIMAL_SIZE.fullmatch(text)
    if m:
        exponent: int = "KMGTPE".index(m.group(2).upper()) + 1
        return int(m.group(1)) * int(1000**exponent)
    return parse_size(text)


def _size(text: str) -> int:
    try:
        return parse_cli_size(text)
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
    # A daemon killed with -9 is a zombie until init reaps it: gone all the same, and
    # signalling it would leave its dead mount in place (stop waited for it in vain).
    return pid if _running(pid) else None


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
    pid = spawn_daemon(mountpoint, _mount_argv(args))
    where = "the journal" if under_systemd() else _log_path(mountpoint)
    print(f"zramfs mounted at {mountpoint} (pid {pid}, log {where})")
    return 0


def _mount_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--devices", str(args.devices), "--algorithm", args.algorithm]
    argv += ["--mem-limit", str(args.mem_limit)]
    if args.size is not None:
        argv += ["--size", str(args.size)]
    if args.debug:
        argv.append("--debug")
    if args.allow_other:
        argv.append("--allow-other")
    return argv


def _setup_logging(args: argparse.Namespace) -> None:
    """stderr under systemd (the journal) or in the foreground; else the bounded /run log."""
    handler: logging.Handler
    if args.log_file:
        handler = logging.handlers.RotatingFileHandler(
            args.log_file, maxBytes=LOG_MAX_BYTES, backupCount=1)
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = "%(name)s %(levelname)s: %(message)s"
    if not under_systemd():  # the journal stamps every line itself
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        handlers=[handler], force=True)


def _serve_here(mountpoint: str, config: MountConfig, args: argparse.Namespace) -> int:
    from .daemon import serve

    _setup_logging(args)

    def ready() -> None:
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ok\n")
            os.close(args.ready_fd)
        else:
            print(f"zramfs mounted at {mountpoint} (pid {os.getpid()})", file=sys.stderr)

    serve(mountpoint, config, ready)
    return 0


def spawn_daemon(mountpoint: str, options: Sequence[str]) -> int:
    """Start `zramfs mount --ready-fd` in its own session, wait for its word; its pid.

    Under systemd the daemon keeps our stderr (the journal); otherwise it logs to the
    bounded /run/zramfs/<mount>.log, which also catches what it prints before logging.
    """
    os.makedirs(RUN_DIR, exist_ok=True)
    systemd = under_systemd()
    log_path = _log_path(mountpoint)
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "zramfs", "mount", mountpoint, "--ready-fd", str(write_end)]
    argv += list(options)
    if not systemd:
        argv += ["--log-file", log_path]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # start notifies
    with open(os.devnull if systemd else log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=None if systemd else log_file,
            stderr=None if systemd else log_file,
            pass_fds=(write_end,),
            start_new_session=True,
            cwd="/",
            env=env,
        )
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
    answer = os.read(read_end, 64) if ready else b""
    os.close(read_end)
    if answer.startswith(b"ok"):
        return proc.pid
    if proc.poll() is None:
        proc.terminate()
    tail = "(see the journal)" if systemd else _tail(log_path)
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
    stop_daemon(mountpoint)
    print(f"zramfs unmounted from {mountpoint}")
    return 0


def stop_daemon(mountpoint: str) -> None:
    """Ask the daemon to unmount (SIGTERM) and wait until it is gone."""
    pid = _read_pid(mountpoint)
    if pid is None:
        subprocess.run(["umount", mountpoint], check=True)
    else:
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(mountpoint, pid, STOP_TIMEOUT_S):
        raise CliError(f"{mountpoint}: daemon did not stop; see {_log_path(mountpoint)}")


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


# -- start / stop ---------------------------------------------------------------------------


def ram_mib() -> int:
    """MemTotal in MiB, zram-generator's `ram`."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise CliError("no MemTotal in /proc/meminfo")


def _load_config(path: str | None) -> configuration.Config:
    try:
        return configuration.load(path, ram_mib())
    except configuration.ConfigError as exc:
        raise CliError(f"{exc}\nnothing was started or changed") from None


def cmd_start(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CliError("zramfs start needs root (mount, loop devices, swapon)")
    cfg = _load_config(args.config)
    if not cfg.files:  # stop still works without a file (default mount): only start needs one
        path = configuration.DEFAULT_PATH
        raise CliError(f"{path}: no such file, and no {path}.d/*.conf: nothing to start "
                       "(README.md, From boot to swap, has a five-line example)")

    def mount_daemon(mountpoint: str, devices: int) -> int:
        return spawn_daemon(mountpoint, ["--devices", str(devices), "--size", "0"])

    try:
        pid, done = service.start(cfg, mount_daemon, stop_daemon, print)
    except service.StartError as exc:
        raise CliError(f"start failed: {exc}\nwhat this run had brought up was undone") from None
    if pid is None:
        pid = _read_pid(cfg.mount)
    for step in done:
        print(f"  {step}")
    summary = ", ".join(
        f"{d.name} {'swap' if d.is_swap else d.fs_type}"
        + (f" on {d.mount_point}" if d.mount_point else "")
        for d in cfg.devices
    )
    if done:
        print(f"zramfs started at {cfg.mount}: {summary}")
    else:
        print(f"zramfs at {cfg.mount} is already up: {summary}")
    message = f"READY=1\nSTATUS=zramfs up: {summary}"
    if pid is not None:
        message += f"\nMAINPID={pid}"  # systemd watches the daemon, not this process
    if sdnotify.notify(message):
        sdnotify.barrier()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CliError("zramfs stop needs root")
    cfg = _load_config(args.config)
    try:
        stopped = service.stop(cfg.mount, stop_daemon, lambda text: print(f"  {text}"))
    except service.StartError as exc:
        raise CliError(f"stop failed: {exc}") from None
    if stopped:
        print(f"zramfs stopped at {cfg.mount}")
    return 0


# -- status ---------------------------------------------------------------------------------


class Unreachable(OSError):
    """A mount or device directory that cannot be read: dead, or shadowed by another mount."""


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _fuse_dev(mountpoint: str) -> int | None:
    """st_dev of the zramfs mounted at `mountpoint` (the last one, if stacked)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if " - fuse.zramfs " in line and parts[4] == mountpoint.replace(" ", "\\040"):
                major, minor = parts[2].split(":")
                found = os.makedev(int(major), int(minor))
    return found


def _check_reachable(path: str, dev: int | None) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Unreachable(exc.errno, f"unreachable ({exc.strerror})") from None
    if dev is not None and st.st_dev != dev:
        raise Unreachable(0, "unreachable (shadowed by another mount)")


def _optional_text(path: str, default: str) -> str:
    try:
        return _read_text(path)
    except FileNotFoundError:
        return default


def status_rows(mountpoint: str, only: str | None = None,
                problems: list[str] | None = None) -> list[StatusRow]:
    """One row per device of a mount, read through the mount's own files.

    Raises Unreachable when the mount itself cannot be read; a device directory that
    cannot (a mount on top of it) is left out and noted in `problems`.
    """
    dev = _fuse_dev(mountpoint)
    _check_reachable(mountpoint, dev)
    held = {os.path.basename(os.path.dirname(h.image)): h for h in holders_under(mountpoint)}
    rows = []
    try:
        listing = os.listdir(mountpoint)
    except OSError as exc:
        raise Unreachable(exc.errno, f"unreachable ({exc.strerror})") from None
    names = [n for n in listing if n.startswith("zram") and n[4:].isdigit()]
    for name in sorted(names, key=lambda n: int(n[4:])):
        if only is not None and name != only:
            continue
        d = os.path.join(mountpoint, name)
        try:
            _check_reachable(d, dev)
            mm = [int(x) for x in _read_text(os.path.join(d, "mm_stat")).split()]
            algo = _read_text(os.path.join(d, "comp_algorithm"))
            disksize = int(_read_text(os.path.join(d, "disksize")))
            backing = _optional_text(os.path.join(d, "backing_dev"), "none").strip()
            bd = _optional_text(os.path.join(d, "bd_stat"), "0").split()
        except OSError as exc:
            if problems is not None:
                problems.append(f"{d}: {exc.strerror or exc}")
            continue
        selected = algo[algo.index("[") + 1 : algo.index("]")] if "[" in algo else "-"
        h = held.get(name)
        rows.append(
            StatusRow(
                name=d,
                algorithm=selected,
                disksize=disksize,
                data=mm[0],
                compr=mm[1],
                total=mm[2],
                mem_limit=mm[3],
                mem_used=mm[4],
                zero_pages=mm[5],
                migrated=mm[6],
                mountpoint=h.where() if h else "",
                backing_dev=backing or "none",
                written_back_pages=int(bd[0]) if bd else 0,
            )
        )
    return rows


def _targets(target: str | None) -> list[tuple[str, str | None]]:
    """(mount, device or None) pairs that `zramfs status TARGET` asks about."""
    mounts = zramfs_mounts()
    if target is None:
        return [(m, None) for m in mounts]
    if re.fullmatch(r"zram[0-9]+", target):
        return [(m, target) for m in mounts]
    path = os.path.abspath(target)
    if path in mounts:
        return [(path, None)]
    for m in sorted(mounts, key=len, reverse=True):
        if path.startswith(m.rstrip("/") + "/"):
            first = path[len(m.rstrip("/")) + 1 :].split("/")[0]
            if re.fullmatch(r"zram[0-9]+", first):
                return [(m, first)]
    raise CliError(f"{target}: not a zramfs mount, a device (zramN) or a path inside one")


def _columns(args: argparse.Namespace) -> list[str]:
    known = set(ALL_COLUMNS)
    columns = list(ALL_COLUMNS if args.output_all else COLUMNS)
    if args.output:
        spec = args.output
        if spec.startswith("+"):  # zramctl: -o +COL adds to the columns already chosen
            spec = spec[1:]
        else:
            columns = []
        added = [c.strip().upper() for c in spec.split(",") if c.strip()]
        unknown = [c for c in added if c not in known]
        if unknown or not added:
            raise CliError(
                f"unknown column(s) {', '.join(unknown) or '(none)'}; "
                f"known: {','.join(COLUMNS + EXTRA_COLUMNS)}"
            )
        columns += added
    return columns


def cmd_status(args: argparse.Namespace) -> int:
    columns = _columns(args)
    targets = _targets(args.target)
    rows: list[StatusRow] = []
    problems: list[str] = []
    for mount, only in targets:
        try:
            found = status_rows(mount, only, problems)
        except Unreachable as exc:
            problems.append(f"{mount}: {exc.strerror}")
            continue
        if only is not None and not found and args.target != only:
            problems.append(f"{mount}/{only}: no such device")
        rows += found
    if args.target and re.fullmatch(r"zram[0-9]+", args.target) and not rows and not problems:
        problems.append(f"{args.target}: no such device in any zramfs mount")
    for problem in problems:
        print(f"zramfs: {problem}", file=sys.stderr)
    if args.json:
        sys.stdout.write(render_json(rows, columns, args.bytes))
    elif rows:
        sys.stdout.write(render_table(rows, columns, args.bytes, raw=args.raw,
                                      headings=not args.noheadings))
    # Listing every mount, one dead mount is reported, not fatal; a named target is.
    return 1 if problems and args.target is not None and not rows else 0


def cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    mounts = [os.path.abspath(args.mountpoint)] if args.mountpoint else zramfs_mounts()
    if not mounts:
        raise CliError("no zramfs mounted")
    if args.mountpoint and not _is_mounted(mounts[0]):
        raise CliError(f"{mounts[0]}: no zramfs mounted there")
    return run_top(mounts, args.delay, args.iterations)


# -- argument parsing -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zramfs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount zram devices as image files")
    m.add_argument("mountpoint")
    m.add_argument("-n", "--devices", type=int, default=1, help="number of devices (default 1)")
    m.add_argument("-s", "--size", type=_size, default=None,
                   help="disksize of each device, e.g. 512M, 4G, 4GiB (default min(RAM/2, 4G); "
                        "0 leaves devices uninitialised)")
    m.add_argument("-a", "--algorithm", choices=ALGORITHMS, default="lz4",
                   help="compression algorithm (default lz4)")
    m.add_argument("--mem-limit", type=_size, default=0, help="memory limit per device (0: none)")
    m.add_argument("--allow-other", action="store_true", help="let other users reach the mount")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--debug", action="store_true", help="debug logging")
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    m.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="stop a mount (refuses while its images are in use)")
    u.add_argument("mountpoint")
    u.add_argument("--force", action="store_true",
                   help="abort the FUSE connection and detach loop devices using it")
    u.set_defaults(func=cmd_umount)

    config_help = (f"configuration file (default {configuration.DEFAULT_PATH}); "
                   "PATH.d/*.conf are read after it")
    st = sub.add_parser("start", help="bring up the configured swaps and filesystems")
    st.add_argument("--config", default=None, metavar="PATH", help=config_help)
    st.set_defaults(func=cmd_start)
    sp = sub.add_parser("stop", help="swapoff, umount, detach and unmount what start set up")
    sp.add_argument("--config", default=None, metavar="PATH", help=config_help)
    sp.set_defaults(func=cmd_stop)

    s = sub.add_parser("status", help="zramctl-style table of the devices")
    s.add_argument("target", nargs="?", metavar="MOUNT|DEVICE",
                   help="a zramfs mount point, a device name (zram0) or a device's path")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("-o", "--output", help="columns, comma-separated; +COL,... adds to the "
                                          "default ones")
    s.add_argument("--output-all", action="store_true", help="every column")
    s.add_argument("--raw", action="store_true", help="raw output: no alignment")
    s.add_argument("-n", "--noheadings", action="store_true", help="no header line")
    s.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")
    s.set_defaults(func=cmd_status)

    t = sub.add_parser("top", help="live per-device view (q or Ctrl-C quits)")
    t.add_argument("mountpoint", nargs="?")
    t.add_argument("-d", "--delay", type=float, default=1.0, help="seconds between refreshes")
    t.add_argument("-n", "--iterations", type=int, default=0,
                   help="stop after this many refreshes (0: until q)")
    t.set_defaults(func=cmd_top)
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

