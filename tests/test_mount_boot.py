"""From boot to swap: `zramfs start`/`stop` from a config, systemd's notify protocol, the
daemon's protection, the metrics file, `zramfs status` flags and `zramfs top`, for real.

Every test uses a private --config with the zramfs mount and mount points under its tmp
directory (never /mnt/zramfs); the registry fixture releases whatever is left (swapoff,
umount, losetup -d, zramfs umount) in teardown, also when a test fails.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    ZRAMFS,
    MiB,
    Resources,
    ZramfsFactory,
    ZramMount,
    active_swaps,
    is_mounted,
    is_zramfs_mount,
    loop_backing,
    require,
    run,
    text_bytes,
    wait_for,
    zramfs_cmd,
)

pytestmark = pytest.mark.mount


def write_config(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A config whose [zramfs] mount is under tmp_path; returns (config, zramfs mount)."""
    mnt = tmp_path / "zmnt"
    conf = tmp_path / "zramfs.conf"
    conf.write_text(f"[zramfs]\nmount = {mnt}\n\n{body}")
    return conf, mnt


def images_holders(mnt: Path) -> dict[str, str]:
    """loop device -> image, for loop devices backed by this mount's images."""
    out = {}
    for sysdir in Path("/sys/block").glob("loop*"):
        dev = f"/dev/{sysdir.name}"
        backing = loop_backing(dev)
        if backing and backing.startswith(f"{mnt}/"):
            out[dev] = backing
    return out


def swap_priority(dev: str) -> int:
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[0] == dev:
            return int(parts[4])
    raise AssertionError(f"{dev} is not an active swap")


