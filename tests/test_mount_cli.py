"""The `zramfs` command's three verbs, as a new user meets them: mount, status, umount."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import (
    PAGE,
    GiB,
    LoopFactory,
    MiB,
    Resources,
    ZramfsFactory,
    is_mounted,
    is_zramfs_mount,
    loop_backing,
    process_running,
    require,
    run,
    text_bytes,
    wait_for,
    zramfs_cmd,
)

pytestmark = pytest.mark.mount

HEADER = ["NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "MEM-LIMIT", "MOUNTPOINT"]


# -- mount ----------------------------------------------------------------------------------


def test_mount_defaults(zramfs: ZramfsFactory) -> None:
    m = zramfs(size=None, algo=None)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    expected = min(ram // 2, 4 * GiB) // PAGE * PAGE
    assert sorted(os.listdir(m.path)) == ["hot_add", "hot_remove", "metrics", "zram0"]
    assert m.disksize() == expected
    assert m.image().stat().st_size == expected
    assert m.read("initstate") == "1\n"
    assert "[lz4]" in m.read("comp_algorithm").split()
    assert m.mm_stat().mem_limit == 0
    # The daemon is running and serves I/O the moment the command returned.
    assert process_running(m.pid())
    data = text_bytes(64 * 1024, seed=21)
    m.pwrite(data, expected - len(data))
    assert m.pread(len(data), expected - len(data)) == data


def test_mount_with_options(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="300M", algo="zstd", mem_limit="100M", devices=3)
    assert sorted(os.listdir(m.path)) == [
        "hot_add", "hot_remove", "metrics", "zram0", "zram1", "zram2"
    ]
    for n in range(3):
        assert m.disksize(n) == 300 * MiB
        assert "[zstd]" in m.read("comp_algorithm", n).split()
        assert m.mm_stat(n).mem_limit == 100 * MiB
    # /proc/mounts names the filesystem type for tools that look for it.
    entries = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    assert [e[0] for e in entries if e[1] == str(m.path) and e[2] == "fuse.zramfs"] == ["zramfs"]


def test_mount_refuses_bad_arguments_and_double_mounts(
    zramfs: ZramfsFactory, registry: Resources, tmp_path: Path
) -> None:
    m = zramfs(size="64M")
    bad = tmp_path / "bad"
    registry.zramfs_mounts.append(bad)  # cleaned up should a bad mount succeed
    res = zramfs_cmd("mount", m.path, "-s", "64M", check=False)
    assert res.returncode != 0 and "already mounted" in res.stderr, res
    assert is_zramfs_mount(m.path)
    for args in (["-a", "lzo"], ["-s", "lots"], ["-n", "0"]):
        res = zramfs_cmd("mount", bad, *args, check=False)
        assert res.returncode != 0 and res.stderr.strip(), (args, res)
        assert not is_mounted(bad), args


# -- status ---------------------------------------------------------------------------------


def test_status_table(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="512M", devices=2, mem_limit="64M")
    m.pwrite(text_bytes(4 * MiB, seed=22), 0)
    lines = zramfs_cmd("status", m.path).stdout.splitlines()
    assert lines[0].split() == HEADER
    assert len(lines) == 3
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == [f"{m.path}/zram0", f"{m.path}/zram1"]
    assert [r[1] for r in rows] == ["lz4", "lz4"]
    assert [r[2] for r in rows] == ["512M", "512M"]
    assert rows[0][3] == "4M"  # DATA
    assert rows[0][6] == "64M"  # MEM-LIMIT
    # Without a mount point: every zramfs mount, ours among them.
    everything = zramfs_cmd("status").stdout
    assert f"{m.path}/zram1" in everything


def test_status_bytes_json_and_columns(zramfs: ZramfsFactory) -> None:
    m = zramfs(size="512M")
    m.pwrite(text_bytes(2 * MiB, seed=23), 0)
    s = m.mm_stat()
    rows = [r.split() for r in zramfs_cmd("status", "-b", m.path).stdout.splitlines()]
    assert rows[0] == HEADER
    assert rows[1][2:6] == [
        str(512 * MiB),
        str(s.orig_data_size),
        str(s.compr_data_size),
        str(s.mem_used_total),
    ]

    doc = json.loads(zramfs_cmd("status", "--json", "-b", m.path).stdout)
    (dev,) = doc["zramctl"]
    assert set(dev) == {h.lower() for h in HEADER}
    assert dev["name"] == f"{m.path}/zram0"
    assert dev["algorithm"] == "lz4"
    assert (dev["disksize"], dev["data"], dev["compr"], dev["total"]) == (
        512 * MiB,
        s.orig_data_size,
        s.compr_data_size,
        s.mem_used_total,
    )

    out = zramfs_cmd("status", "-o", "NAME,DISKSIZE", m.path).stdout.splitlines()
    assert [line.split() for line in out] == [["NAME", "DISKSIZE"], [f"{m.path}/zram0", "512M"]]
    doc = json.loads(zramfs_cmd("status", "--json", "-o", "name,algorithm", m.path).stdout)
    assert doc == {"zramctl": [{"name": f"{m.path}/zram0", "algorithm": "lz4"}]}

    res = zramfs_cmd("status", "-o", "NAME,NOSUCH", m.path, check=False)
    assert res.returncode != 0 and "NOSUCH" in res.stderr


def test_status_mountpoint_column(registry: Resources, tmp_path: Path) -> None:
    require("mkfs.ext4", "mkswap", "swapon")
    m = registry.mount_zramfs(size="256M", devices=4)
    fs_dev = registry.loop(m.image(0))
    run("mkfs.ext4", "-q", "-F", fs_dev)
    target = registry.mount(fs_dev, tmp_path / "ext4")
    swap_dev = registry.loop(m.image(1))
    run("mkswap", swap_dev)
    registry.swapon(swap_dev)
    bare_dev = registry.loop(m.image(2))

    doc = json.loads(zramfs_cmd("status", "--json", "-o", "NAME,MOUNTPOINT", m.path).stdout)
    where = {d["name"].rsplit("/", 1)[1]: d["mountpoint"] for d in doc["zramctl"]}
    assert where["zram0"].split() == [fs_dev, str(target)]
    assert where["zram1"].split() == [swap_dev, "[SWAP]"]
    assert where["zram2"] == bare_dev
    assert where["zram3"] == ""
    table = zramfs_cmd("status", m.path).stdout
    assert any(line.endswith(f"{fs_dev} {target}") for line in table.splitlines()), table
    assert any(line.endswith(f"{swap_dev} [SWAP]") for line in table.splitlines()), table


# -- umount ---------------------------------------------------------------------------------


def test_umount_refuses_while_a_loop_device_holds_an_image(
    zramfs: ZramfsFactory, registry: Resources, tmp_path: Path
) -> None:
    require("mkfs.ext4")
    m = zramfs(size="256M")
    pid = m.pid()
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", dev)
    target = registry.mount(dev, tmp_path / "ext4")
    (target / "hello").write_text("still here\n")

    res = zramfs_cmd("umount", m.path, check=False)
    assert res.returncode != 0
    assert dev in res.stderr and str(target) in res.stderr, res.stderr
    # Nothing was stopped: the mount, the daemon and the filesystem on top all still work.
    assert is_zramfs_mount(m.path) and process_running(pid)
    assert loop_backing(dev) == str(m.image())
    os.sync()
    assert (target / "hello").read_text() == "still here\n"
    assert m.read("initstate") == "1\n"

    registry.umount(target)
    res = zramfs_cmd("umount", m.path, check=False)
    assert res.returncode != 0 and dev in res.stderr, res.stderr  # the loop device still holds it
    registry.detach(dev)

    zramfs_cmd("umount", m.path)
    assert not is_zramfs_mount(m.path)
    assert wait_for(lambda: not process_running(pid), timeout=10)
    pidfile = Path("/run/zramfs") / (str(m.path).strip("/").replace("/", "-") + ".pid")
    assert not pidfile.exists()
    res = zramfs_cmd("umount", m.path, check=False)
    assert res.returncode != 0 and "no zramfs mounted" in res.stderr


def test_umount_succeeds_when_idle(zramfs: ZramfsFactory, loop: LoopFactory) -> None:
    m = zramfs(size="64M")
    pid = m.pid()
    m.pwrite(text_bytes(MiB, seed=24), 0)
    zramfs_cmd("umount", m.path)
    assert not is_zramfs_mount(m.path)
    assert m.path.is_dir() and os.listdir(m.path) == []
    assert wait_for(lambda: not process_running(pid), timeout=10)


def test_umount_force_detaches_everything(registry: Resources, tmp_path: Path) -> None:
    require("mkfs.ext4")
    m = registry.mount_zramfs(size="256M")
    pid = m.pid()
    dev = registry.loop(m.image())
    run("mkfs.ext4", "-q", "-F", dev)
    target = registry.mount(dev, tmp_path / "ext4")
    (target / "file").write_bytes(text_bytes(MiB, seed=25))
    os.sync()

    res = zramfs_cmd("umount", "--force", m.path)
    assert dev in res.stdout, res
    assert not is_zramfs_mount(m.path)
    assert not is_mounted(target)
    assert wait_for(lambda: loop_backing(dev) is None, timeout=20), f"{dev} still attached"
    registry.loops.remove(dev)  # detached: the number may now be someone else's
    registry.mounts.remove(str(target))
    assert wait_for(lambda: not process_running(pid), timeout=10)
