"""report.py without a mount: the stats file and the zramctl-style table and JSON, rendered from
statistics() values of real ZramDevices (no FUSE, no files)."""

from __future__ import annotations

import json

from zramfs.device import ZramDevice
from zramfs.report import COLUMNS, StatusRow, render_json, render_stats, render_table

MiB = 1 << 20


def test_stats_of_an_uninitialised_device() -> None:
    d = ZramDevice(1)
    d.write_attr("mem_limit", b"8M")
    text = render_stats(d.statistics())
    assert text.splitlines()[0] == "zram1: not initialised (write a size to disksize)"
    assert "mem limit        8M" in text


def test_stats_follow_the_store() -> None:
    d = ZramDevice(0)
    d.configure(16 * MiB, "zstd")
    assert d.store is not None
    d.store.write(0, b"hello world " * 341 + b"1234")
    d.store.write(8192, bytes(4096))
    lines = {line[:16].strip(): line[17:] for line in render_stats(d.statistics()).splitlines()[1:]}
    assert lines["disksize"] == "16M (16777216 bytes)"
    assert lines["algorithm"] == "zstd"
    assert lines["data stored"] == "8K (2 pages)"
    assert lines["same pages"] == "1 (4K, no memory)"
    assert lines["writes"] == "2 pages"
    assert lines["failed writes"] == "0"
    d.open_count = 1
    assert render_stats(d.statistics()).startswith("zram0: 16M disk, zstd, open")


def test_table_and_json_like_zramctl() -> None:
    row = StatusRow("/mnt/z/zram0/image", "lz4", 1 << 30, 8192, 100, 4096, 0, 4096, 1, 0, "-")
    table = render_table([row], COLUMNS, False).splitlines()
    assert table[0].split() == list(COLUMNS)
    assert table[1].split() == ["/mnt/z/zram0/image", "lz4", "1G", "8K", "100B", "4K", "0B", "-"]
    data = json.loads(render_json([row], COLUMNS, True))
    (entry,) = data["zramctl"]
    assert entry["disksize"] == 1 << 30 and entry["data"] == 8192 and entry["mem-limit"] == 0
    assert list(entry) == [c.lower() for c in COLUMNS]
