"""`zramfs start` and `zramfs stop`: from a configuration to swap and filesystems, and back.

start: mount zramfs (enough devices, uninitialised) unless it is mounted, check that every
control file the configuration needs exists, then per device write its control files in the
kernel's order, attach the image to a loop device (direct I/O), and bring up swap (mkswap,
swapon --discard -p PRIO) or a filesystem (mkfs.TYPE, mount with the options).  Each step
first looks whether it is already done, so a second run changes nothing; what runs
otherwise than configured (the file was edited) is refused, not ignored, and a failure is
reported at the file and line of the value behind it.  Every step this run took is recorded
with its undo; on a failure half-way they are undone in reverse order, so a failed start
leaves the system as it found it.  stop: refuse, changing nothing, while a process uses one
of the filesystems; then swapoff and umount everything backed by the mount's images, detach
the loop devices, then unmount zramfs; if a swapoff fails (no memory to take the pages back)
it stops there, with the daemon still serving.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import Config, DeviceConfig, swap_flags
from .holders import Holder, active_swaps, holders_under, mounts_by_source, zramfs_mounts

PAGE_SIZE = 4096
# mkfs tools that take -q (quiet); others are run as they are.
QUIET_MKFS = {"ext2", "ext3", "ext4", "xfs", "btrfs"}


class StartError(Exception):
    """start or stop could not finish; the message says what and where."""


def run(argv: Sequence[str]) -> str:
    """Run a command; its stdout, or StartError with its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise StartError(f"{' '.join(argv)}: {detail}")
    return done.stdout


def read_control(path: str) -> str:
    with open(path) as f:
        return f.read()


