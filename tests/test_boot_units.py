"""Pieces of start/stop/status that need no mount: sd_notify, the bounded log, sizes,
the control-file check, raw escaping and the metrics rendering."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

import pytest

from zramfs import cli, config, report, sdnotify, service
from zramfs.device import ZramDevice


def test_notify_path_and_abstract_sockets(tmp_path: Path) -> None:
    for address in (str(tmp_path / "n.sock"), f"@zramfs-unit-{os.getpid()}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind("\0" + address[1:] if address.startswith("@") else address)
            assert sdnotify.notify("READY=1\nMAINPID=7", env={"NOTIFY_SOCKET": address})
            assert s.recv(100) == b"READY=1\nMAINPID=7"
    assert not sdnotify.notify("READY=1", env={})
    assert not sdnotify.barrier(env={})


def test_barrier_waits_for_the_manager_to_close_its_fd(tmp_path: Path) -> None:
    address = str(tmp_path / "b.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(address)
        # Nobody reads: the barrier times out (False) instead of hanging.
        assert not sdnotify.barrier(timeout=0.1, env={"NOTIFY_SOCKET": address})
        msg, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(4))
        assert msg == b"BARRIER=1" and anc[0][1] == socket.SCM_RIGHTS
        os.close(int.from_bytes(anc[0][2][:4], "little"))


def test_daemon_log_is_rotated_at_a_bound(tmp_path: Path) -> None:
    log_file = tmp_path / "d.log"
    args = argparse.Namespace(log_file=str(log_file), debug=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        cli._setup_logging(args)
        chunk = "x" * 1000
        for _ in range(3000):  # 3 MB of log lines
            logging.getLogger("zramfs.test").info(chunk)
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.log", "d.log.1"]
    assert all((tmp_path / f).stat().st_size <= cli.LOG_MAX_BYTES for f in files)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1G", 1 << 30), ("1GiB", 1 << 30), ("1gib", 1 << 30), ("512MiB", 512 << 20),
     ("1GB", 10**9), ("4KB", 4000), ("4096", 4096), ("0x1000", 4096), ("64M", 64 << 20)],
)
def test_cli_sizes_take_zramctl_forms(text: str, value: int) -> None:
    assert cli.parse_cli_size(text) == value


@pytest.mark.parametrize("bad", ["1GIB2", "G", "-1G", "1 G B", "1GiBB"])
def test_cli_sizes_refuse_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        cli.parse_cli_size(bad)


def test_check_control_files_names_the_missing_one(tmp_path: Path) -> None:
    c = config.evaluate([("/c.conf", f"[zramfs]\nmount = {tmp_path}\n"
                                     "[zram0]\nzram-size = 8\npolicy-interval = 5\n")], 100)
    dev = tmp_path / "zram0"
    dev.mkdir()
    for name in ("comp_algorithm", "mem_limit", "disksize"):
        (dev / name).write_text("")
    with pytest.raises(service.StartError, match=r"zram0/policy_interval does not exist.*"
                                                 r"policy-interval"):
        service.check_control_files(c)
    (dev / "policy_interval").write_text("")
    service.check_control_files(c)


def test_raw_rows_escape_blanks() -> None:
    row = report.StatusRow("/m/zram0", "lz4", 4096, 0, 0, 0, 0, 0, 0, 0, "/dev/loop0 [SWAP]")
    out = report.render_table([row], ["NAME", "MOUNTPOINT"], False, raw=True, headings=False)
    assert out == "/m/zram0 /dev/loop0\\x20[SWAP]\n"


def test_metrics_render_without_a_mount() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    a, b = ZramDevice(0), ZramDevice(3)
    a.write_attr("disksize", b"1M")
    a.store.write(0, b"abc" * 2000)  # type: ignore[union-attr]
    text = report.render_metrics([a.statistics(), b.statistics()])
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    orig = families["zramfs_orig_data_bytes"].samples
    assert [(s.labels, s.value) for s in orig] == [({"device": "zram0"}, 8192)]
    assert families["zramfs_failed_reads"].type == "counter"
    assert {s.labels["device"]: s.value for s in families["zramfs_initialised"].samples} == {
        "zram0": 1, "zram3": 0}


def test_recompress_params_are_checked_and_remembered() -> None:
    import errno

    from zramfs.device import ControlError

    d = ZramDevice(0)
    with pytest.raises(ControlError) as info:  # not initialised yet, as `recompress`
        d.write_attr("recompress_params", b"type=idle\n")
    assert info.value.errno == errno.EINVAL
    d.write_attr("recomp_algorithm", b"algo=zstd priority=1")
    d.write_attr("disksize", b"1M")
    d.write_attr("recompress_params", b"type=huge  threshold=1000\n")
    assert d.read_attr("recompress_params") == b"type=huge threshold=1000\n"
    for bad in (b"type=sometimes", b"threshold=99999", b"algo=lz4hc", b"colour=red"):
        with pytest.raises(ControlError):
            d.write_attr("recompress_params", bad)
        assert d.read_attr("recompress_params") == b"type=huge threshold=1000\n"
    d.write_attr("recompress_params", b"\n")
    assert d.read_attr("recompress_params") == b"\n"
    d.write_attr("recompress_params", b"type=idle")
    d.write_attr("reset", b"1")
    assert d.read_attr("recompress_params") == b"\n"
