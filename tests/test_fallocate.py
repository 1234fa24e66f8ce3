"""FUSE fallocate through the _fallocate shim, on a real mount.

tests/fallocate_fs.py runs in a subprocess: a pyfuse3 filesystem with one 64 MiB file whose
fallocate handler logs each call as a JSON line. The tests punch holes in that file directly
(util-linux fallocate) and through a loop device (blkdiscard, mkfs.ext4 + fstrim) and check what
reached the handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zramfs.fusepatch import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE

HELPER = Path(__file__).with_name("fallocate_fs.py")
SIZE = 64 * 1024 * 1024  # fallocate_fs.SIZE
FAIL_OFFSET = 60 * 1024 * 1024  # fallocate_fs.FAIL_OFFSET
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
MiB = 1024 * 1024


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mount, loop devices)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    for tool in ("fallocate", "losetup", "blkdiscard", "fusermount3", "mkfs.ext4", "fstrim"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


needs_mount = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {res.returncode}: {res.stderr.strip()}")
    return res


@dataclass
class Mount:
    image: Path
    log: Path

    def mark(self) -> int:
        return self.log.stat().st_size

    def calls_since(self, mark: int) -> list[dict[str, Any]]:
        with self.log.open() as f:
            f.seek(mark)
            return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Mount]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    stderr = (tmp_path / "helper.err").open("w+")
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(mnt), str(log)],
        stdout=stderr,
        stderr=stderr,
    )
    try:
        ready = Path(str(log) + ".ready")
        deadline = time.monotonic() + 15
        while not (ready.exists() and os.path.ismount(mnt)):
            if proc.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"fallocate_fs exited with {proc.returncode}:\n{stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("fallocate_fs did not mount within 15 s")
            time.sleep(0.05)
        yield Mount(mnt / "image", log)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if os.path.ismount(mnt):  # daemon gone but the mount left behind
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        stderr.close()


@contextlib.contextmanager
def loop_device(path: Path) -> Iterator[str]:
    dev = run("losetup", "-f", "--show", str(path)).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.mount
@needs_mount
def test_punch_hole_on_fuse_file(fs: Mount) -> None:
    offset, length = 1 * MiB + 12288, 40960
    with fs.image.open("r+b") as f:
        f.seek(offset - 4096)
        f.write(b"\xab" * (length + 8192))
    ino = fs.image.stat().st_ino

    mark = fs.mark()
    run(
        "fallocate", "--punch-hole", "--offset", str(offset), "--length", str(length), str(fs.image)
    )

    calls = fs.calls_since(mark)
    assert [(c["ino"], c["mode"], c["offset"], c["length"]) for c in calls] == [
        (ino, PUNCH, offset, length)
    ]
    # The hole reads back as zeros (the kernel dropped its cached pages); its neighbours do not.
    with fs.image.open("rb") as f:
        f.seek(offset - 4096)
        data = f.read(length + 8192)
    assert data == b"\xab" * 4096 + bytes(length) + b"\xab" * 4096


@pytest.mark.mount
@needs_mount
def test_zero_range_on_fuse_file(fs: Mount) -> None:
    mark = fs.mark()
    run("fallocate", "--zero-range", "--offset", "8192", "--length", "4096", str(fs.image))
    calls = fs.calls_since(mark)
    assert [(c["mode"], c["offset"], c["length"]) for c in calls] == [
        (FALLOC_FL_ZERO_RANGE, 8192, 4096)
    ]


@pytest.mark.mount
@needs_mount
def test_handler_exception_becomes_eio(fs: Mount) -> None:
    mark = fs.mark()
    res = subprocess.run(
        [
            "fallocate",
            "--punch-hole",
            "--offset",
            str(FAIL_OFFSET),
            "--length",
            "4096",
            str(fs.image),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "Input/output error" in res.stderr
    assert len(fs.calls_since(mark)) == 1
    # The daemon survived and still serves fallocate.
    mark = fs.mark()
    run("fallocate", "--punch-hole", "--offset", "0", "--length", "4096", str(fs.image))
    assert [(c["mode"], c["offset"]) for c in fs.calls_since(mark)] == [(PUNCH, 0)]


@pytest.mark.mount
@needs_mount
def test_blkdiscard_through_loop_device(fs: Mount) -> None:
    offset, length = 3 * MiB, 2 * MiB + 8192
    with loop_device(fs.image) as dev:
        name = os.path.basename(dev)
        discard_max = int(Path(f"/sys/block/{name}/queue/discard_max_bytes").read_text())
        assert discard_max > 0, "loop device has no discard (does the FUSE fs answer statfs?)"

        mark = fs.mark()
        run("blkdiscard", "-o", str(offset), "-l", str(length), dev)
        calls = fs.calls_since(mark)
        assert [(c["mode"], c["offset"], c["length"]) for c in calls] == [(PUNCH, offset, length)]

        # Write-zeroes: ZERO_RANGE|KEEP_SIZE on current kernels (REQ_NOUNMAP), PUNCH on older.
        mark = fs.mark()
        run("blkdiscard", "-z", "-o", str(8 * MiB), "-l", "65536", dev)
        calls = fs.calls_since(mark)
        assert len(calls) == 1
        assert calls[0]["mode"] in (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, PUNCH)
        assert (calls[0]["offset"], calls[0]["length"]) == (8 * MiB, 65536)


@pytest.mark.mount
@needs_mount
def test_fstrim_on_ext4_over_loop_device(fs: Mount, tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    ext.mkdir()
    with loop_device(fs.image) as dev:
        mark = fs.mark()
        run("mkfs.ext4", "-q", "-F", "-b", "4096", dev)
        assert any(c["mode"] == PUNCH for c in fs.calls_since(mark)), "mkfs sent no discard"

        run("mount", dev, str(ext))
        try:
            with (ext / "data").open("wb") as f:
                f.write(os.urandom(8 * MiB))
            run("sync")
            (ext / "data").unlink()
            run("sync")
            mark = fs.mark()
            run("fstrim", str(ext))
        finally:
            subprocess.run(["umount", str(ext)], capture_output=True)

        calls = fs.calls_since(mark)
        assert calls, "fstrim sent no fallocate"
        assert all(c["mode"] == PUNCH for c in calls)
        assert all(c["offset"] % 4096 == 0 and c["length"] % 4096 == 0 for c in calls)
        assert all(0 <= c["offset"] and c["offset"] + c["length"] <= SIZE for c in calls)
        assert sum(c["length"] for c in calls) >= 8 * MiB


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: install() is process-wide and order-sensitive.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_install_after_pyfuse3_is_refused() -> None:
    res = _python("import pyfuse3\nfrom zramfs import fusepatch\nfusepatch.install()")
    assert res.returncode != 0
    assert "RuntimeError" in res.stderr and "before pyfuse3 is imported" in res.stderr


def test_set_handler_needs_install() -> None:
    res = _python("from zramfs import fusepatch\nfusepatch.set_fallocate_handler(lambda *a: 0)")
    assert res.returncode != 0
    assert "RuntimeError" in res.stderr and "install()" in res.stderr


def test_install_then_pyfuse3_is_accepted() -> None:
    code = (
        "from zramfs import fusepatch\n"
        "fusepatch.install(); fusepatch.install()\n"
        "import pyfuse3\n"
        "fusepatch.set_fallocate_handler(lambda *a: 0)\n"
        "assert not fusepatch.hooked()  # no session created yet\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
