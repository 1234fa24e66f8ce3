"""Page codecs: lz4, lz4hc, zstd and deflate, with the kernel's level= and dict= parameters.

A Codec compresses one page (any buffer, normally 4096 bytes) into a bare block and
decompresses it back to a known size; nothing about the page is stored in the block (no
length prefix, no zstd magic, content size, checksum or dictionary id, no zlib header),
because the page table already knows what it is. lz4 and lz4hc use python-lz4's block API
(lz4's level is its acceleration factor, default 1; lz4hc is its high_compression mode,
levels 1..12, kernel default 9); zstd uses the zstandard library, levels -131072..22
(default 3), magicless frames tuned for 4 KiB inputs, with one compressor and one
decompressor context per thread because zstandard contexts are not thread-safe; deflate is
raw deflate (zlib, wbits -15 unless deflate.winbits= says otherwise), levels 0..9 (default
6). Levels the kernel's backends clamp are clamped here the same way; only deflate refuses
a level (or window) its zlib refuses. lz4, lz4hc and zstd take a dictionary file
(dict=PATH), read once when the codec is made; deflate accepts and ignores one, as the
kernel's deflate backend does. Every (de)compression call is thread-safe. A batch API
(encode_pages, decode_pages) takes a whole request's pages in one call. Without a
dictionary, decoding (one page or a batch) and lz4's batch encoding (at acceleration 1)
run in the C extension zramfs._pagecodec against the system liblz4/libzstd, a batch with
the GIL released for the whole page loop; its lz4 blocks differ from python-lz4's bytes,
and each path decodes the other's. Everything else calls python-lz4, python-zstandard or
zlib page by page (zstd compression stays there: measured faster than the system
libzstd), which release the GIL for each library call. Bad names, levels the kernel would
refuse or unreadable dictionaries raise CodecError (a ValueError) with a message fit for a
user. This module also parses the text of the algorithm_params control file into
AlgorithmParams, token by token as the kernel's algorithm_params_store() does.
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lz4.block
import zstandard

try:
    from . import _pagecodec
except ImportError:  # not built yet (a checkout before `make venv`): the per-page path
    _pagecodec = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "MAX_DICT_SIZE",
    "AlgorithmParams",
    "BatchDecompressError",
    "Codec",
    "CodecError",
    "DecompressError",
    "ParamRangeError",
    "level_range",
    "make_codec",
    "parse_algorithm_params",
    "split_args",
]

ALGORITHMS: tuple[str, ...] = ("lz4", "lz4hc", "zstd", "deflate")
DEFAULT_ALGORITHM = "lz4"
PAGE_SIZE = 4096
MAX_DICT_SIZE = 16 << 20  # a sanity bound: real dictionaries are KiBs, not a whole file system

# name -> (lowest level, highest level, default level, takes a dictionary). lz4's level is
# the LZ4 acceleration factor (backend_lz4.c passes it to LZ4_compress_fast). The kernel's
# backends clamp a level outside the range (liblz4, lz4hc and zstd do) rather than fail;
# deflate alone fails (zlib_deflateInit2 refuses it) when disksize initialises the device.
_SPECS: dict[str, tuple[int, int, int | None, bool]] = {
    "lz4": (1, 65537, 1, True),  # LZ4_ACCELERATION_DEFAULT .. LZ4_ACCELERATION_MAX
    "lz4hc": (1, 12, 9, True),
    "zstd": (-131072, 22, 3, True),  # ZSTD_minCLevel() .. ZSTD_maxCLevel()
    "deflate": (0, 9, 6, True),
}
DEFLATE_WINBITS = (9, 15)  # zlib_deflateInit2's raw window sizes


class CodecError(ValueError):
    """An unknown algorithm, a bad parameter, or an unreadable dictionary."""


class DecompressError(CodecError):
    """A compressed block that does not decode to the expected page (corrupt data)."""


class BatchDecompressError(DecompressError):
    """decode_pages() met a payload that does not decode; ``index`` is its position."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


def level_range(name: str) -> tuple[int, int] | None:
    """The accepted (lowest, highest) level of algorithm ``name``; None if it takes none."""
    lo, hi, _default, _dict = _spec(name)
    return None if lo > hi else (lo, hi)


def _spec(name: str) -> tuple[int, int, int | None, bool]:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise CodecError(
            f"unknown compression algorithm {name!r}; one of {', '.join(ALGORITHMS)}"
        ) from None


