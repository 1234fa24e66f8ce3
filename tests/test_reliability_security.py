"""Security: only root reads an image or changes a device.

Without --allow-other, FUSE keeps every other user out of the mount altogether.  With it,
the modes do the work, as on /sys/block/zramN: the image is 0600 root, the control files
root-writable only, hot_add root-readable only (reading it creates a device), while the
statistics stay world-readable.  The checks run as nobody (setpriv, and su for a shell),
from a mount point under a world-traversable directory, so that a refusal comes from zramfs
and not from the path.  Control writes are bounded: more than a page is EINVAL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    MiB,
    Resources,
    ZramMount,
    ctl_write,
    is_zramfs_mount,
    run,
    text_bytes,
    zramfs_cmd,
)

pytestmark = pytest.mark.mount

NOBODY = 65534
# The system's interpreter: nobody must be able to run it (not a shim under /root).
PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
    "python3",
)

# Run as nobody: try each operation, print {name: errno or 0 (or "data" for reads)}.
PROBE = r"""
import json, os, sys
base = sys.argv[1]
out = {}
def attempt(name, fn):
    try:
        r = fn()
        out[name] = ["ok", r]
    except OSError as e:
        out[name] = ["err", e.errno]
def read(p):
    with open(os.path.join(base, p), "rb") as f:
        return f.read().decode(errors="replace")
def write(p, data):
    fd = os.open(os.path.join(base, p), os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)
attempt("listdir", lambda: sorted(os.listdir(base)))
attempt("listdir zram0", lambda: sorted(os.listdir(os.path.join(base, "zram0"))))
for name in ("mm_stat", "io_stat", "stats", "disksize", "comp_algorithm", "initstate",
             "debug_stat"):
    attempt("read " + name, lambda name=name: read("zram0/" + name))
attempt("read image", lambda: len(read("zram0/image")))
attempt("write image", lambda: write("zram0/image", b"x" * 4096))
attempt("read hot_add", lambda: read("hot_add"))
for name in ("compact", "reset", "mem_limit", "disksize", "idle", "mem_used_max",
             "comp_algorithm", "algorithm_params"):
    attempt("write " + name, lambda name=name: write("zram0/" + name, b"1\n"))
attempt("write hot_remove", lambda: write("hot_remove", b"0\n"))
attempt("chmod image", lambda: os.chmod(os.path.join(base, "zram0/image"), 0o666))
print(json.dumps(out))
"""


def as_nobody(*argv: str) -> tuple[int, str, str]:
    res = run(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv, check=False
    )
    return res.returncode, res.stdout, res.stderr


def probe(mountpoint: Path) -> dict[str, list[object]]:
    rc, out, err = as_nobody(PYTHON, "-c", PROBE, str(mountpoint))
    assert rc == 0, err
    return {k: v for k, v in json.loads(out).items()}


@pytest.fixture
def open_dir(registry: Resources) -> Iterator[Path]:
    """A directory every user can traverse, for mount points; removed after the mounts."""
    path = Path(tempfile.mkdtemp(prefix="zramfs-security-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        problems = registry.cleanup()  # unmount first; the registry's own teardown is a no-op
        shutil.rmtree(path, ignore_errors=True)
        assert not problems, problems


def mount(registry: Resources, mountpoint: Path, *extra: str) -> ZramMount:
    registry.zramfs_mounts.append(mountpoint)
    zramfs_cmd("mount", mountpoint, "-s", "64M", *extra)
    assert is_zramfs_mount(mountpoint)
    m = ZramMount(mountpoint)
    m.pwrite(text_bytes(MiB, seed=9), 0)
    return m


def test_other_users_cannot_enter_a_mount_without_allow_other(
    registry: Resources, open_dir: Path
) -> None:
    m = mount(registry, open_dir / "private")
    results = probe(m.path)
    # FUSE refuses everything to a user other than the mounter: even the statistics.
    assert all(v == ["err", errno.EACCES] for v in results.values()), results
    for path in (m.path, m.dev() / "mm_stat", m.image()):
        rc, _, err = as_nobody("cat", str(path))
        assert rc != 0 and "Permission denied" in err, (path, err)
    res = run("su", "nobody", "-s", "/bin/sh", "-c", f"cat {m.image()} | head -c 1", check=False)
    assert "Permission denied" in res.stderr, res
    assert "Permission denied" in as_nobody("ls", str(m.path))[2]


def test_with_allow_other_only_root_reads_images_and_writes_control_files(
    registry: Resources, open_dir: Path
) -> None:
    m = mount(registry, open_dir / "shared", "--allow-other")
    assert "allow_other" in next(
        line for line in Path("/proc/mounts").read_text().splitlines() if str(m.path) in line
    )
    before_mm, before_list = m.read("mm_stat"), sorted(os.listdir(m.path))
    image = m.pread(MiB, 0)
    results = probe(m.path)

    # The statistics and settings are readable by all, as on sysfs.
    assert results["listdir"] == ["ok", before_list], results["listdir"]
    assert results["read mm_stat"] == ["ok", before_mm]
    for name in ("io_stat", "stats", "disksize", "comp_algorithm", "initstate", "debug_stat"):
        assert results[f"read {name}"][0] == "ok", (name, results[f"read {name}"])
    # Nothing else: the image (0600 root), every write, hot_add (0400: reading creates).
    refused = [
        k
        for k in results
        if k.startswith(("write", "chmod")) or k in ("read image", "read hot_add")
    ]
    assert len(refused) == 13
    for key in refused:
        expected = errno.EPERM if key.startswith("chmod") else errno.EACCES
        assert results[key] == ["err", expected], (key, results[key])
    rc, _, err = as_nobody("cat", str(m.image()))
    assert rc != 0 and "Permission denied" in err, err
    res = run("su", "nobody", "-s", "/bin/sh", "-c", f"echo 1 > {m.dev()}/reset", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr, res

    # Nothing changed: no device created, no reset, no data read or written.
    assert sorted(os.listdir(m.path)) == before_list
    assert m.read("mm_stat") == before_mm
    assert m.pread(MiB, 0) == image
    st = m.image().stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert (os.stat(m.path / "hot_add").st_mode & 0o777) == 0o400
    # Even root cannot loosen the modes.
    with pytest.raises(PermissionError):
        os.chmod(m.image(), 0o644)
    print(
        "\nsecurity (--allow-other), as nobody: "
        + ", ".join(
            f"{k}: {'ok' if v[0] == 'ok' else errno.errorcode[int(str(v[1]))]}"
            for k, v in results.items()
        )
    )


def test_control_writes_are_bounded(registry: Resources, tmp_path: Path) -> None:
    m = registry.mount_zramfs(size="64M")
    m.set("mem_limit", "32M")
    # One page is the most sysfs hands an attribute: up to 4096 bytes are read ...
    assert m.write("mem_limit", b"48M" + b" " * (4096 - 3)) == 0
    assert m.mm_stat().mem_limit == 48 * MiB
    # ... more is refused whole, whatever it holds, and changes nothing.
    for size in (4097, 5000, 65536, 1024 * 1024):
        for name, payload in (
            ("mem_limit", b"16M"),
            ("compact", b"1"),
            ("reset", b"1"),
            ("comp_algorithm", b"zstd"),
        ):
            data = payload + b" " * (size - len(payload))
            assert m.write(name, data) == errno.EINVAL, (name, size)
        assert ctl_write(m.path / "hot_remove", b"0" + b"\n" * (size - 1)) == errno.EINVAL
    assert m.mm_stat().mem_limit == 48 * MiB
    assert m.read("initstate") == "1\n"
