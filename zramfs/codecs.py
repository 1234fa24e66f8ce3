"""Page codecs: lz4, lz4hc, zstd and deflate, with the kernel's level= and dict= parameters.

A Codec compresses one page (any buffer, normally 4096 bytes) into a bare block and
decompresses it back to a known size; nothing about the page is stored in the block (no
length prefix, no zstd magic, content size, checksum or dictionary id, no zlib header),
because the page table already knows what it is. lz4 and lz4hc use python-lz4's block API
(lz4hc is its high_compression mode, levels 1..12, kernel default 9); zstd uses the
zstandard library, levels -7..-1 and 1..22 (default 3), magicless frames tuned for 4 KiB
inputs, with one compressor and one decompressor context per thread because zstandard
contexts are not thread-safe; deflate is raw deflate (zlib, wbits -15), levels 1..9
(default 6). lz4 and zstd take a dictionary file (dict=PATH), read once when the codec is
made. Every (de)compression call is thread-safe. A batch API (encode_pages, decode_pages)
takes a whole request's pages in one call. Without a dictionary, decoding (one page or a
batch) and lz4's batch encoding run in the C extension zramfs._pagecodec against the
system liblz4/libzstd, a batch with the GIL released for the whole page loop; its lz4
blocks differ from python-lz4's bytes, and each path decodes the other's. Everything else
calls python-lz4, python-zstandard or zlib page by page (zstd compression stays there:
measured faster than the system libzstd), which release the GIL for each library call.
Bad names, levels or parameters raise CodecError (a
ValueError) with a message fit for a user, never a silent default. This module also parses
the text of the algorithm_params control file into AlgorithmParams.
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
    "level_range",
    "make_codec",
    "parse_algorithm_params",
]

ALGORITHMS: tuple[str, ...] = ("lz4", "lz4hc", "zstd", "deflate")
DEFAULT_ALGORITHM = "lz4"
PAGE_SIZE = 4096
MAX_DICT_SIZE = 16 << 20  # a sanity bound: real dictionaries are KiBs, not a whole file system

# name -> (lowest level, highest level, default level, takes a dictionary). lz4 has no level
# (the kernel's lz4 "level" is an acceleration factor that python-lz4 calls differently).
_SPECS: dict[str, tuple[int, int, int | None, bool]] = {
    "lz4": (0, -1, None, True),
    "lz4hc": (1, 12, 9, False),
    "zstd": (-7, 22, 3, True),
    "deflate": (1, 9, 6, False),
}


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
    __slots__ = ("_dict", "_c_decode")
    slow_compress = False  # ~6.5 us/page on /usr/lib; decompression ~2

    def __init__(self, dictionary: bytes | None, dict_path: str | None) -> None:
        super().__init__("lz4", None, dict_path)
        self._dict = dictionary
        self.batch_nogil = self._c_decode = dictionary is None and _pagecodec is not None

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
            return lz4.block.compress(data, store_size=False)  # type: ignore[no-any-return]
        return lz4.block.compress(data, store_size=False, dict=self._dict)  # type: ignore[no-any-return]

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
    __slots__ = ("_level",)  # compression ~38 us/page; decompression ~2

    def __init__(self, level: int) -> None:
        super().__init__("lz4hc", level, None)
        self._level = level

    def compress(self, data: Buffer) -> bytes:
        return lz4.block.compress(  # type: ignore[no-any-return]
            data, mode="high_compression", compression=self._level, store_size=False
        )

    def decompress(self, data: Buffer, size: int = PAGE_SIZE) -> bytes:
        try:
            out = lz4.block.decompress(data, uncompressed_size=size)
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
    __slots__ = ("_level",)
    slow_decompress = True  # ~15 us/page; compression ~92

    def __init__(self, level: int) -> None:
        super().__init__("deflate", level, None)
        self._level = level

    def compress(self, data: Buffer) -> bytes:
        return zlib.compress(data, self._level, wbits=-15)

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
) -> Codec:
    """The codec for algorithm ``name`` with an optional level and dictionary file.

    With ``dictionary`` given, those are the dictionary's bytes (already read by the caller,
    the daemon's shell, which knows what it may safely open) and ``dict_path`` only names it;
    without, the file ``dict_path`` is read here.

    Raises CodecError for an unknown name, a level out of range, a parameter the algorithm
    does not take (a level for lz4, a dictionary for lz4hc or deflate) or a dictionary file
    that cannot be read.
    """
    lo, hi, default, takes_dict = _spec(name)
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise CodecError(f"{name}: level must be an integer, not {level!r}")
        if lo > hi:
            raise CodecError(f"{name} takes no level parameter")
        if not lo <= level <= hi or (name == "zstd" and level == 0):
            extra = " (0 excluded)" if name == "zstd" else ""
            raise CodecError(f"{name}: level {level} is out of range {lo}..{hi}{extra}")
    if dict_path is not None:
        if not takes_dict:
            raise CodecError(f"{name} takes no dictionary (only lz4 and zstd do)")
        if not isinstance(dict_path, str) or not dict_path:
            raise CodecError(f"{name}: dictionary path must be a non-empty string")
    if dictionary is None and dict_path is not None:
        dictionary = _read_dictionary(dict_path)
    if name == "lz4":
        return _Lz4(dictionary, dict_path)
    effective = level if level is not None else default
    assert effective is not None
    if name == "lz4hc":
        return _Lz4Hc(effective)
    if name == "zstd":
        try:
            return _Zstd(effective, dictionary, dict_path)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd: {exc}") from None
    return _Deflate(effective)


@dataclass(frozen=True)
class AlgorithmParams:
    """One write to algorithm_params: ``algo=NAME level=N dict=PATH priority=N``.

    Absent keys are None; ``algo`` None means the device's selected algorithm."""

    algo: str | None = None
    level: int | None = None
    dict_path: str | None = None
    priority: int | None = None