class Codec:
    """One configured algorithm. ``compress`` and ``decompress`` are thread-safe.

    ``slow_compress`` and ``slow_decompress`` say whether the library spends long enough
    per page (over ~10 us, with the GIL released) that a large request is worth handing
    to a worker thread; below that the GIL hand-offs cost more than they save (measured
    in benchmarks/README.md, "Where the time goes")."""

    __slots__ = ("name", "level", "dict_path", "batch_nogil")
    slow_compress = True
    slow_decompress = False

    def __init__(self, name: str, level: int | None, dict_path: str | None) -> None:
        self.name = name
        self.level = level
        self.dict_path = dict_path
        # True when encode_pages/decode_pages release the GIL for the whole batch, so that
        # a large request is worth a worker thread whatever the per-page speed.
        self.batch_nogil = False

    def compress(self, data: Buffer) -> bytes:
        """The compressed block for ``data`` (normally one 4096-byte page)."""
        raise NotImplementedError

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        """The ``size`` bytes ``data`` was compressed from; DecompressError if it is not
        a valid block or does not decode to exactly ``size`` bytes."""
        raise NotImplementedError

    def encode_pages(self, data: Buffer, huge: int) -> list[int | bytes]:
        """Payloads for the whole 4096-byte pages of ``data``, in order: the fill word (an
        int) of a page whose 8-byte words are all equal, the raw page (bytes of PAGE_SIZE)
        if it compresses to ``huge`` bytes or more, else the compressed block."""
        mv = memoryview(data).cast("B")
        compress = self.compress
        out: list[int | bytes] = []
        append = out.append
        for pos in range(0, mv.nbytes - PAGE_SIZE + 1, PAGE_SIZE):
            raw = mv[pos : pos + PAGE_SIZE].tobytes()
            word = raw[:8]
            if raw[-8:] == word and raw == word * _WORDS_PER_PAGE:
                append(int.from_bytes(word, "little"))
                continue
            c = compress(raw)
            append(raw if len(c) >= huge else c)
        return out

    def decode_pages(self, payloads: list[int | bytes]) -> bytes:
        """The pages of encode_pages() payloads, joined (an int is a fill word, 0 also for
        an unwritten page; PAGE_SIZE bytes are a raw page). BatchDecompressError names the
        first payload that does not decode."""
        decompress = self.decompress
        parts: list[bytes] = []
        append = parts.append
        for k, p in enumerate(payloads):
            if type(p) is int:
                append(_fill_page(p))
            elif len(p) == PAGE_SIZE:  # type: ignore[arg-type]
                append(p)  # type: ignore[arg-type]
            else:
                try:
                    append(decompress(p, PAGE_SIZE))  # type: ignore[arg-type]
                except DecompressError as exc:
                    raise BatchDecompressError(k, str(exc)) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __repr__(self) -> str:
        extra = "" if self.level is None else f" level={self.level}"
        extra += "" if self.dict_path is None else f" dict={self.dict_path}"
        return f"<Codec {self.name}{extra}>"


_WORDS_PER_PAGE = PAGE_SIZE // 8
_ZERO_PAGE = bytes(PAGE_SIZE)


def _fill_page(word: int) -> bytes:
    return _ZERO_PAGE if word == 0 else word.to_bytes(8, "little") * _WORDS_PER_PAGE


def _decode_in_c(algo: int, name: str, payloads: list[int | bytes]) -> bytes:
    out = _pagecodec.decode(algo, payloads)
    if isinstance(out, int):
        raise BatchDecompressError(out, f"{name}: not a valid block of {PAGE_SIZE} bytes")
    return out


def _check_size(out: bytes, size: int, name: str) -> bytes:
    if len(out) != size:
        raise DecompressError(f"{name}: block decodes to {len(out)} bytes, expected {size}")
    return out