def mount_options(target: Path) -> list[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if parts[1] == str(target):
            return parts[3].split(",")
    raise AssertionError(f"{target} is not mounted")


@pytest.fixture
def boot(registry: Resources, tmp_path: Path) -> Iterator[Resources]:
    """The registry, told about the config's zramfs mount so teardown releases it."""
    registry.zramfs_mounts.append(tmp_path / "zmnt")
    yield registry


SWAP_AND_EXT4 = """\
[zram0]
zram-size = 64
swap-priority = 42

[zram1]
zram-size = 128
compression-algorithm = zstd(level=3)
fs-type = ext4
mount-point = {data}
"""


def test_start_and_stop_twice_swap_and_ext4(boot: Resources, tmp_path: Path) -> None:
    require("mkswap", "swapon", "swapoff", "mkfs.ext4", "blkid")
    data = tmp_path / "data"
    conf, mnt = write_config(tmp_path, SWAP_AND_EXT4.format(data=data))
    for cycle in range(2):
        res = zramfs_cmd("start", "--config", conf)
        assert "started" in res.stdout, res.stdout
        assert is_zramfs_mount(mnt)
        m = ZramMount(mnt)
        assert sorted(p for p in os.listdir(mnt) if p.startswith("zram")) == ["zram0", "zram1"]
        assert m.disksize(0) == 64 * MiB and m.disksize(1) == 128 * MiB
        assert "[zstd]" in m.read("comp_algorithm", 1).split()
        loops = images_holders(mnt)
        by_image = {img: dev for dev, img in loops.items()}
        swap_dev = by_image[f"{mnt}/zram0/image"]
        assert f"{mnt}/zram1/image" in by_image
        assert Path(f"/sys/block/{swap_dev[5:]}/loop/dio").read_text().strip() == "1"
        assert swap_priority(swap_dev) == 42
        assert is_mounted(data) and "discard" in mount_options(data)
        payload = text_bytes(4 * MiB, seed=90 + cycle)
        (data / "payload").write_bytes(payload)
        os.sync()
        assert m.mm_stat(1).orig_data_size > 0

        # Again, with everything up: nothing changes and it succeeds.
        before = (images_holders(mnt), active_swaps(), m.pid())
        again = zramfs_cmd("start", "--config", conf)
        assert "already up" in again.stdout, again.stdout
        assert (images_holders(mnt), active_swaps(), m.pid()) == before
        assert (data / "payload").read_bytes() == payload

        res = zramfs_cmd("stop", "--config", conf)
        assert "stopped" in res.stdout
        assert not is_zramfs_mount(mnt)
        assert swap_dev not in active_swaps()
        assert not is_mounted(data)
        assert images_holders(mnt) == {}
    # stop when nothing runs: a no-op that succeeds
    assert "nothing to stop" in zramfs_cmd("stop", "--config", conf).stdout


def test_start_failing_half_way_undoes_what_it_did(boot: Resources, tmp_path: Path) -> None:
    require("mkswap", "swapon", "mkfs.ext4", "blkid")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the mount point should be")
    conf, mnt = write_config(tmp_path, SWAP_AND_EXT4.format(data=blocker))
    swaps_before = active_swaps()
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1
    assert "start failed" in res.stderr and str(blocker) in res.stderr, res.stderr
    # The swap on zram0 had been brought up before the mount failed: it is gone again.
    assert active_swaps() == swaps_before
    assert images_holders(mnt) == {}
    assert wait_for(lambda: not is_zramfs_mount(mnt))


@pytest.mark.parametrize(
    ("body", "where", "what"),
    [
        ("[zram0]\nzram-size = ram / / 4\n", 2, "zram-size"),
        ("[zram0]\nfs-type = ext4\nmount-point = data\n", 3, "not an absolute path"),
        ("[zram0]\nswap-prio = 5\n", 2, "unknown key swap-prio"),
    ],
)
def test_bad_config_is_refused_with_file_and_line(
    boot: Resources, tmp_path: Path, body: str, where: int, what: str
) -> None:
    conf, mnt = write_config(tmp_path, "# devices\n" + body)
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1
    assert f"{conf}:{where + 4}: " in res.stderr and what in res.stderr, res.stderr
    assert "nothing was started" in res.stderr
    assert not is_zramfs_mount(mnt)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("compression-algorithm = lzo-rle\n", "compression-algorithm"),  # zram-generator's
        # refused when disksize builds the compressor, as the kernel does (zstd's levels
        # are clamped instead, so deflate's is the one left to refuse)
        ("compression-algorithm = deflate(level=99)\n", "compression-algorithm"),
        ("compression-algorithm = lz4 nosuch\n", "compression-algorithm"),
        ("writeback-device = /nonexistent/disk\n", "writeback-device"),
        ("fs-type = xfs\n", "fs-type"),  # mkfs.xfs refuses a device under 300 MB
    ],
)
def test_values_the_daemon_refuses_are_named_at_their_line(
    boot: Resources, tmp_path: Path, body: str, key: str
) -> None:
    """A value only the running zramfs can judge (an algorithm it lacks, a level out of
    range, a missing backing device) is still reported at its file and line, and nothing
    stays up."""
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n" + body)
    swaps_before = active_swaps()
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1
    assert f"{conf}:6: {key}=" in res.stderr, res.stderr
    assert active_swaps() == swaps_before and images_holders(mnt) == {}
    assert wait_for(lambda: not is_zramfs_mount(mnt))


def test_start_without_any_config_says_which_file_it_looked_for(tmp_path: Path) -> None:
    if os.path.exists("/etc/zramfs/zramfs.conf") or os.path.exists("/etc/zramfs/zramfs.conf.d"):
        pytest.skip("this machine has a zramfs configuration")
    mounted_before = is_zramfs_mount(Path("/mnt/zramfs"))
    res = zramfs_cmd("start", check=False)
    assert res.returncode == 1
    assert "/etc/zramfs/zramfs.conf: no such file" in res.stderr, res.stderr
    assert is_zramfs_mount(Path("/mnt/zramfs")) == mounted_before


def test_bad_dropin_is_named(boot: Resources, tmp_path: Path) -> None:
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n")
    drop = Path(f"{conf}.d")
    drop.mkdir()
    (drop / "10-ok.conf").write_text("[zram0]\nswap-priority = 7\n")
    (drop / "20-bad.conf").write_text("[zram0]\n\nswap-priority = lots\n")
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1 and f"{drop}/20-bad.conf:3: " in res.stderr, res.stderr
    assert not is_zramfs_mount(mnt)