def write_control(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        raise StartError(f"writing {value!r} to {path}: {exc.strerror or exc}") from None


def blkid_type(dev: str) -> str:
    """The signature on a block device ("swap", "ext4", ...) or "" for none."""
    done = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass
class Steps:
    """What this run did, each with its undo; undone in reverse order on failure."""

    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    def did(self, what: str, undo: Callable[[], object] | None = None) -> None:
        self.done.append(what)
        if undo is not None:
            self.undo.append((what, undo))

    def rollback(self) -> list[str]:
        problems = []
        for what, undo in reversed(self.undo):
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                problems.append(f"undoing {what}: {exc}")
        self.undo.clear()
        return problems


def device_dir(config: Config, d: DeviceConfig) -> str:
    return os.path.join(config.mount, d.name)


def check_tools(config: Config) -> None:
    needed = {"losetup", "blkid"}
    for d in config.devices:
        if d.is_swap:
            needed |= {"mkswap", "swapon", "swapoff"}
        else:
            needed |= {f"mkfs.{d.fs_type}"}
            if d.mount_point:
                needed |= {"mount", "umount"}
    for d in config.devices:
        tool = f"mkfs.{d.fs_type}"
        if not d.is_swap and shutil.which(tool) is None:
            raise StartError(f"{d.where('fs-type')}{d.name}: no {tool} on this system")
    missing = sorted(t for t in needed if shutil.which(t) is None)
    if missing:
        raise StartError(f"missing tools: {', '.join(missing)} (install them first)")


def check_control_files(config: Config) -> None:
    """Every control file the configuration writes must exist, for every device, before any
    is written: a key the running zramfs cannot honour is an error, never ignored."""
    for d in config.devices:
        directory = device_dir(config, d)
        for name, _ in d.control_writes():
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                raise StartError(
                    f"{d.where(name)}{path} does not exist: this zramfs cannot apply the "
                    "configuration's "
                    f"{_key_for(name)} for {d.name}"
                )


def _key_for(control: str) -> str:
    from .config import POLICY_KEYS, RECOMPRESS_CONDITIONS_FILE

    names = {control_file: key for key, (control_file, _) in POLICY_KEYS.items()}
    names.update({
        "backing_dev": "writeback-device",
        "recomp_algorithm": "compression-algorithm (recompression algorithms)",
        "algorithm_params": "compression-algorithm parameters",
        RECOMPRESS_CONDITIONS_FILE: "compression-algorithm recompression conditions",
        "comp_algorithm": "compression-algorithm",
        "mem_limit": "zram-resident-limit",
        "disksize": "zram-size",
    })
    return names.get(control, control)


def selected_algorithm(text: str) -> str:
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else text.strip()


def configure_device(config: Config, d: DeviceConfig, steps: Steps) -> None:
    """Initialise the device from its control writes, or check the running one matches."""
    directory = device_dir(config, d)
    initialised = read_control(os.path.join(directory, "initstate")).strip() == "1"
    if initialised:
        running = int(read_control(os.path.join(directory, "disksize")))
        wanted = -(-d.disksize // PAGE_SIZE) * PAGE_SIZE
        algo = selected_algorithm(read_control(os.path.join(directory, "comp_algorithm")))
        if running != wanted or (d.algorithms and algo != d.algorithms[0].name):
            raise StartError(
                f"{d.name} is already running with disksize {running} and {algo}, the "
                f"configuration asks for {wanted} and "
                f"{d.algorithms[0].name if d.algorithms else 'the default algorithm'}: "
                "run zramfs stop first"
            )
        # What can differ on a running device after the file was edited: say so rather than
        # answer "already up" as if the new values were in force.
        differs = []
        limit = int(read_control(os.path.join(directory, "mm_stat")).split()[3])
        if limit != -(-d.mem_limit // PAGE_SIZE) * PAGE_SIZE:
            differs.append(f"{d.where('mem_limit')}{d.name} runs with mem_limit {limit}")
        for name, number in d.policy:
            now = read_control(os.path.join(directory, name)).strip()
            if now != str(number):
                differs.append(f"{d.where(name)}{d.name} runs with {name} {now}")
        if differs:
            raise StartError("already running otherwise than configured:\n  "
                             + "\n  ".join(differs) + "\nrun zramfs stop first")
        return
    reset = os.path.join(directory, "reset")
    steps.did(f"configure {d.name}", lambda: write_control(reset, "1"))
    for name, value in d.control_writes():
        try:
            write_control(os.path.join(directory, name), value)
        except StartError as exc:  # the daemon refused the value: name the line that set it
            message = f"{d.where(name)}{exc}"
            algorithm = d.where("comp_algorithm")
            if name == "disksize" and algorithm:
                # As in the kernel, writing disksize builds the compressors, so a level the
                # algorithm refuses (deflate's outside -1..9) fails here, not where it was set.
                message += f"\n  disksize builds the compressors: check {algorithm.rstrip(': ')}"
            raise StartError(message) from None


def holder_of(image: str) -> Holder | None:
    for h in holders_under(os.path.dirname(os.path.dirname(image))):
        if h.image == image:
            return h
    return None


def attach(image: str, steps: Steps) -> str:
    h = holder_of(image)
    if h is not None:
        return h.loop
    loop = run(["losetup", "-f", "--show", "--direct-io=on", image]).strip()
    steps.did(f"losetup {loop}", lambda: run(["losetup", "-d", loop]))
    return loop


def _needs_format(d: DeviceConfig, loop: str, wanted: str) -> bool:
    """True for a blank device; False if it already holds `wanted`.  Anything else is data
    (the device was set up otherwise and is still initialised): never formatted over."""
    found = blkid_type(loop)
    if not found:
        return True
    if found == wanted:
        return False
    raise StartError(f"{d.name} ({loop}) holds {found}, the configuration asks for {wanted}: "
                     "nothing is formatted over it; run zramfs stop first to reset it")


def swap_priority(dev: str) -> int | None:
    """The priority /proc/swaps shows for an active swap, None if it is not one."""
    with open("/proc/swaps") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == dev:
                return int(fields[4])
    return None


def bring_up_swap(d: DeviceConfig, loop: str, steps: Steps) -> None:
    if loop in active_swaps():
        running = swap_priority(loop)
        if d.swap_priority >= 0 and running != d.swap_priority:  # -1: the kernel picks one
            raise StartError(f"{d.where('swap-priority')}{d.name} ({loop}) is swap with "
                             f"priority {running}: run zramfs stop first")
        return
    if _needs_format(d, loop, "swap"):
        run(["mkswap", "-L", f"zramfs-{d.name}", loop])
        steps.did(f"mkswap {loop}")
    run(["swapon", *swap_flags(d.options), "-p", str(d.swap_priority), loop])
    steps.did(f"swapon {loop}", lambda: run(["swapoff", loop]))


def bring_up_filesystem(d: DeviceConfig, loop: str, steps: Steps) -> None:
    where = d.mount_point
    if where is not None and where in mounts_by_source().get(loop, []):
        return
    if _needs_format(d, loop, d.fs_type):
        quiet = ["-q"] if d.fs_type in QUIET_MKFS else []
        try:
            run([f"mkfs.{d.fs_type}", *quiet, loop])
        except StartError as exc:  # e.g. xfs on a device under 300 MB: the size or the type
            raise StartError(f"{d.where('fs-type') or d.where('zram-size')}{exc}") from None
        steps.did(f"mkfs.{d.fs_type} {loop}")
    if where is None:
        return  # zram-generator: formatted, not mounted
    if not os.path.isdir(where):
        os.makedirs(where)
        steps.did(f"mkdir {where}", lambda: os.rmdir(where))
    options = ["-o", d.options] if d.options else []
    try:
        run(["mount", "-t", d.fs_type, *options, loop, where])
    except StartError as exc:
        raise StartError(f"{d.where('options') or d.where('mount-point')}{exc}") from None
    steps.did(f"mount {where}", lambda: run(["umount", where]))


def remove_unconfigured(config: Config) -> None:
    """Freshly mounted with ids 0..max: remove the ids no section names."""
    wanted = {d.dev_id for d in config.devices}
    for dev_id in range(config.device_count):
        if dev_id not in wanted:
            write_control(os.path.join(config.mount, "hot_remove"), str(dev_id))


def add_missing(config: Config, steps: Steps) -> None:
    """An existing mount lacking a configured device: hot_add until it exists."""
    for d in config.devices:
        added: list[int] = []
        while not os.path.isdir(device_dir(config, d)):
            new = int(read_control(os.path.join(config.mount, "hot_add")))
            added.append(new)
            if new > d.dev_id:
                break
        for new in added:
            path = os.path.join(config.mount, "hot_remove")
            if new != d.dev_id:  # an id below the one wanted: give it back now
                write_control(path, str(new))
            else:
                steps.did(f"hot_add zram{new}", _remover(path, new))
        if not os.path.isdir(device_dir(config, d)):
            raise StartError(f"cannot create {d.name} in {config.mount}")


def _remover(path: str, dev_id: int) -> Callable[[], None]:
    return lambda: write_control(path, str(dev_id))


def check_alive(mount: str) -> None:
    """A zramfs mount whose daemon died (kill -9, a crash) answers ENOTCONN: say so plainly."""
    try:
        os.stat(os.path.join(mount, "hot_add"))
    except OSError as exc:
        raise StartError(
            f"zramfs is mounted at {mount} but its daemon is gone ({exc.strerror}): what it "
            "held is lost. Run zramfs stop to clear what is left (swapoff, umount, "
            "losetup -d, unmount), then start again"
        ) from None


def users_of(where: str) -> list[str]:
    """What keeps `where` from being unmounted, found before anything is stopped: processes
    with a file, their working directory or root below it ("PID (COMM)"), and mounts on
    top of it.  umount itself stays the judge; this only lets stop refuse early."""
    prefix = where.rstrip("/") + "/"
    found = []
    for proc in glob.glob("/proc/[0-9]*"):
        if proc == f"/proc/{os.getpid()}":
            continue
        try:
            links = [os.readlink(f"{proc}/cwd"), os.readlink(f"{proc}/root")]
            links += [os.readlink(f"{proc}/fd/{fd}") for fd in os.listdir(f"{proc}/fd")]
            if any(t == where or t.startswith(prefix) for t in links):
                with open(f"{proc}/comm") as f:
                    found.append(f"{proc[6:]} ({f.read().strip()})")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    found += [f"a mount on {m}" for targets in mounts_by_source().values() for m in targets
              if m.startswith(prefix)]
    return found


def start(config: Config, mount_daemon: Callable[[str, int], int],
          unmount_daemon: Callable[[str], None],
          say: Callable[[str], None]) -> tuple[int | None, list[str]]:
    """Bring everything in `config` up; (daemon pid if known, the steps taken)."""
    if not config.devices:
        raise StartError(f"no devices configured in {', '.join(config.files) or '(no file)'}")
    check_tools(config)
    steps = Steps()
    try:
        pid = None
        if config.mount not in zramfs_mounts():
            os.makedirs(config.mount, exist_ok=True)
            pid = mount_daemon(config.mount, config.device_count)
            steps.did(f"mount zramfs at {config.mount}",
                      lambda: unmount_daemon(config.mount))
            remove_unconfigured(config)
        else:
            check_alive(config.mount)
            add_missing(config, steps)
        check_control_files(config)
        for d in config.devices:
            configure_device(config, d, steps)
        for d in config.devices:
            loop = attach(os.path.join(device_dir(config, d), "image"), steps)
            if d.is_swap:
                bring_up_swap(d, loop, steps)
            else:
                bring_up_filesystem(d, loop, steps)
    except BaseException as exc:
        problems = steps.rollback()
        if problems:
            say("rollback incomplete:\n  " + "\n  ".join(problems))
        if isinstance(exc, OSError) and not isinstance(exc, StartError):
            raise StartError(str(exc)) from None
        raise
    return pid, steps.done


def stop(mount: str, unmount_daemon: Callable[[str], None], say: Callable[[str], None]) -> bool:
    """swapoff and umount what uses the images, detach the loop devices, unmount zramfs.

    Refuses before touching anything while a filesystem on an image is in use, so a
    refused stop leaves every swap on.  False when there was nothing to stop.
    """
    if mount not in zramfs_mounts():
        say(f"zramfs is not mounted at {mount}: nothing to stop")
        return False
    held = holders_under(mount)
    busy = [f"{where}: {', '.join(users)}" for h in held for where in h.mounts
            if (users := users_of(where))]
    if busy:
        raise StartError("in use, nothing was stopped:\n  " + "\n  ".join(busy)
                         + "\nclose those files (or leave those directories) and run zramfs "
                           "stop again")
    for h in held:
        if h.swap:
            try:
                run(["swapoff", h.loop])
            except StartError as exc:
                raise StartError(f"{exc}\nzramfs at {mount} keeps serving: a swap still "
                                 "lives on it") from None
            say(f"swapoff {h.loop}")
    for h in held:
        for where in h.mounts:
            run(["umount", where])
            say(f"umount {where}")
    for h in held:
        run(["losetup", "-d", h.loop])
        say(f"losetup -d {h.loop}")
    unmount_daemon(mount)
    return True