class _Lz4(Codec):
    __slots__ = ("_dict", "_accel", "_c_decode")
    slow_compress = False  # ~6.5 us/page on /usr/lib; decompression ~2

    def __init__(
        self, acceleration: int, dictionary: bytes | None, dict_path: str | None
    ) -> None:
        super().__init__("lz4", acceleration, dict_path)
        self._dict = dictionary
        self._accel = acceleration
        self._c_decode = dictionary is None and _pagecodec is not None
        # The C batch encoder calls LZ4_compress_default (acceleration 1): any other
        # acceleration, like a dictionary, goes page by page through python-lz4.
        self.batch_nogil = self._c_decode and acceleration == 1

    def encode_pages(self, data: Buffer, huge: int) -> list[int | bytes]:
        if self.batch_nogil:
            return _pagecodec.encode(_pagecodec.LZ4, data, huge)
        return super().encode_pages(data, huge)

    def decode_pages(self, payloads: list[int | bytes]) -> bytes:
        if self._c_decode:
            return _decode_in_c(_pagecodec.LZ4, "lz4", payloads)
        return super().decode_pages(payloads)

    def compress(self, data: Buffer) -> bytes:
        if self._dict is None:
            return lz4.block.compress(  # type: ignore[no-any-return]
                data, acceleration=self._accel, store_size=False
            )
        return lz4.block.compress(  # type: ignore[no-any-return]
            data, acceleration=self._accel, store_size=False, dict=self._dict
        )

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        if size == PAGE_SIZE and self._c_decode:  # one page: the 4 KiB request path
            out = _pagecodec.decompress_page(_pagecodec.LZ4, data)
            if out is None:
                raise DecompressError(f"lz4: not a valid block of {PAGE_SIZE} bytes")
            return out
        try:
            if self._dict is None:
                out = lz4.block.decompress(data, uncompressed_size=size)
            else:
                out = lz4.block.decompress(data, uncompressed_size=size, dict=self._dict)
        except lz4.block.LZ4BlockError as exc:
            raise DecompressError(f"lz4: {exc}") from None
        return _check_size(out, size, "lz4")


class _Lz4Hc(Codec):
    __slots__ = ("_level", "_dict")  # compression ~38 us/page; decompression ~2

    def __init__(self, level: int, dictionary: bytes | None, dict_path: str | None) -> None:
        super().__init__("lz4hc", level, dict_path)
        self._level = level
        self._dict = dictionary if dictionary else b""  # python-lz4: b"" is no dictionary

    def compress(self, data: Buffer) -> bytes:
        return lz4.block.compress(  # type: ignore[no-any-return]
            data,
            mode="high_compression",
            compression=self._level,
            store_size=False,
            dict=self._dict,
        )

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        try:
            out = lz4.block.decompress(data, uncompressed_size=size, dict=self._dict)
        except lz4.block.LZ4BlockError as exc:
            raise DecompressError(f"lz4hc: {exc}") from None
        return _check_size(out, size, "lz4hc")


class _Zstd(Codec):
    # compression ~19 us/page; decompression ~7
    __slots__ = ("_level", "_params", "_zdict", "_local", "_c_decode")

    def __init__(self, level: int, dictionary: bytes | None, dict_path: str | None) -> None:
        super().__init__("zstd", level, dict_path)
        self._level = level
        # Bare frames: no magic number, content size, checksum or dictionary id (5-10 bytes
        # a page), parameters chosen for 4 KiB inputs (a small window, small tables).
        self._zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
        self._params = zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=PAGE_SIZE,
            dict_size=len(dictionary) if dictionary else 0,
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_content_size=0,
            write_checksum=0,
            write_dict_id=0,
        )
        self._local = threading.local()
        self._contexts()  # fail now, not on the first page, if the library refuses
        # Decoding in C; compression stays with python-zstandard, whose newer zstd
        # compressed 4 KiB pages ~12 % faster than the system libzstd (benchmarks/README.md).
        self._c_decode = self._zdict is None and _pagecodec is not None

    def decode_pages(self, payloads: list[int | bytes]) -> bytes:
        if self._c_decode:
            return _decode_in_c(_pagecodec.ZSTD, "zstd", payloads)
        return super().decode_pages(payloads)

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        local = self._local
        try:
            return local.ctx  # type: ignore[no-any-return]
        except AttributeError:
            pass
        cctx = zstandard.ZstdCompressor(compression_params=self._params, dict_data=self._zdict)
        dctx = zstandard.ZstdDecompressor(
            dict_data=self._zdict, format=zstandard.FORMAT_ZSTD1_MAGICLESS
        )
        local.ctx = (cctx, dctx)
        return cctx, dctx

    def compress(self, data: Buffer) -> bytes:
        try:
            cctx = self._local.ctx[0]
        except AttributeError:
            cctx = self._contexts()[0]
        return cctx.compress(data)  # type: ignore[no-any-return]

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        if size == PAGE_SIZE and self._c_decode:  # one page: the 4 KiB request path
            out = _pagecodec.decompress_page(_pagecodec.ZSTD, data)
            if out is None:
                raise DecompressError(f"zstd: not a valid block of {PAGE_SIZE} bytes")
            return out
        try:
            dctx = self._local.ctx[1]
        except AttributeError:
            dctx = self._contexts()[1]
        try:
            out = dctx.decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise DecompressError(f"zstd: {exc}") from None
        return _check_size(out, size, "zstd")