_INT_RE = re.compile(r"[+-]?[0-9]+")
_KEYS = ("algo", "level", "dict", "priority")


def parse_algorithm_params(text: str) -> AlgorithmParams:
    """Parse ``key=value`` tokens separated by whitespace (a trailing newline is fine).

    Keys: algo (a name from ALGORITHMS), level (an integer; its range is checked by
    make_codec, which knows the algorithm), dict (a path), priority (an integer >= 0, the
    kernel's recompression slot, 0 being the primary algorithm). An unknown key, a token
    without ``=`` or a value, a repeated key or a malformed number raises CodecError.
    """
    values: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep:
            raise CodecError(f"algorithm_params: {token!r} is not key=value")
        if key not in _KEYS:
            raise CodecError(
                f"algorithm_params: unknown parameter {key!r}; known: {', '.join(_KEYS)}"
            )
        if not value:
            raise CodecError(f"algorithm_params: {key}= needs a value")
        if key in values:
            raise CodecError(f"algorithm_params: {key} given twice")
        values[key] = value
    algo = values.get("algo")
    if algo is not None and algo not in ALGORITHMS:
        raise CodecError(
            f"algorithm_params: unknown algorithm {algo!r}; one of {', '.join(ALGORITHMS)}"
        )
    level = _parse_int(values, "level")
    priority = _parse_int(values, "priority")
    if priority is not None and priority < 0:
        raise CodecError(f"algorithm_params: priority {priority} is negative")
    return AlgorithmParams(algo=algo, level=level, dict_path=values.get("dict"), priority=priority)


def _parse_int(values: dict[str, str], key: str) -> int | None:
    raw = values.get(key)
    if raw is None:
        return None
    if not _INT_RE.fullmatch(raw):
        raise CodecError(f"algorithm_params: {key}={raw} is not an integer")
    return int(raw)
