"""zramfs/config.py: zram-generator's format read and evaluated, without a mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zramfs import config
from zramfs.config import ConfigError, evaluate, evaluate_expression, load

MIB = 1 << 20


def one(text: str, ram: int = 8192) -> config.Config:
    return evaluate([("/etc/zramfs/zramfs.conf", text)], ram)


def test_defaults_follow_zram_generator() -> None:
    c = one("[zram0]\n", ram=8192)
    (d,) = c.devices
    assert c.mount == "/mnt/zramfs"
    assert d.disksize == 4096 * MIB  # min(ram / 2, 4096)
    assert d.mem_limit == 0
    assert d.swap_priority == 100
    assert d.fs_type == "swap" and d.mount_point is None
    assert d.options == "discard"
    assert one("[zram0]\n", ram=2000).devices[0].disksize == 1000 * MIB


def test_fs_type_defaults_to_ext2_with_a_mount_point() -> None:
    d = one("[zram1]\nmount-point = /var/tmp/x\n").devices[0]
    assert (d.name, d.fs_type, d.mount_point) == ("zram1", "ext2", "/var/tmp/x")


def test_full_device_control_writes_in_kernel_order() -> None:
    text = """
# a comment
[zram0]
zram-size = ram / 4
zram-resident-limit = 256
compression-algorithm = lz4 zstd(level=3) (type=idle)
writeback-device = /dev/sdb1
swap-priority = 5
options = discard=once
auto-writeback = 80
policy-interval = 30
recompress-after = 600
writeback-after = 3600
auto-compact = 20
[zramfs]
mount = /run/zz
"""
    c = one(text, ram=4096)
    assert c.mount == "/run/zz"
    d = c.devices[0]
    assert d.recompress_conditions == ("type=idle",)
    assert d.control_writes() == [
        ("comp_algorithm", "lz4"),
        ("recomp_algorithm", "algo=zstd priority=1"),
        ("algorithm_params", "priority=1 level=3"),
        ("backing_dev", "/dev/sdb1"),
        ("mem_limit", str(256 * MIB)),
        ("disksize", str(1024 * MIB)),
        ("auto_writeback", "80"),
        ("policy_interval", "30"),
        ("recompress_after", "600"),
        ("writeback_after", "3600"),
        ("auto_compact", "20"),
        ("recompress_params", "type=idle"),
    ]
    assert config.swap_flags(d.options) == ["--discard=once"]


def test_primary_parameters_go_to_algorithm_params() -> None:
    d = one("[zram0]\ncompression-algorithm = zstd(level=9,dict=/x/d)\n").devices[0]
    assert d.algorithms == (config.Algorithm("zstd", ("level=9", "dict=/x/d")),)
    assert ("algorithm_params", "algo=zstd level=9 dict=/x/d") in d.control_writes()


def test_dropins_override_in_lexical_order(tmp_path: Path) -> None:
    main = tmp_path / "z.conf"
    main.write_text("[zram0]\nzram-size = 100\nswap-priority = 1\n[zram1]\nzram-size = 50\n")
    drop = tmp_path / "z.conf.d"
    drop.mkdir()
    (drop / "20-b.conf").write_text("[zram0]\nzram-size = 300\n")
    (drop / "10-a.conf").write_text("[zram0]\nzram-size = 200\nswap-priority = 7\n")
    (drop / "ignored.txt").write_text("garbage")
    c = load(str(main), ram_mib=1000)
    assert c.files == (str(main), str(drop / "10-a.conf"), str(drop / "20-b.conf"))
    sizes = {d.name: d.disksize // MIB for d in c.devices}
    assert sizes == {"zram0": 300, "zram1": 50}
    assert c.devices[0].swap_priority == 7
    assert c.device_count == 2


def test_only_dropins(tmp_path: Path) -> None:
    drop = tmp_path / "z.conf.d"
    drop.mkdir()
    (drop / "a.conf").write_text("[zram3]\nzram-size=10\n")
    c = load(str(tmp_path / "z.conf"), ram_mib=1000)
    assert [d.name for d in c.devices] == ["zram3"] and c.device_count == 4


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(str(tmp_path / "none.conf"), ram_mib=1000)


def test_size_zero_and_host_memory_limit_drop_the_device() -> None:
    assert one("[zram0]\nzram-size = 0\n").devices == ()
    assert one("[zram0]\nhost-memory-limit = 4096\n", ram=8192).devices == ()
    assert len(one("[zram0]\nhost-memory-limit = none\n", ram=8192).devices) == 1


def test_deprecated_fraction_keys() -> None:
    d = one("[zram0]\nzram-fraction = 0.25\nmax-zram-size = 1000\n", ram=8192).devices[0]
    assert d.disksize == 1000 * MIB


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("[zram0]\nzram-size = ram / / 2\n", 2, "zram-size"),
        ("[zram0]\nzram-size = ram * 2 +\n", 2, "end of expression"),
        ("[zram0]\nzram-size = __import__(os)\n", 2, "unknown name"),
        ("[zram0]\nzram-size = ram - 100000\n", 2, "below 0"),
        ("[zram0]\nzram-size = min(ram, 1) / 0\n", 2, "division by zero"),
        ("\n\n[zram0]\nswap-priority = 40000\n", 4, "out of range"),
        ("[zram0]\nswap-priority = high\n", 2, "not an integer"),
        ("[zram0]\nzram-sise = 100\n", 2, "unknown key zram-sise"),
        ("[zram0]\nmount-point = relative/dir\n", 2, "not an absolute path"),
        ("[zram0]\nmount-point = /a/../b\n", 2, "not normalised"),
        ("[zram0]\nfs-type = swap\nmount-point = /x\n", 3, "fs-type is swap"),
        ("[zram0]\ncompression-algorithm = zstd(level=3\n", 2, "unbalanced"),
        ("[zram0]\ncompression-algorithm = zstd(speed=3)\n", 2, "speed="),
        ("[zram0]\ncompression-algorithm = lz4 (type=sometimes)\n", 2, "type=sometimes"),
        ("[zram0]\nauto-writeback = 101\n", 2, "out of range"),
        ("[zram0]\npolicy-interval = -1\n", 2, "out of range"),
        ("[zram0]\noptions = discard=always\n", 2, "discard takes"),
        ("[zram0]\nwriteback-device = sdb\n", 2, "absolute"),
        ("zram-size = 1\n", 1, "outside any section"),
        ("[zram0\n", 1, "malformed section"),
        ("[swap]\n", 1, "unknown section"),
        ("[zram999]\n", 1, "device ids"),
        ("set!x = echo 1\n", 1, "set!"),
        ("[zram0]\njust words\n", 2, "key = value"),
        ("[zramfs]\nmount = here\n", 2, "absolute"),
        ("[zramfs]\nmountpoint = /x\n", 2, "unknown key"),
        ("[zram0]\nmount-point=/m\n[zram1]\nmount-point=/m\n", 4, "also zram0"),
    ],
)
def test_bad_config_names_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        one(text)
    assert info.value.path == "/etc/zramfs/zramfs.conf"
    assert info.value.line == line
    assert what in str(info.value)
    assert str(info.value).startswith(f"/etc/zramfs/zramfs.conf:{line}: ")


def test_error_names_the_dropin_that_set_the_bad_value(tmp_path: Path) -> None:
    main = tmp_path / "z.conf"
    main.write_text("[zram0]\nzram-size = 100\n")
    (tmp_path / "z.conf.d").mkdir()
    bad = tmp_path / "z.conf.d" / "50-bad.conf"
    bad.write_text("# override\n[zram0]\nzram-size = ram +* 2\n")
    with pytest.raises(ConfigError) as info:
        load(str(main), ram_mib=100)
    assert (info.value.path, info.value.line) == (str(bad), 3)


def test_devices_know_the_line_behind_each_control_file() -> None:
    """start reports a value the daemon refuses at the file and line that set it."""
    d = one("[zram0]\n\ncompression-algorithm = lzo-rle\nauto-compact = 5\n").devices[0]
    assert d.where("comp_algorithm") == \
        "/etc/zramfs/zramfs.conf:3: compression-algorithm='lzo-rle': "
    assert d.where("auto_compact").startswith("/etc/zramfs/zramfs.conf:4: auto-compact=")
    assert d.where("disksize") == ""  # the default size: no line to name


def test_continuation_and_quotes() -> None:
    d = one('[zram0]\ncompression-algorithm = lz4 \\\n  zstd(level=1)\noptions = "pri=1"\n')
    assert [a.name for a in d.devices[0].algorithms] == ["lz4", "zstd"]
    assert d.devices[0].options == "pri=1"


def test_expression_grammar() -> None:
    ram = {"ram": 8192.0}
    assert evaluate_expression("min(ram / 2, 4096)", ram) == 4096
    assert evaluate_expression("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)",
                               ram) == 6144
    assert evaluate_expression("-(2 - 5) * 2", ram) == 6
    assert evaluate_expression("max(1, 2, 3)", ram) == 3
    assert evaluate_expression("min(ram)", ram) == 8192  # one argument is that value
    assert evaluate_expression("max(5) + min(1)", ram) == 6
    assert evaluate_expression("ram*3/4", ram) == 6144
    assert evaluate_expression(" 1.5 * 2 ", ram) == 3
    for bad in ["", "ram ram", "(1", "1)", "min()", "2 ** 3", "ram.x", "1,2", "max(1 2)"]:
        with pytest.raises(config.ExpressionError):
            evaluate_expression(bad, ram)


# An oracle for the arithmetic: the same tree built as a Python expression string.
exprs = st.recursive(
    st.one_of(st.integers(0, 10_000).map(str), st.just("ram")),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, inner).map(lambda t: f"min({t[0]}, {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"max({t[0]}, {t[1]})"),
        inner.map(lambda e: f"-{e}"),
    ),
    max_leaves=12,
)


@given(exprs, st.integers(1, 1 << 20))
def test_expression_matches_python(text: str, ram: int) -> None:
    expected = eval(text, {"min": min, "max": max, "ram": float(ram)})  # noqa: S307 - oracle
    assert evaluate_expression(text, {"ram": float(ram)}) == pytest.approx(expected)


def test_default_path_exists_as_constant() -> None:
    assert config.DEFAULT_PATH == "/etc/zramfs/zramfs.conf"
    assert os.path.isabs(config.DEFAULT_MOUNT)