def test_recompression_keys_apply_or_name_the_missing_file(boot: Resources, tmp_path: Path) -> None:
    """A configured key whose control file this zramfs lacks stops start, naming the file.

    Which recompression files the daemon serves is looked up on a probe mount, so the test
    stays true once the tier serves them (then start must apply the key and succeed).
    """
    require("mkswap", "swapon", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n"
                                       "compression-algorithm = lz4 zstd (type=idle)\n")
    res = zramfs_cmd("start", "--config", conf, check=False)
    served = {"recomp_algorithm", "recompress_params"}
    probe = zramfs_cmd("mount", tmp_path / "probe", "-s", "0")
    boot.zramfs_mounts.append(tmp_path / "probe")
    present = {n for n in served if (tmp_path / "probe" / "zram0" / n).exists()}
    zramfs_cmd("umount", tmp_path / "probe")
    assert probe.returncode == 0
    if present == served:
        assert res.returncode == 0, res.stderr
        zramfs_cmd("stop", "--config", conf)
    else:
        assert res.returncode == 1
        missing = sorted(served - present)[0]
        assert f"{mnt}/zram0/{missing} does not exist" in res.stderr, res.stderr
        assert not is_zramfs_mount(mnt)
        assert images_holders(mnt) == {}


def test_policy_keys_reach_their_control_files(boot: Resources, tmp_path: Path) -> None:
    """zramfs's own keys land in their control files, or start stops naming the file it
    lacks (looked up on a probe mount, so this stays true as the tier lands)."""
    require("mkswap", "swapon", "blkid")
    keys = {"policy-interval": ("policy_interval", "7"),  # in config.POLICY_KEYS' order
            "recompress-after": ("recompress_after", "600"),
            "writeback-after": ("writeback_after", "3600"), "auto-compact": ("auto_compact", "30")}
    body = "[zram0]\nzram-size = 32\n" + "".join(f"{k} = {v}\n" for k, (_, v) in keys.items())
    conf, mnt = write_config(tmp_path, body)
    probe_dir = tmp_path / "probe"
    boot.zramfs_mounts.append(probe_dir)
    zramfs_cmd("mount", probe_dir, "-s", "0")
    present = {f for f, _ in keys.values() if (probe_dir / "zram0" / f).exists()}
    zramfs_cmd("umount", probe_dir)
    res = zramfs_cmd("start", "--config", conf, check=False)
    if len(present) == len(keys):
        assert res.returncode == 0, res.stderr
        for control, value in keys.values():
            assert (mnt / "zram0" / control).read_text().split()[0] == value, control
        zramfs_cmd("stop", "--config", conf)
    else:
        first_missing = next(f for f, _ in keys.values() if f not in present)
        assert res.returncode == 1
        assert f"{mnt}/zram0/{first_missing} does not exist" in res.stderr, res.stderr
        assert not is_zramfs_mount(mnt) and images_holders(mnt) == {}


# -- systemd --------------------------------------------------------------------------------


