"""parse_size (the kernel's memparse, strict) and format_size (zramctl's style)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zramfs.sizes import format_size, parse_size

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1", 1),
        ("64M", 64 * MiB),
        ("64m", 64 * MiB),
        ("4k", 4 * KiB),
        ("4K", 4 * KiB),
        ("1G", GiB),
        ("1g", GiB),
        ("2T", 2 << 40),
        ("3P", 3 << 50),
        ("15E", 15 << 60),
        ("0x1000", 4096),
        ("0X1000", 4096),
        ("0xffK", 255 * KiB),
        ("0x10e", 0x10E),  # e is a hex digit here, as in memparse
        ("010", 8),  # a leading 0 is octal, as in the kernel's base-0 parsing
        ("0K", 0),
        ("  512M\n", 512 * MiB),
        ("1024\n", 1024),
        ("\t2G ", 2 * GiB),
        (str((1 << 64) - 1), (1 << 64) - 1),
        ("0xffffffffffffffff", (1 << 64) - 1),
    ],
)
def test_parse_size_accepts(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\n",
        "-1",
        "-4K",
        "+4K",
        "4 K",
        "4KB",
        "4KiB",
        "4X",
        "K",
        "0x",
        "0xg",
        "09",
        "1.5G",
        "1e3",
        "abc",
        "64M junk",
        "1_000",
        "١٢",  # non-ASCII digits
        str(1 << 64),
        "16E",
        "0x10000000000000000",
        "17179869184G",  # 2**64 exactly
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value)  # a message, not a bare ValueError


def test_parse_size_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse_size(4096)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=(1 << 54) - 1), st.sampled_from("kKmMgGtT"))
def test_parse_size_suffix_is_a_shift(n: int, suffix: str) -> None:
    shift = {"k": 10, "m": 20, "g": 30, "t": 40}[suffix.lower()]
    if n << shift >= 1 << 64:
        with pytest.raises(ValueError):
            parse_size(f"{n}{suffix}")
    else:
        assert parse_size(f"{n}{suffix}") == n << shift
        assert parse_size(f"{hex(n)}{suffix}") == n << shift


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (512, "512B"),
        (1023, "1023B"),
        (1024, "1K"),
        (4096, "4K"),
        (1536, "1.5K"),
        (MiB + MiB // 2, "1.5M"),
        (4 * GiB, "4G"),
        (64 * MiB, "64M"),
        (MiB - 1, "1024K"),  # 1023.999K rounds up to 1024.0, printed as util-linux does
        (1126, "1.1K"),  # 1.0996 -> 1.1
        (1075, "1K"),  # 1.0498 -> 1.0 -> no decimal
        (1076, "1.1K"),  # 1.05078 rounds half up
        (int(2.25 * GiB), "2.3G"),
        (1 << 40, "1T"),
        (1 << 50, "1P"),
        (1 << 60, "1E"),
        ((1 << 64) - 1, "16E"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [-1, 1 << 64])
def test_format_size_rejects_out_of_range(n: int) -> None:
    with pytest.raises(ValueError):
        format_size(n)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_format_size_is_close(n: int) -> None:
    text = format_size(n)
    unit = "BKMGTPE".index(text[-1]) * 10
    shown = float(text[:-1])
    assert abs(shown * (1 << unit) - n) <= 0.05 * (1 << unit) + 1e-9 * n
    if n >= 1024:
        assert 1 <= shown <= 1024