class _Deflate(Codec):
    __slots__ = ("_level", "_wbits")
    slow_decompress = True  # ~15 us/page; compression ~92

    def __init__(self, level: int, winbits: int) -> None:
        super().__init__("deflate", level, None)
        self._level = level
        self._wbits = -winbits  # decoding with -15 reads any smaller window too

    def compress(self, data: Buffer) -> bytes:
        return zlib.compress(data, self._level, wbits=self._wbits)

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        try:
            out = zlib.decompress(data, wbits=-15, bufsize=size)
        except zlib.error as exc:
            raise DecompressError(f"deflate: {exc}") from None
        return _check_size(out, size, "deflate")


def _read_dictionary(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DICT_SIZE + 1)
    except OSError as exc:
        raise CodecError(f"cannot read dictionary {path!r}: {exc.strerror or exc}") from None
    if not data:
        raise CodecError(f"dictionary {path!r} is empty")
    if len(data) > MAX_DICT_SIZE:
        raise CodecError(f"dictionary {path!r} is larger than {MAX_DICT_SIZE >> 20} MiB")
    return data


def make_codec(
    name: str,
    level: int | None = None,
    dict_path: str | None = None,
    dictionary: bytes | None = None,
    winbits: int | None = None,
) -> Codec:
    """The codec for algorithm ``name`` with an optional level and dictionary file.

    With ``dictionary`` given, those are the dictionary's bytes (already read by the caller,
    the daemon's shell, which knows what it may safely open) and ``dict_path`` only names it;
    without, the file ``dict_path`` is read here. ``winbits`` is deflate's window
    (deflate.winbits=), ignored by the others.

    As the kernel's backends: a level outside an algorithm's range is clamped (lz4 below 1
    and lz4hc below 1 take the default, zstd 0 is its default), except that deflate refuses
    a level outside -1..9 (-1 being zlib's default, 6) or a window outside 9..15, as
    zlib_deflateInit2 does. Raises CodecError for that, an unknown name or a dictionary file
    that cannot be read.
    """
    lo, hi, default, takes_dict = _spec(name)
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise CodecError(f"{name}: level must be an integer, not {level!r}")
    if dict_path is not None and (not isinstance(dict_path, str) or not dict_path):
        raise CodecError(f"{name}: dictionary path must be a non-empty string")
    if dictionary is None and dict_path is not None:
        dictionary = _read_dictionary(dict_path)
    assert default is not None and takes_dict
    if name == "deflate":
        # backend_deflate.c: Z_DEFAULT_COMPRESSION (-1) when unset; zlib refuses the rest.
        effective = default if level is None or level == -1 else level
        if not lo <= effective <= hi:
            raise CodecError(f"deflate: level {level} is out of range -1..{hi}")
        wlo, whi = DEFLATE_WINBITS
        if winbits is not None and not wlo <= winbits <= whi:
            raise CodecError(f"deflate: winbits {winbits} is out of range {wlo}..{whi}")
        # The dictionary, as in backend_deflate.c, is read and not used.
        return _Deflate(effective, whi if winbits is None else winbits)
    if level is None or level < lo or (name == "zstd" and level == 0):
        # LZ4_compress_fast and LZ4_compress_HC take a level below 1 as their default;
        # zstd's level 0 is its default.
        effective = default if level is None or level >= lo or name != "zstd" else lo
    else:
        effective = min(level, hi)
    if name == "lz4":
        return _Lz4(effective, dictionary, dict_path)
    if name == "lz4hc":
        return _Lz4Hc(effective, dictionary, dict_path)
    try:
        return _Zstd(effective, dictionary, dict_path)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd: {exc}") from None


@dataclass(frozen=True)
class AlgorithmParams:
    """One write to algorithm_params: ``algo=NAME level=N dict=PATH priority=N
    deflate.winbits=N``.

    Absent keys are None; ``algo`` None means the algorithm at ``priority`` (0 when that is
    None too). Each write replaces the whole parameter set of its algorithm, as the
    kernel's comp_params_store() does."""

    algo: str | None = None
    level: int | None = None
    dict_path: str | None = None
    priority: int | None = None
    winbits: int | None = None