class FakeNotifySocket:
    """A datagram socket standing in for systemd's: collects messages, answers barriers."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(("\0" + address[1:]) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.address = address
        self.messages: list[str] = []
        self.barriers = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for i in range(0, len(payload) - len(payload) % 4, 4):
                        os.close(int.from_bytes(payload[i : i + 4], "little"))
                    self.barriers += 1
            self.messages.append(data.decode())

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_start_notifies_systemd_ready_with_the_daemon_as_main_pid(
    boot: Resources, tmp_path: Path, abstract: bool
) -> None:
    require("mkswap", "swapon", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n")
    address = f"@zramfs-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(
        tmp_path / "notify.sock")
    fake = FakeNotifySocket(address)
    try:
        env = dict(os.environ, NOTIFY_SOCKET=address)
        assert ZRAMFS is not None
        res = subprocess.run([ZRAMFS, "start", "--config", str(conf)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert wait_for(lambda: any("READY=1" in m for m in fake.messages))
    finally:
        fake.close()
    ready = next(m for m in fake.messages if "READY=1" in m)
    fields = dict(line.split("=", 1) for line in ready.splitlines())
    assert int(fields["MAINPID"]) == ZramMount(mnt).pid()
    assert fake.barriers == 1  # BARRIER=1 carried its pipe, and start waited for it
    # READY only once everything is up: the swap was active when start returned.
    assert any(d in active_swaps() for d in images_holders(mnt))
    zramfs_cmd("stop", "--config", conf)


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd to run this)")
    assert ZRAMFS is not None
    unit = (ROOT / "systemd" / "zramfs.service").read_text()
    for needed in ("Type=notify", "Before=swap.target", "ExecStop=/usr/local/bin/zramfs stop",
                   "OOMScoreAdjust=-1000", "LimitMEMLOCK=infinity", "SendSIGKILL=no"):
        assert needed in unit, needed
    installed = tmp_path / "zramfs.service"
    installed.write_text(unit.replace("/usr/local/bin/zramfs", ZRAMFS))
    res = run("systemd-analyze", "verify", installed, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "zramfs.service" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_make_install_systemd_works_twice_and_uninstalls(tmp_path: Path) -> None:
    """The documented install, into DESTDIR (this container's systemd is not running, as
    in any chroot): the unit verifies, is enabled for swap.target, zramfs is linked where
    the unit's own path points; running it again changes nothing; uninstall removes it."""
    require("make", "systemctl", "systemd-analyze")
    assert ZRAMFS is not None
    dest = tmp_path / "root"
    make = ["make", "-C", str(ROOT), "-o", ".venv/bin/zramfs", "-o", "deps", f"DESTDIR={dest}"]
    unit = dest / "etc/systemd/system/zramfs.service"
    wants = dest / "etc/systemd/system/swap.target.wants/zramfs.service"
    link = dest / "usr/local/bin/zramfs"
    for _ in range(2):
        run(*make, "install-systemd")
        assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/zramfs.service"
        assert os.readlink(link) == str(Path(ROOT, ".venv/bin/zramfs"))
        assert f"ExecStart={ROOT}/.venv/bin/zramfs start" in unit.read_text()
        res = run("systemd-analyze", "verify", unit, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    run(*make, "uninstall-systemd")
    assert not unit.exists() and not wants.exists() and not link.exists()


def cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_daemon_sets_its_oom_score_adj(zramfs: ZramfsFactory, registry: Resources) -> None:
    m = zramfs(size="32M")
    adj = int(Path(f"/proc/{m.pid()}/oom_score_adj").read_text())
    if cap_sys_resource():
        assert adj == -1000
        return
    # Without CAP_SYS_RESOURCE (this container) the kernel refuses any value below 0: the
    # daemon must say so in its log rather than pretend.
    log = "".join(p.read_text() for p in registry.daemon_logs())
    assert "oom_score_adj" in log and "-1000" in log, log
    pytest.skip("no CAP_SYS_RESOURCE here: the kernel refuses oom_score_adj -1000 "
                f"(the daemon tried and logged it; it runs at {adj})")


def test_log_goes_to_stderr_under_systemd(registry: Resources, tmp_path: Path) -> None:
    """With INVOCATION_ID set, the daemon logs to the stderr it was given, no /run file."""
    mnt = tmp_path / "zramfs-journal"
    registry.zramfs_mounts.append(mnt)
    log_file = Path("/run/zramfs") / (str(mnt).strip("/").replace("/", "-") + ".log")
    err = tmp_path / "journal.txt"
    assert ZRAMFS is not None
    with open(err, "wb") as f:
        subprocess.run([ZRAMFS, "mount", str(mnt), "-s", "32M", "--debug"],
                       env=dict(os.environ, INVOCATION_ID="0123456789abcdef"),
                       stdout=f, stderr=f, timeout=60, check=True)
    assert is_zramfs_mount(mnt)
    assert not log_file.exists()
    zramfs_cmd("umount", mnt)
    assert wait_for(lambda: "stopped" in err.read_text())


# -- metrics --------------------------------------------------------------------------------


def test_metrics_file_parses_as_prometheus_text(zramfs: ZramfsFactory) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    m = zramfs(size="64M", devices=2)
    data = text_bytes(2 * MiB, seed=77)
    m.pwrite(data, 0)
    m.pread(len(data), 0)
    m.set("reset", "1", n=1)  # zram1 uninitialised: reported as such
    text = (m.path / "metrics").read_text()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    s = m.mm_stat(0)

    def value(name: str, device: str = "zram0") -> float:
        for sample in families[name].samples:
            if sample.labels == {"device": device}:
                return float(sample.value)
        raise AssertionError(f"no {name} for {device}")

    assert value("zramfs_orig_data_bytes") == s.orig_data_size == len(data)
    assert value("zramfs_compr_data_bytes") == s.compr_data_size
    assert value("zramfs_mem_used_total_bytes") == s.mem_used_total
    assert value("zramfs_compression_ratio") == pytest.approx(s.orig_data_size / s.mem_used_total)
    assert value("zramfs_initialised") == 1 and value("zramfs_initialised", "zram1") == 0
    assert families["zramfs_written_pages"].type == "counter"
    assert value("zramfs_written_pages") >= len(data) // 4096
    assert value("zramfs_read_pages") >= len(data) // 4096
    for name in ("zramfs_bd_count_bytes", "zramfs_failed_reads", "zramfs_notify_free",
                 "zramfs_pages_compacted", "zramfs_huge_pages", "zramfs_mem_limit_bytes"):
        assert name in families, name
    assert all(f.documentation for f in families.values())
    assert "zram1" not in text.split("zramfs_disksize_bytes", 1)[1]


# -- status -----------------------------------------------------------------------------------


def test_status_zramctl_flags(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="1GiB", devices=2)
    assert m.disksize(0) == 1 << 30
    m.pwrite(text_bytes(MiB, seed=5), 0)
    s = m.mm_stat(0)
    out = zramfs_cmd("status", "--raw", "-n", "-b", m.path).stdout.splitlines()
    assert len(out) == 2  # no header
    assert out[0].split(" ")[:4] == [f"{m.path}/zram0", "lz4", str(1 << 30),
                                     str(s.orig_data_size)]
    assert len(out[0].split(" ")) == 8  # raw: single spaces, the empty MOUNTPOINT last
    head = zramfs_cmd("status", "--output-all", m.path).stdout.splitlines()[0].split()
    assert head == ["NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES",
                    "TOTAL", "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO", "BACKING-DEV",
                    "WRITTEN-BACK", "MOUNTPOINT"]
    plus = zramfs_cmd("status", "-o", "+COMP-RATIO", m.path).stdout.splitlines()
    assert plus[0].split()[-1] == "COMP-RATIO" and plus[0].split()[0] == "NAME"
    assert plus[1].split()[-1] == f"{s.orig_data_size / s.mem_used_total:.4f}"
    # A device argument: by name, or by its path (directory or image)
    for target in ("zram1", f"{m.path}/zram1", f"{m.path}/zram1/image"):
        rows = zramfs_cmd("status", "-n", "-o", "NAME", target).stdout.split()
        assert f"{m.path}/zram1" in rows and f"{m.path}/zram0" not in rows, (target, rows)
    res = zramfs_cmd("status", f"{m.path}/zram9", check=False)
    assert res.returncode == 1 and "zram9" in res.stderr
    # raw escapes blanks as zramctl does
    loopdev = run("losetup", "-f", "--show", m.image(1)).stdout.strip()
    try:
        raw = zramfs_cmd("status", "--raw", "-n", "-o", "NAME,MOUNTPOINT", f"{m.path}/zram1")
        assert raw.stdout.strip() == f"{m.path}/zram1 {loopdev}"
    finally:
        run("losetup", "-d", loopdev)


def test_sizes_take_both_forms(zramfs: ZramfsFactory) -> None:
    a = zramfs(size="1G", mem_limit="64MiB")
    b = zramfs(size="1073741824", mem_limit="64M")
    assert a.disksize() == b.disksize() == 1 << 30
    assert a.mm_stat().mem_limit == b.mm_stat().mem_limit == 64 * MiB
    c = zramfs(size="1GB")
    assert c.disksize() == 1_000_001_536  # 10**9 rounded up to a page


def test_status_survives_a_dead_and_a_shadowed_mount(
    zramfs: ZramfsFactory, registry: Resources, tmp_path: Path
) -> None:
    alive, dead, shadowed = zramfs(size="32M"), zramfs(size="32M"), zramfs(size="32M",
                                                                             devices=2)
    # Shadow zram0 of the third mount with a tmpfs mounted inside its own directory.
    registry.mounts.append(str(shadowed.dev(0)))
    run("mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", shadowed.dev(0))
    # Kill the second one's connection: every access answers ENOTCONN.
    conn = Path(f"/sys/fs/fuse/connections/{os.minor(os.stat(dead.path).st_dev)}")
    if not conn.exists():
        run("mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections", check=False)
    (conn / "abort").write_text("1")
    with pytest.raises(OSError):
        os.listdir(dead.path)
    res = zramfs_cmd("status", check=False)
    assert res.returncode == 0, res.stderr
    assert f"{alive.path}/zram0" in res.stdout
    assert f"{shadowed.path}/zram1" in res.stdout
    assert f"{shadowed.path}/zram0 " not in res.stdout
    assert re.search(rf"{re.escape(str(dead.path))}: unreachable \(.*not connected", res.stderr)
    assert f"{shadowed.path}/zram0" in res.stderr
    # The named dead mount fails, clearly.
    res = zramfs_cmd("status", dead.path, check=False)
    assert res.returncode == 1 and "unreachable" in res.stderr


# -- top --------------------------------------------------------------------------------------


def test_top_batch_frames(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="64M")
    m.pwrite(text_bytes(MiB, seed=8), 0)
    out = zramfs_cmd("top", "-n", "2", "-d", "0.2", m.path).stdout
    assert out.count("zramfs top") == 2
    line = next(x for x in out.splitlines() if x.startswith(f"{m.path}/zram0"))
    assert "1M" in line  # DATA


def test_top_refuses_a_path_that_is_no_mount(tmp_path: Path) -> None:
    """A typo in the mount point is an error, not a screen saying `unreachable` forever."""
    res = zramfs_cmd("top", "-n", "1", tmp_path / "nothing-here", check=False)
    assert res.returncode == 1 and "no zramfs mounted" in res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_top_live_until_q(zramfs: ZramfsFactory, key: bytes) -> None:
    m = zramfs(size="64M")
    m.pwrite(text_bytes(MiB, seed=9), 0)
    assert ZRAMFS is not None
    pid, fd = pty.fork()
    if pid == 0:  # child: the command on a terminal
        os.execv(ZRAMFS, [ZRAMFS, "top", "-d", "0.2", str(m.path)])
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while screen.count(b"zramfs top") < 2 and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                screen += os.read(fd, 65536)
        assert screen.count(b"zramfs top") >= 2, screen[-2000:]
        assert b"\x1b[2J" in screen and f"{m.path}/zram0".encode() in screen
        os.write(fd, key)
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    pass
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        pid = 0
        # the terminal is given back: cursor shown again
        assert b"\x1b[?25h" in screen + _drain(fd)
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_the_readme_five_line_config(boot: Resources, tmp_path: Path) -> None:
    """The README's "From boot to swap" config, as written, with the paths moved under tmp."""
    require("mkswap", "swapon", "mkfs.ext2", "blkid")
    readme = (ROOT / "README.md").read_text()
    block = readme.split("    # /etc/zramfs/zramfs.conf\n", 1)[1].split("\n\n", 1)[0]
    lines = [line[4:] for line in block.splitlines()]
    assert len(lines) == 5, lines
    data = tmp_path / "compressed"
    body = "\n".join(lines).replace("/var/compressed", str(data)) + "\n"
    conf, mnt = write_config(tmp_path, body)
    zramfs_cmd("start", "--config", conf)
    m = ZramMount(mnt)
    assert "[zstd]" in m.read("comp_algorithm", 0).split()
    ram_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MiB
    assert m.disksize(0) in (min(ram_mib // 2, 4096) * MiB, min(ram_mib // 2 - 1, 4096) * MiB)
    assert m.disksize(1) == 1024 * MiB
    holders = {img: dev for dev, img in images_holders(mnt).items()}
    assert holders[f"{mnt}/zram0/image"] in active_swaps()
    assert swap_priority(holders[f"{mnt}/zram0/image"]) == 100
    assert is_mounted(data)
    assert run("findmnt", "-n", "-o", "FSTYPE", data).stdout.strip() == "ext2"
    zramfs_cmd("stop", "--config", conf)
    assert not is_zramfs_mount(mnt)


def test_stop_keeps_the_daemon_while_a_swap_cannot_be_turned_off(
    boot: Resources, tmp_path: Path
) -> None:
    """If swapoff fails (here a swapoff that always fails, first on PATH), stop says so and
    leaves the daemon serving the swap: nothing is unmounted or detached."""
    require("mkswap", "swapon", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n")
    zramfs_cmd("start", "--config", conf)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "swapoff"
    fake.write_text("#!/bin/sh\necho 'swapoff: Cannot allocate memory' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert ZRAMFS is not None
    res = subprocess.run([ZRAMFS, "stop", "--config", str(conf)], capture_output=True,
                         text=True, timeout=120,
                         env=dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}"))
    assert res.returncode == 1
    assert "Cannot allocate memory" in res.stderr and "keeps serving" in res.stderr
    assert is_zramfs_mount(mnt)
    (swap_dev,) = images_holders(mnt)
    assert swap_dev in active_swaps()
    zramfs_cmd("stop", "--config", conf)  # the real swapoff works
    assert not is_zramfs_mount(mnt) and swap_dev not in active_swaps()


def test_start_never_formats_over_data(boot: Resources, tmp_path: Path) -> None:
    """A device still up with a filesystem the configuration no longer names is refused,
    not reformatted: the user's files survive a changed fs-type."""
    require("mkswap", "swapon", "mkfs.ext4", "mkfs.ext2", "blkid")
    data = tmp_path / "data"
    conf, mnt = write_config(tmp_path, SWAP_AND_EXT4.format(data=data))
    zramfs_cmd("start", "--config", conf)
    (data / "keep").write_text("precious")
    run("umount", data)
    conf.write_text(conf.read_text().replace("fs-type = ext4", "fs-type = ext2"))
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1 and "holds ext4" in res.stderr, res.stderr
    conf.write_text(conf.read_text().replace("fs-type = ext2", "fs-type = ext4"))
    zramfs_cmd("start", "--config", conf)
    assert (data / "keep").read_text() == "precious"
    zramfs_cmd("stop", "--config", conf)


def _drain(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_start_completes_a_partly_stopped_setup(boot: Resources, tmp_path: Path) -> None:
    """Swap turned off and the filesystem unmounted by hand: start brings back just those,
    without mkswap or mkfs (the data is still there); sparse ids keep their names."""
    require("mkswap", "swapon", "swapoff", "mkfs.ext4", "blkid")
    data = tmp_path / "data"
    body = SWAP_AND_EXT4.format(data=data).replace("[zram0]", "[zram2]")
    conf, mnt = write_config(tmp_path, body)
    zramfs_cmd("start", "--config", conf)
    assert sorted(p for p in os.listdir(mnt) if p.startswith("zram")) == ["zram1", "zram2"]
    (data / "keep").write_text("still here")
    holders = {img: dev for dev, img in images_holders(mnt).items()}
    swap_dev = holders[f"{mnt}/zram2/image"]
    run("swapoff", swap_dev)
    run("umount", data)
    res = zramfs_cmd("start", "--config", conf)
    assert "mkswap" not in res.stdout and "mkfs" not in res.stdout, res.stdout
    assert f"swapon {swap_dev}" in res.stdout and f"mount {data}" in res.stdout, res.stdout
    assert swap_dev in active_swaps() and swap_priority(swap_dev) == 42
    assert (data / "keep").read_text() == "still here"
    zramfs_cmd("stop", "--config", conf)


def recompressed(mnt: Path, device: str) -> int:
    for line in (mnt / "metrics").read_text().splitlines():
        if line.startswith(f'zramfs_recompressed_pages{{device="{device}"}}'):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no recompressed_pages for {device}")


def test_recompression_conditions_steer_the_policy(boot: Resources, tmp_path: Path) -> None:
    """compression-algorithm's conditions reach recompress_params, and the policy follows
    them: with (type=huge) it leaves compressible pages alone, without it it does not."""
    require("mkfs.ext4", "blkid")
    common = ("zram-size = 64\ncompression-algorithm = lz4 zstd(level=3){cond}\n"
              "recompress-after = 1\npolicy-interval = 1\nfs-type = ext4\n"
              "mount-point = {where}\n")
    body = ("[zram0]\n" + common.format(cond="", where=tmp_path / "a")
            + "[zram1]\n" + common.format(cond=" (type=huge)", where=tmp_path / "b"))
    conf, mnt = write_config(tmp_path, body)
    res = zramfs_cmd("start", "--config", conf, check=False)
    if not (mnt / "zram0" / "recompress_params").exists() and res.returncode:
        pytest.skip("this zramfs has no recompress_params")
    assert res.returncode == 0, res.stderr
    assert (mnt / "zram1" / "recompress_params").read_text() == "type=huge\n"
    assert (mnt / "zram0" / "recompress_params").read_text() == "\n"
    for where in ("a", "b"):
        (tmp_path / where / "text").write_bytes(text_bytes(4 * MiB, seed=31))
    os.sync()
    assert wait_for(lambda: recompressed(mnt, "zram0") > 0, timeout=60)
    time.sleep(2.5)  # two more policy passes for zram1 (a late pass only makes this weaker)
    assert recompressed(mnt, "zram1") == 0
    zramfs_cmd("stop", "--config", conf)


def test_stop_while_a_file_is_open_stops_nothing(boot: Resources, tmp_path: Path) -> None:
    """A process with a file open on a configured filesystem: stop refuses before it turns
    any swap off, naming the mount point and the process; nothing is half torn down."""
    require("mkswap", "swapon", "swapoff", "mkfs.ext4", "blkid")
    data = tmp_path / "data"
    conf, mnt = write_config(tmp_path, SWAP_AND_EXT4.format(data=data))
    zramfs_cmd("start", "--config", conf)
    (data / "open").write_text("held")
    before = (images_holders(mnt), active_swaps())
    holder = subprocess.Popen(["sleep", "300"], stdin=open(data / "open"))  # noqa: SIM115
    try:
        res = zramfs_cmd("stop", "--config", conf, check=False)
        assert res.returncode == 1
        assert str(data) in res.stderr and f"{holder.pid} (sleep)" in res.stderr, res.stderr
        assert (images_holders(mnt), active_swaps()) == before
        assert is_mounted(data) and is_zramfs_mount(mnt)
    finally:
        holder.kill()
        holder.wait()
    zramfs_cmd("stop", "--config", conf)
    assert not is_zramfs_mount(mnt) and images_holders(mnt) == {}


def test_start_after_the_daemon_was_killed(boot: Resources, tmp_path: Path) -> None:
    """kill -9 of the daemon leaves a dead mount (ENOTCONN) with the swap still on it:
    start says so and what to do, stop clears the remains, and start works again."""
    require("mkswap", "swapon", "swapoff", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\n")
    zramfs_cmd("start", "--config", conf)
    (swap_dev,) = images_holders(mnt)
    os.kill(ZramMount(mnt).pid(), 9)
    assert wait_for(lambda: not os.path.exists(mnt / "zram0"))  # ENOTCONN from now on
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1
    assert "daemon is gone" in res.stderr and "zramfs stop" in res.stderr, res.stderr
    assert "Errno" not in res.stderr, res.stderr
    zramfs_cmd("stop", "--config", conf)
    assert swap_dev not in active_swaps() and images_holders(mnt) == {}
    assert not is_zramfs_mount(mnt)
    assert "started" in zramfs_cmd("start", "--config", conf).stdout
    zramfs_cmd("stop", "--config", conf)


def test_start_again_with_a_changed_limit_says_what_differs(
    boot: Resources, tmp_path: Path
) -> None:
    """Everything up, then the configuration's resident limit edited: start again does not
    answer "already up" as if it had been applied; it names the line and changes nothing."""
    require("mkswap", "swapon", "swapoff", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\nzram-resident-limit = 8\n")
    zramfs_cmd("start", "--config", conf)
    conf.write_text(conf.read_text().replace("limit = 8", "limit = 16"))
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1, res.stdout
    assert f"{conf}:6: zram-resident-limit='16'" in res.stderr and "zramfs stop" in res.stderr, \
        res.stderr
    assert ZramMount(mnt).mm_stat(0).mem_limit == 8 * MiB
    assert images_holders(mnt)  # still up
    conf.write_text(conf.read_text().replace("limit = 16", "limit = 8"))
    assert "already up" in zramfs_cmd("start", "--config", conf).stdout
    zramfs_cmd("stop", "--config", conf)


def test_start_again_with_a_changed_swap_priority_says_so(boot: Resources, tmp_path: Path) -> None:
    require("mkswap", "swapon", "swapoff", "blkid")
    conf, mnt = write_config(tmp_path, "[zram0]\nzram-size = 32\nswap-priority = 42\n")
    zramfs_cmd("start", "--config", conf)
    (swap_dev,) = images_holders(mnt)
    conf.write_text(conf.read_text().replace("= 42", "= 43"))
    res = zramfs_cmd("start", "--config", conf, check=False)
    assert res.returncode == 1, res.stdout
    assert f"{conf}:6: swap-priority='43'" in res.stderr and "zramfs stop" in res.stderr, \
        res.stderr
    assert swap_priority(swap_dev) == 42  # untouched, still up
    zramfs_cmd("stop", "--config", conf)
