"""Size strings as the kernel reads them and as zramctl prints them.

``parse_size`` reads a byte count the way the kernel's memparse() (lib/cmdline.c) does for
the disksize and mem_limit attributes: an unsigned integer in C notation (decimal, ``0x``
hexadecimal, or octal with a leading ``0``), optionally followed by one of the binary
suffixes K, M, G, T, P or E (either case, powers of 1024), with surrounding whitespace (such
as the newline ``echo`` appends) ignored. It is stricter than memparse, which stops at the
first character it does not understand and ignores the rest: here anything left over, a
sign, an empty string or a value of 2**64 or more raises ValueError, so a typo never becomes
a surprising size. ``format_size`` renders a byte count like util-linux's
size_to_human_string() with one-letter suffixes, which is what zramctl shows ("0B", "4K",
"1.5M", "4G"): the largest binary unit not above the value, one decimal rounded half up, a
trailing ".0" dropped. ``memparse`` is the kernel's own, lax reading for the control files
(disksize, mem_limit), where zramfs must answer as sysfs does: it returns the value and how
many characters it used, and the caller decides what an unparsed rest means.
"""

from __future__ import annotations

import re

__all__ = ["format_size", "memparse", "parse_size"]

_U64_LIMIT = 1 << 64
_SHIFTS = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}

# The number (hex, octal or decimal per C's base-0 rules) and an optional suffix letter.
_SIZE_RE = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kmgtpeKMGTPE]?)")


def parse_size(text: str) -> int:
    """The byte count ``text`` denotes, as the kernel's memparse() reads it.

    >>> parse_size("64M"), parse_size("0x1000"), parse_size(" 1g\\n")
    (67108864, 4096, 1073741824)
    """
    if not isinstance(text, str):
        raise TypeError(f"size must be a str, not {type(text).__name__}")
    body = text.strip()
    if not body:
        raise ValueError("empty size: expected a number such as 4096, 0x1000, 64M or 1G")
    match = _SIZE_RE.fullmatch(body)
    if match is None:
        raise ValueError(
            f"invalid size {body!r}: expected an unsigned number (decimal, 0x hex or 0 octal)"
            " optionally followed by one of K, M, G, T, P, E"
        )
    digits, suffix = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif len(digits) > 1 and digits[0] == "0":
        value = int(digits[1:], 8)
    else:
        value = int(digits, 10)
    if suffix:
        value <<= _SHIFTS[suffix.lower()]
    if value >= _U64_LIMIT:
        raise ValueError(f"size {body!r} is too large: it must be below 2**64 bytes")
    return value


_DIGITS = "0123456789"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def memparse(text: str) -> tuple[int, int]:
    """The kernel's memparse() (lib/cmdline.c) exactly, except that it cannot wrap: (value,
    characters used). A C base-0 number as simple_strtoull() reads it (no sign, no leading
    space; ``0x`` only before a hex digit, else a leading ``0`` means octal), then at most
    one suffix letter K M G T P E in either case; reading stops at the first other character
    and the rest is left to the caller, so ``1GiB`` is 1 GiB with 2 characters unused and
    ``1 G`` is 1 byte. Nothing parsed gives (0, 0). The kernel's unsigned 64-bit arithmetic
    wraps silently on overflow; here the value is exact and the caller checks its range.

    >>> memparse("1GiB"), memparse("1 G"), memparse("0x10k\n"), memparse("x")
    ((1073741824, 2), (1, 1), (16384, 5), (0, 0))
    """
    n = len(text)
    i = 0
    base = 10
    if text[:1] == "0":
        if text[1:2] in ("x", "X") and text[2:3] in _HEX_DIGITS:
            base = 16
            i = 2
        else:
            base = 8
    start = i
    digits = _HEX_DIGITS if base == 16 else _DIGITS[:base]
    while i < n and text[i] in digits:
        i += 1
    if i == start:
        return 0, 0
    value = int(text[start:i], base)
    shift = _SUFFIX_SHIFT.get(text[i : i + 1].lower()) if i < n else None
    if shift is not None:
        value <<= shift
        i += 1
    return value, i



def format_size(n: int) -> str:
    """``n`` bytes in zramctl's style: "0B", "512B", "4K", "1.5M", "4G".

    A port of util-linux size_to_human_string(SIZE_SUFFIX_1LETTER, n), C locale.
    """
    if n < 0 or n >= _U64_LIMIT:
        raise ValueError(f"size {n} is outside 0 .. 2**64-1")
    exp = 0
    while exp < 60 and n >= 1 << (exp + 10):
        exp += 10
    letter = "BKMGTPE"[exp // 10]
    if not exp:
        return f"{n}{letter}"
    dec, frac = n >> exp, n & ((1 << exp) - 1)
    if frac:
        # Three decimals, computed as util-linux does (including its overflow-safe branch,
        # which truncates differently), then rounded half up to one decimal.
        if frac >= ((1 << 64) - 1) // 1000:
            frac = (frac // 1024) * 1000 // (1 << (exp - 10))
        else:
            frac = frac * 1000 // (1 << exp)
        frac = (frac + 50) // 100
        if frac == 10:
            dec += 1
            frac = 0
    return f"{dec}.{frac}{letter}" if frac else f"{dec}{letter}"