class ParamRangeError(CodecError):
    """A number that does not fit in 32 bits (the kernel's kstrtoint answers ERANGE)."""


_KSTRTOINT_RE = re.compile(r"[-+]?([0-9]+)\n?")
_INT_KEYS = {"level": "level", "priority": "priority", "deflate.winbits": "winbits"}
_SPACE = " \t\n\v\f\r"  # the C locale's isspace(), as the kernel's skip_spaces()


def _next_arg(text: str, pos: int) -> tuple[str, str | None, int]:
    """One ``param[=value]`` token from ``pos`` the way the kernel's next_arg() cuts it:
    whitespace ends a token outside double quotes, the first ``=`` after the token's first
    character splits it, a quote opening the token or the value is dropped with the
    token's last character if that is a quote. Returns (param, value or None, next pos)."""
    quoted = in_quote = text[pos] == '"'
    if quoted:
        pos += 1
    i = pos
    equals = 0
    while i < len(text):
        c = text[i]
        if c in _SPACE and not in_quote:
            break
        if equals == 0 and c == "=" and i > pos:
            equals = i - pos
        if c == '"':
            in_quote = not in_quote
        i += 1
    buf = list(text[pos:i])
    n = len(buf)
    vstart = -1
    if equals:
        buf[equals] = "\0"
        vstart = equals + 1
        if vstart < n and buf[vstart] == '"':
            vstart += 1
            if buf[n - 1] == '"':
                buf[n - 1] = "\0"
    if quoted and n > 0 and buf[n - 1] == '"':
        buf[n - 1] = "\0"
    joined = "".join(buf)
    param = joined.split("\0", 1)[0]
    value = None if vstart < 0 else joined[vstart:].split("\0", 1)[0]
    if i < len(text):
        i += 1
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return param, value, i


def split_args(text: str) -> list[tuple[str, str | None]]:
    """The (param, value or None) tokens of a control-file write, cut as the kernel's
    stores cut them: skip_spaces(), then next_arg() until the text ends."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    while pos < len(text):
        param, value, pos = _next_arg(text, pos)
        out.append((param, value))
    return out


def _kstrtoint(key: str, raw: str) -> int:
    m = _KSTRTOINT_RE.fullmatch(raw)
    if m is None:
        raise CodecError(f"algorithm_params: {key}={raw} is not an integer")
    value = -int(m.group(1)) if raw.startswith("-") else int(m.group(1))
    if not -(1 << 31) <= value < 1 << 31:
        raise ParamRangeError(f"algorithm_params: {key}={raw} is out of range")
    return value


def parse_algorithm_params(text: str) -> AlgorithmParams:
    """Parse the tokens of an algorithm_params write as the kernel's algorithm_params_store()
    does (Linux 6.18, drivers/block/zram/zram_drv.c), token by token with next_arg():

    - a token without a value (``level``, ``level=``, ``=3``) is EINVAL (CodecError);
    - level, priority and deflate.winbits are read by kstrtoint (base 10, one optional sign,
      EINVAL for anything else, ParamRangeError (ERANGE) outside 32 bits);
    - algo and dict are taken as they are; an unknown key is ignored; a repeated key's
      last value wins;
    - nothing (empty or blank text) is a valid write: the defaults.

    Which algorithm the parameters are for (algo= must name a selected one, priority= must
    be in range) and whether a level suits it are the device's and make_codec's business:
    the kernel checks a level only when disksize initialises the device.
    """
    values: dict[str, str] = {}
    ints: dict[str, int] = {}
    for param, value in split_args(text):
        if not value:
            raise CodecError(f"algorithm_params: {param or '='} needs a value (key=value)")
        if param in _INT_KEYS:
            ints[_INT_KEYS[param]] = _kstrtoint(param, value)
        elif param in ("algo", "dict"):
            values[param] = value
        # any other key: ignored, as the kernel's loop does
    algo = values.get("algo")
    if algo is not None and algo not in ALGORITHMS:
        raise CodecError(
            f"algorithm_params: unknown algorithm {algo!r}; one of {', '.join(ALGORITHMS)}"
        )
    return AlgorithmParams(
        algo=algo,
        level=ints.get("level"),
        dict_path=values.get("dict"),
        priority=ints.get("priority"),
        winbits=ints.get("winbits"),
    )
