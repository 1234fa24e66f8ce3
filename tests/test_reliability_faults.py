"""Faults: the daemon killed or told to stop under load, busy devices, fio verify, fuzzing.

- kill -9 of the daemon while dd reads and writes its image through a loop device: the I/O
  fails (no hang), and `zramfs umount --force` leaves no mount and no loop device behind.
- SIGTERM: a clean unmount when nothing uses the mount; while an image is in use the daemon
  logs what holds it and keeps serving.
- reset and hot_remove of a device in use: EBUSY, the data untouched.
- fio with crc32c verification: queue depths 1, 16, 64, block sizes 512 B to 1 MiB, 4 KiB
  aligned and not, several jobs on one device and on two devices at once.
- Fuzzing: every control file with seeded random and near-valid input, the image with random
  offsets, sizes and truncates; the daemon keeps answering, stored data does not change and
  every errno is one the kernel would give for that file, never EIO from an unexpected error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    MiB,
    Resources,
    ZramMount,
    ctl_write,
    errname,
    is_mounted,
    loop_backing,
    process_running,
    require,
    run,
    text_bytes,
    wait_for,
    zramfs_cmd,
)
from test_reliability_common import (
    direct_read,
    direct_sha256,
    direct_write,
    kernel_stacks,
    log_since,
    log_size,
    pidfile,
    wait_exit,
)

pytestmark = pytest.mark.mount

DD_TIMEOUT = 60
MAX_OFF = (1 << 63) - 1  # the largest file offset (MAX_LFS_FILESIZE)


def mixed_data(size: int, seed: int) -> bytes:
    """Text with some random pages: compressible, not uniform."""
    rng = random.Random(seed)
    out = bytearray(text_bytes(size, seed))
    for page in range(0, size, 4096 * 7):
        out[page : page + 4096] = rng.randbytes(min(4096, size - page))
    return bytes(out)


# -- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_while_a_loop_device_is_in_use(registry: Resources) -> None:
    m = registry.mount_zramfs(size="4G")
    pid = m.pid()
    dev = registry.loop(m.image())
    direct_write(dev, 0, mixed_data(16 * MiB, seed=1))

    # A reader and a writer that would each run for many seconds.
    reader = subprocess.Popen(
        [
            "timeout",
            "-s",
            "KILL",
            str(DD_TIMEOUT),
            "dd",
            f"if={dev}",
            "of=/dev/null",
            "bs=4k",
            "iflag=direct",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = subprocess.Popen(
        [
            "timeout",
            "-s",
            "KILL",
            str(DD_TIMEOUT),
            "dd",
            "if=/dev/zero",
            f"of={dev}",
            "bs=4k",
            "seek=8192",
            "oflag=direct",
            "conv=notrunc",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        assert reader.poll() is None and writer.poll() is None, "dd finished before the kill"
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        results = {}
        for name, proc in (("reader", reader), ("writer", writer)):
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                stacks = kernel_stacks(proc.pid)
                pytest.fail(f"dd {name} hangs after the daemon was killed:\n{stacks}")
            results[name] = (proc.returncode, err)
        fail_s = time.monotonic() - killed_at
    finally:
        for proc in (reader, writer):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, (rc, err) in results.items():
        assert rc not in (0, 124, 137, -9), f"dd {name}: exit {rc}: {err}"
        assert "Input/output error" in err, f"dd {name}: {err}"

    # A new reader fails at once too; the mount answers ENOTCONN rather than hanging.
    late = run(
        "timeout",
        "-s",
        "KILL",
        "20",
        "dd",
        f"if={dev}",
        "of=/dev/null",
        "bs=4k",
        "count=1",
        "iflag=direct",
        check=False,
    )
    assert late.returncode not in (0, 124, 137), late
    assert "Input/output error" in late.stderr, late.stderr
    probe = run("timeout", "-s", "KILL", "20", "stat", m.path / "zram0" / "mm_stat", check=False)
    assert probe.returncode not in (0, 124, 137), probe
    assert "not connected" in probe.stderr, probe.stderr

    res = zramfs_cmd("umount", "--force", m.path)
    assert dev in res.stdout, res.stdout
    assert not is_mounted(m.path)
    assert loop_backing(dev) is None
    registry.loops.remove(dev)  # detached: the number may now be someone else's
    assert not pidfile(m).exists()
    assert not process_running(pid)
    print(
        f"\nkill -9: dd reader and writer failed with EIO {fail_s:.2f} s after the kill; "
        f"stat on the mount: {probe.stderr.strip()}; zramfs umount --force detached {dev}"
    )


def test_kill_9_under_a_mounted_ext4(registry: Resources, tmp_path: Path) -> None:
    """The same with a filesystem on the loop device and a program writing into it."""
    require("mkfs.ext4")
    m = registry.mount_zramfs(size="128M")
    pid = m.pid()
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", dev)
    target = registry.mount(dev, tmp_path / "ext4")
    writer = subprocess.Popen(
        [
            "timeout",
            "-s",
            "KILL",
            str(DD_TIMEOUT),
            "sh",
            "-c",
            f"while :; do dd if=/dev/urandom of={target}/f bs=1M count=4 conv=fsync "
            "status=none || exit 1; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        assert writer.poll() is None, writer.communicate()
        os.kill(pid, signal.SIGKILL)
        try:
            _, err = writer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the writer hangs after the daemon was killed:\n{kernel_stacks(writer.pid)}"
            )
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 1, (writer.returncode, err)
    assert "Input/output error" in err or "Read-only file system" in err, err

    res = zramfs_cmd("umount", "--force", m.path)
    assert dev in res.stdout and str(target) in res.stdout, res.stdout
    assert wait_for(lambda: loop_backing(dev) is None, 10), f"{dev} still attached"
    registry.loops.remove(dev)
    assert not is_mounted(target) and not is_mounted(m.path)
    registry.mounts.remove(str(target))
    assert not pidfile(m).exists()
    print(
        f"\nkill -9 under ext4: the writer failed with: {err.strip().splitlines()[-1]}; "
        f"zramfs umount --force: {' / '.join(res.stdout.strip().splitlines())}"
    )


# -- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_with_nothing_attached_unmounts_cleanly(registry: Resources) -> None:
    m = registry.mount_zramfs(size="64M")
    pid = m.pid()
    m.pwrite(text_bytes(MiB, seed=2), 0)
    start = log_size(m)
    os.kill(pid, signal.SIGTERM)
    assert wait_exit(pid, 20), f"daemon still running:\n{kernel_stacks(pid)}"
    assert wait_for(lambda: not is_mounted(m.path), 5)
    assert not pidfile(m).exists()
    log = log_since(m, start)
    assert "SIGTERM: unmounting" in log and "stopped" in log, log
    assert "unexpected error" not in log


def test_sigterm_while_an_image_is_in_use_keeps_serving(registry: Resources) -> None:
    m = registry.mount_zramfs(size="64M")
    pid = m.pid()
    dev = registry.loop(m.image())
    data = mixed_data(4 * MiB, seed=3)
    direct_write(dev, 0, data)
    start = log_size(m)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: "SIGTERM ignored" in log_since(m, start), 10), log_since(m, start)
    log = log_since(m, start)
    assert "zram0 (opened 1x)" in log, log
    assert f"held by {dev}" in log, log
    time.sleep(0.5)
    assert process_running(pid) and is_mounted(m.path)
    # I/O still works, both ways, and the control files answer.
    assert direct_read(dev, 0, 4 * MiB) == data
    more = mixed_data(2 * MiB, seed=4)
    direct_write(dev, 8 * MiB, more)
    assert direct_read(dev, 8 * MiB, 2 * MiB) == more
    assert m.mm_stat().orig_data_size >= 6 * MiB
    # A second signal is refused too (the watcher keeps going).
    os.kill(pid, signal.SIGINT)
    assert wait_for(lambda: "SIGINT ignored" in log_since(m, start), 10)
    assert process_running(pid)
    print(f"\nSIGTERM in use, the daemon logged: {log.strip().splitlines()[-1]}")


# -- reset / hot_remove of a busy device ------------------------------------------------------


def test_reset_and_hot_remove_of_a_device_in_use_are_ebusy(registry: Resources) -> None:
    m = registry.mount_zramfs(size="64M")
    dev = registry.loop(m.image())
    direct_write(dev, 0, mixed_data(16 * MiB, seed=5))
    before_sum, before = direct_sha256(dev, 0, 64 * MiB), m.mm_stat()
    for value in ("1", "1\n", "42"):
        assert m.write("reset", value) == errno.EBUSY, value
    for value in ("0", "0\n"):
        assert ctl_write(m.path / "hot_remove", value) == errno.EBUSY, value
    assert m.mm_stat() == before
    assert direct_sha256(dev, 0, 64 * MiB) == before_sum
    assert m.read("initstate") == "1\n" and (m.path / "zram0").is_dir()
    registry.detach(dev)

    # An open of the image by any process holds it the same way.
    fd = os.open(m.image(), os.O_RDONLY)
    try:
        assert m.write("reset", "1") == errno.EBUSY
        assert ctl_write(m.path / "hot_remove", "0") == errno.EBUSY
        digest = hashlib.sha256(os.pread(fd, 16 * MiB, 0)).hexdigest()
        assert digest == direct_sha256(str(m.image()), 0, 16 * MiB)
    finally:
        os.close(fd)
    assert m.mm_stat() == before
    # Once released, reset works: the EBUSY was the use, not something else.
    assert m.write("reset", "1") == 0
    assert m.read("initstate") == "0\n"


# -- fio verify -----------------------------------------------------------------------------------

FIO_GLOBAL = """\
[global]
ioengine=libaio
direct=1
verify=crc32c
verify_fatal=1
do_verify=1
randrepeat=1
verify_state_save=0
buffer_compress_percentage=50
refill_buffers=1
runtime=90
loops=2
"""

# (name, options): per device, three regions of 64 MiB, each with its own job.
FIO_JOBS = (
    (
        "qd1-rand-4k-aligned",
        "rw=randwrite\niodepth=1\nblockalign=4k\n"
        "bssplit=4k/40:8k/15:64k/20:256k/15:1m/10\noffset={base}\nsize=56m\n",
    ),
    (
        "qd16-rand-unaligned",
        "rw=randwrite\niodepth=16\nblockalign=512\n"
        "bssplit=512/15:1k/10:3584/10:4k/20:12k/15:64k/15:256k/10:1m/5\n"
        "offset={base_plus_64m_512}\nsize=56m\n",
    ),
    (
        "qd64-seq-unaligned",
        "rw=write\niodepth=64\nblockalign=512\nverify_backlog=512\n"
        "bssplit=512/10:2560/10:4k/20:20k/20:128k/20:1m/20\n"
        "offset={base_plus_128m_1536}\nsize=56m\n",
    ),
)


def fio_jobfile(devs: list[str]) -> str:
    parts = [FIO_GLOBAL]
    for n, dev in enumerate(devs):
        for name, options in FIO_JOBS:
            body = options.format(
                base=0, base_plus_64m_512=64 * MiB + 512, base_plus_128m_1536=128 * MiB + 1536
            )
            parts.append(f"[{name}-dev{n}]\nfilename={dev}\n{body}")
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["one-device", "two-devices"])
def test_fio_verify(registry: Resources, tmp_path: Path, devices: int) -> None:
    require("fio")
    m = registry.mount_zramfs(size="256M", devices=devices)
    devs = [registry.loop(m.image(n)) for n in range(devices)]
    jobfile = tmp_path / "verify.fio"
    jobfile.write_text(fio_jobfile(devs))
    out = tmp_path / "fio.json"
    started = time.monotonic()
    res = subprocess.run(  # in tmp_path: fio may leave *-verify.state files where it runs
        ["fio", "--output-format=json", f"--output={out}", str(jobfile)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else {}
    assert res.returncode == 0, f"fio exit {res.returncode}: {res.stderr}\n{res.stdout}"
    jobs = report["jobs"]
    assert len(jobs) == 3 * devices
    for job in jobs:
        assert job["error"] == 0, (job["jobname"], job["error"])
        assert job["write"]["io_bytes"] >= 56 * MiB, job["jobname"]
        # Every byte written was read back and its crc32c checked.
        assert job["read"]["io_bytes"] >= 56 * MiB, (job["jobname"], job["read"]["io_bytes"])
    for n in range(devices):
        io = m.io_stat(n)
        assert (io.failed_reads, io.failed_writes) == (0, 0), io
    assert "unexpected error" not in log_since(m, 0)
    figures = "; ".join(
        f"{j['jobname']}: write {j['write']['bw'] / 1024:.0f} MiB/s "
        f"({j['write']['total_ios']} I/Os, {j['write']['io_bytes'] // MiB} MiB), "
        f"verify-read {j['read']['bw'] / 1024:.0f} MiB/s ({j['read']['io_bytes'] // MiB} MiB)"
        for j in jobs
    )
    mm = [m.mm_stat(n) for n in range(devices)]
    ratio = sum(s.orig_data_size for s in mm) / max(sum(s.mem_used_total for s in mm), 1)
    print(
        f"\nfio verify ({devices} device(s)), {elapsed:.1f} s, no error, no mismatch; "
        f"{figures}; orig/mem_used {ratio:.2f}"
    )


# -- fuzzing control files ----------------------------------------------------------------------

# The errnos a kernel zram attribute may answer with (0: accepted).
EXPECTED: dict[str, set[int]] = {
    "disksize": {0, errno.EINVAL, errno.EBUSY, errno.ENOMEM},
    "reset": {0, errno.EINVAL, errno.EBUSY, errno.ERANGE},
    "comp_algorithm": {0, errno.EINVAL, errno.EBUSY, errno.E2BIG},
    "algorithm_params": {0, errno.EINVAL, errno.EBUSY, errno.ERANGE},  # ERANGE: kstrtoint
    "mem_limit": {0, errno.EINVAL, errno.ERANGE},
    "mem_used_max": {0, errno.EINVAL, errno.ERANGE},
    "compact": {0, errno.EINVAL},
    "idle": {0, errno.EINVAL, errno.ERANGE},
    "initstate": {errno.EACCES},
    "mm_stat": {errno.EACCES},
    "io_stat": {errno.EACCES},
    "debug_stat": {errno.EACCES},
    "stats": {errno.EACCES},
}
ROOT_EXPECTED = {
    "hot_add": {errno.EACCES},
    "hot_remove": {0, errno.EINVAL, errno.ENODEV, errno.EBUSY, errno.ERANGE},
}
TOKENS = [
    b"0",
    b"1",
    b"7",
    b"4096",
    b"10000",
    b"64M",
    b"1G",
    b"3T",
    b"15E",
    b"16E",
    b"0x1000",
    b"0xffffffffffffffff",
    b"0777",
    b"-1",
    b"+5",
    b"18446744073709551616",
    b"9" * 30,
    b"all",
    b"lz4",
    b"lz4hc",
    b"zstd",
    b"deflate",
    b"lzo",
    b"lzo-rle",
    b"algo=zstd",
    b"level=3",
    b"level=99",
    b"level=-7",
    b"level=99999999999",
    b"level",
    b"bogus=1",
    b"deflate.winbits=99",
    b'"level=3"',
    b"dict=/etc/hostname",
    b"dict=/nonexistent",
    b"priority=1",
    b"algo=",
    b"=",
    b" ",
    b"\t",
    b"\n",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"K",
    b"m",
    b"3600",
    b"1.5",
    b"[lz4]",
    b"%s%n",
    b"../../etc/passwd",
]


def fuzz_payload(rng: random.Random) -> bytes:
    """Random bytes of random length (0..5000), or tokens that get past the first checks."""
    kind = rng.random()
    if kind < 0.45:
        return rng.randbytes(rng.randint(0, 5000))
    if kind < 0.55:
        return rng.randbytes(rng.randint(0, 16))
    parts = [rng.choice(TOKENS) for _ in range(rng.randint(1, 4))]
    text = rng.choice([b"", b" ", b"\n", b"\x00"]).join(parts)
    if rng.random() < 0.3:
        text += b"\n"
    if rng.random() < 0.1:  # near-valid but over a page
        text += b" " * rng.randint(4000, 5000)
    if rng.random() < 0.2 and text:
        i = rng.randrange(len(text))
        text = text[:i] + bytes([rng.randrange(256)]) + text[i + 1 :]
    return text


def check_answers(m: ZramMount) -> None:
    """Every file of every device still reads, and every image still stats (no EIO)."""
    assert m.read("mm_stat")
    for d in sorted(m.path.glob("zram*")):
        os.stat(d / "image")
        for name in (
            "disksize",
            "initstate",
            "comp_algorithm",
            "mm_stat",
            "io_stat",
            "debug_stat",
            "stats",
        ):
            (d / name).read_bytes()


def test_fuzz_control_files(registry: Resources) -> None:
    m = registry.mount_zramfs(size="0", devices=2)
    m.set("disksize", "64M")
    data = mixed_data(8 * MiB, seed=6)
    m.pwrite(data, 0)
    digest = hashlib.sha256(data).hexdigest()
    rng = random.Random(20251125)
    outcomes: dict[str, dict[str, int]] = {}
    bad: list[str] = []
    removed: list[bytes] = []

    def fuzz(path: Path, expected: set[int], label: str) -> None:
        tally = outcomes.setdefault(label, {})
        for _ in range(200):
            payload = fuzz_payload(rng)
            got = ctl_write(path, payload)
            # An empty write never reaches the daemon (the kernel answers 0 itself).
            key = "empty" if not payload and got == 0 else errname(got)
            tally[key] = tally.get(key, 0) + 1
            if got == 0 and payload and label == "hot_remove":
                removed.append(payload)
            if got not in expected:
                bad.append(f"{label} <- {payload[:60]!r} (len {len(payload)}): {errname(got)}")
            if len(payload) > 4096 and got != errno.EACCES and got != errno.EINVAL:
                bad.append(f"{label}: {len(payload)}-byte write answered {errname(got)}")

    # zram0 holds data and is open, as a loop device would hold it: nothing may change it.
    holder = os.open(m.image(), os.O_RDONLY)
    try:
        for name, expected in EXPECTED.items():
            fuzz(m.dev(0) / name, expected, f"zram0/{name}")
            check_answers(m)
        # zram1 is free to change state (initialise, reset) under the fuzz.
        for name, expected in EXPECTED.items():
            if (m.path / "zram1").exists():
                fuzz(m.dev(1) / name, expected, f"zram1/{name}")
                check_answers(m)
        for name, expected in ROOT_EXPECTED.items():
            fuzz(m.path / name, expected, name)
            check_answers(m)
        assert hashlib.sha256(m.pread(8 * MiB, 0)).hexdigest() == digest
    finally:
        os.close(holder)
    assert m.read("initstate") == "1\n"
    assert m.disksize() == 64 * MiB
    assert not bad, "\n".join(bad[:30])
    log = log_since(m, 0)
    assert "unexpected error" not in log, log[-4000:]
    assert process_running(m.pid())
    print(
        "\ncontrol-file fuzz (200 writes each): "
        + "; ".join(
            f"{label} " + ",".join(f"{k}x{v}" for k, v in sorted(t.items()))
            for label, t in outcomes.items()
        )
        + f"; hot_remove accepted: {removed!r}"
    )


# -- fuzzing the image -----------------------------------------------------------------------


def test_fuzz_image(registry: Resources) -> None:
    disksize = 64 * MiB
    guarded = 4 * MiB
    m = registry.mount_zramfs(size="64M")
    shadow = bytearray(disksize)
    first = mixed_data(guarded, seed=7)
    m.pwrite(first, 0)
    shadow[:guarded] = first
    digest = hashlib.sha256(first).hexdigest()
    rng = random.Random(7_2025)
    text = text_bytes(3 * MiB, seed=8)
    counts: dict[str, int] = {}
    bad: list[str] = []
    fd = os.open(m.image(), os.O_RDWR)

    def tally(what: str) -> None:
        counts[what] = counts.get(what, 0) + 1

    def offset() -> int:
        r = rng.random()
        if r < 0.5:
            return rng.randrange(0, disksize)
        if r < 0.7:
            return disksize + rng.randint(-3 * 4096, 3 * 4096)
        if r < 0.8:
            return disksize + rng.randrange(1 << 40)
        if r < 0.9:
            return MAX_OFF - rng.randrange(1 << 21)
        return -rng.randint(1, 1 << 20)

    def length() -> int:
        r = rng.random()
        if r < 0.6:
            return rng.randint(0, 3 * 4096)
        if r < 0.9:
            return rng.randint(0, 256 * 1024)
        return rng.randint(0, 2 * MiB + 4096)

    try:
        for _ in range(600):
            op = rng.choice(["write", "write", "read", "read", "truncate"])
            off, size = offset(), length()
            if op == "write":
                if 0 <= off < guarded:  # the guarded region is only ever read
                    off += guarded
                if rng.random() < 0.3:
                    buf = rng.randbytes(size)
                else:
                    at = rng.randrange(MiB)
                    buf = text[at : at + size]
                try:
                    done = os.pwrite(fd, buf, off)
                except OSError as exc:
                    tally(f"write {errname(exc.errno or 0)}")
                    ok = (
                        (exc.errno == errno.ENOSPC and off >= disksize)
                        or (exc.errno == errno.EFBIG and off + size > MAX_OFF)
                        # the kernel's rw_verify_area: a negative or overflowing range
                        or (exc.errno == errno.EINVAL and (off < 0 or off + size > MAX_OFF))
                    )
                    if not ok:
                        bad.append(f"pwrite({size}, {off}): {errname(exc.errno or 0)}")
                    continue
                tally("write ok")
                want = max(0, min(size, disksize - off)) if off < disksize else 0
                if done != want and not (size == 0 and done == 0):
                    bad.append(f"pwrite({size}, {off}) wrote {done}, expected {want}")
                if done:
                    shadow[off : off + done] = buf[:done]
            elif op == "read":
                try:
                    got = os.pread(fd, size, off)
                except OSError as exc:
                    tally(f"read {errname(exc.errno or 0)}")
                    if not (exc.errno == errno.EINVAL and (off < 0 or off + size > MAX_OFF)):
                        bad.append(f"pread({size}, {off}): {errname(exc.errno or 0)}")
                    continue
                tally("read ok")
                want_bytes = bytes(shadow[off : off + size]) if off < disksize else b""
                if got != want_bytes:
                    bad.append(f"pread({size}, {off}): {len(got)} bytes differ from the model")
            else:
                new_size = rng.choice([0, disksize, disksize - 4096, disksize + 1, off])
                try:
                    os.ftruncate(fd, new_size)
                except OSError as exc:
                    tally(f"truncate {errname(exc.errno or 0)}")
                    if exc.errno not in (errno.EINVAL, errno.EFBIG, errno.EPERM):
                        bad.append(f"ftruncate({new_size}): {errname(exc.errno or 0)}")
                    continue
                tally("truncate ok")
                if new_size not in (0, disksize):
                    bad.append(f"ftruncate({new_size}) was accepted")
                assert os.fstat(fd).st_size == disksize
        assert not bad, "\n".join(bad[:30])
        assert hashlib.sha256(os.pread(fd, guarded, 0)).hexdigest() == digest
        whole = bytearray()
        while len(whole) < disksize:
            whole += os.pread(fd, 4 * MiB, len(whole))
        assert whole == shadow, "the image differs from the model of the writes"
    finally:
        os.close(fd)
    log = log_since(m, 0)
    assert "unexpected error" not in log, log[-4000:]
    io = m.io_stat()
    assert (io.failed_reads, io.failed_writes) == (0, 0), io
    print("\nimage fuzz (600 ops): " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
