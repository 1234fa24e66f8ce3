"""Codecs: round trips, levels, dictionaries, thread safety, errors, algorithm_params."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from zramfs.codecs import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    AlgorithmParams,
    Codec,
    CodecError,
    DecompressError,
    ParamRangeError,
    level_range,
    make_codec,
    parse_algorithm_params,
)

PAGE = 4096


def text_page(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"zram", b"page", b"compress", b"kernel", b"swap", b"memory", b"\n", b" "]
    out = bytearray()
    while len(out) < PAGE:
        out += rng.choice(words) + b" "
    return bytes(out[:PAGE])


def all_levels(name: str) -> list[int | None]:
    """Every level of a small range; for lz4 (acceleration 1..65537) and zstd
    (-131072..22) the ends and the levels people use."""
    rng = level_range(name)
    if rng is None:
        return [None]
    lo, hi = rng
    if hi - lo <= 20:
        return list(range(lo, hi + 1))
    common = [lv for lv in range(-7, 23) if lo <= lv <= hi and lv != 0]
    return [lo, *common, hi] if lo < -7 else [*common, 64, 1000, hi]


PAGES = {
    "text": text_page(1),
    "random": os.urandom(PAGE),
    "zero": bytes(PAGE),
    "word": b"\x01\x02\x03\x04\x05\x06\x07\x08" * (PAGE // 8),
    "byte": b"\xab" * PAGE,
    "mixed": text_page(2)[: PAGE // 2] + os.urandom(PAGE // 2),
}


def test_algorithms_order_and_default() -> None:
    assert ALGORITHMS == ("lz4", "lz4hc", "zstd", "deflate")
    assert DEFAULT_ALGORITHM == "lz4"


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("kind", sorted(PAGES))
def test_round_trip_default_level(name: str, kind: str) -> None:
    codec = make_codec(name)
    assert isinstance(codec, Codec) and codec.name == name
    page = PAGES[kind]
    block = codec.compress(page)
    assert isinstance(block, bytes)
    assert codec.decompress(block) == page
    assert codec.decompress(block, PAGE) == page
    if kind in ("text", "zero", "word", "byte"):
        assert len(block) < PAGE // 2


@pytest.mark.parametrize("name", ALGORITHMS)
def test_round_trip_every_level(name: str) -> None:
    for level in all_levels(name):
        codec = make_codec(name, level=level)
        assert codec.level == (level if level is not None else codec.level)
        for page in (PAGES["text"], PAGES["random"], PAGES["word"]):
            assert codec.decompress(codec.compress(page)) == page, (name, level)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_accepts_any_buffer_and_other_sizes(name: str) -> None:
    codec = make_codec(name)
    page = PAGES["text"]
    for buf in (bytearray(page), memoryview(page), memoryview(b"xx" + page)[2:]):
        assert codec.decompress(codec.compress(buf)) == page
    small = page[:100]
    assert codec.decompress(codec.compress(small), 100) == small


def test_default_levels_follow_the_kernel() -> None:
    assert make_codec("lz4").level == 1  # LZ4_ACCELERATION_DEFAULT (backend_lz4.c)
    assert make_codec("lz4hc").level == 9
    assert make_codec("zstd").level == 3
    assert make_codec("deflate").level == 6


def test_levels_change_the_output() -> None:
    page = b"".join(text_page(s)[:512] for s in range(8))
    fast = make_codec("zstd", level=-7).compress(page)
    best = make_codec("zstd", level=19).compress(page)
    assert len(best) < len(fast)
    assert len(make_codec("lz4hc", level=12).compress(page)) <= len(
        make_codec("lz4").compress(page)
    )


@pytest.mark.parametrize("name", ["lz4", "zstd"])
def test_dictionary_round_trip_and_gain(name: str, tmp_path: Path) -> None:
    corpus = b"".join(text_page(s) for s in range(20, 36))
    path = tmp_path / "pages.dict"
    path.write_bytes(corpus)
    with_dict = make_codec(name, dict_path=str(path))
    plain = make_codec(name)
    assert with_dict.dict_path == str(path)
    page = text_page(99)
    block = with_dict.compress(page)
    assert with_dict.decompress(block) == page
    assert len(block) < len(plain.compress(page))  # the dictionary helps similar data
    rnd = PAGES["random"]
    assert with_dict.decompress(with_dict.compress(rnd)) == rnd


def test_zstd_dictionary_with_level(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.write_bytes(text_page(5) * 4)
    codec = make_codec("zstd", level=12, dict_path=str(path))
    assert codec.level == 12
    page = text_page(6)
    assert codec.decompress(codec.compress(page)) == page


def test_dictionary_needs_the_same_dictionary(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(text_page(40) * 2)
    b.write_bytes(os.urandom(PAGE * 2))
    page = text_page(40)
    block = make_codec("zstd", dict_path=str(a)).compress(page)
    try:
        out = make_codec("zstd", dict_path=str(b)).decompress(block)
    except DecompressError:
        return
    assert out != page


@pytest.mark.parametrize(
    ("name", "level", "dict_name", "message"),
    [
        ("nosuch", None, None, "unknown compression algorithm"),
        ("LZ4", None, None, "unknown compression algorithm"),
        ("lzo", None, None, "unknown compression algorithm"),
        ("", None, None, "unknown compression algorithm"),
        # Only deflate refuses a level: zlib_deflateInit2 in backend_deflate.c's
        # deflate_create() takes -1..9; liblz4, lz4hc and zstd clamp (see below).
        ("deflate", -2, None, "out of range"),
        ("deflate", 10, None, "out of range"),
        ("zstd", None, "missing", "cannot read dictionary"),
        ("lz4", None, "missing", "cannot read dictionary"),
        ("zstd", None, "empty", "is empty"),
        ("zstd", None, "dir", "cannot read dictionary"),
    ],
)
def test_make_codec_errors(
    name: str, level: int | None, dict_name: str | None, message: str, tmp_path: Path
) -> None:
    (tmp_path / "d").write_bytes(b"dictionary" * 100)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    dict_path = None if dict_name is None else str(tmp_path / dict_name)
    with pytest.raises(CodecError, match=message):
        make_codec(name, level=level, dict_path=dict_path)


@pytest.mark.parametrize(
    ("name", "level", "effective"),
    [
        # backend_lz4.c passes the level to LZ4_compress_fast as its acceleration, which
        # takes anything below 1 as 1 and caps it at LZ4_ACCELERATION_MAX.
        ("lz4", None, 1),
        ("lz4", 0, 1),
        ("lz4", -5, 1),
        ("lz4", 7, 7),
        ("lz4", 2**31 - 1, 65537),
        # LZ4_compress_HC: below 1 is the default (9), above 12 is 12.
        ("lz4hc", 0, 9),
        ("lz4hc", -3, 9),
        ("lz4hc", 13, 12),
        # zstd_get_params(): 0 is the default level, the rest clamped to min..max.
        ("zstd", 0, 3),
        ("zstd", 23, 22),
        ("zstd", -8, -8),
        ("zstd", -(2**31), -131072),
        # Z_DEFAULT_COMPRESSION is -1, zlib's 6; 0 stores.
        ("deflate", -1, 6),
        ("deflate", 0, 0),
    ],
)
def test_levels_clamp_as_the_kernel_backends(
    name: str, level: int | None, effective: int
) -> None:
    codec = make_codec(name, level=level)
    assert codec.level == effective
    for page in (PAGES["text"], PAGES["random"], PAGES["mixed"]):
        assert codec.decompress(codec.compress(page)) == page


def test_lz4_acceleration_goes_page_by_page() -> None:
    # The C batch encoder knows only acceleration 1: another one is python-lz4's
    # acceleration= page by page, and still decodes with the default codec (and in C).
    fast = make_codec("lz4", level=64)
    assert not fast.batch_nogil
    data = PAGES["text"] + PAGES["mixed"] + PAGES["word"]
    payloads = fast.encode_pages(data, PAGE)
    assert payloads[0] == fast.compress(PAGES["text"])
    assert isinstance(payloads[2], int)
    assert make_codec("lz4").decode_pages(payloads) == data
    assert fast.decode_pages(payloads) == data
    # a higher acceleration trades ratio for speed: never smaller than the default's
    default = make_codec("lz4")
    assert len(fast.compress(PAGES["text"])) >= len(default.compress(PAGES["text"]))
    assert make_codec("lz4", level=1).batch_nogil == default.batch_nogil


@pytest.mark.parametrize("name", ["lz4hc", "deflate"])
def test_lz4hc_uses_and_deflate_ignores_a_dictionary(name: str, tmp_path: Path) -> None:
    # backend_lz4hc.c loads dict= with LZ4_loadDictHC; backend_deflate.c never reads it.
    d = tmp_path / "d"
    d.write_bytes(PAGES["text"])
    codec = make_codec(name, dict_path=str(d))
    block = codec.compress(PAGES["text"])
    assert codec.decompress(block) == PAGES["text"]
    plain = make_codec(name).compress(PAGES["text"])
    if name == "lz4hc":
        assert len(block) < len(plain) // 4
    else:
        assert block == plain


@pytest.mark.parametrize("winbits", [9, 11, 15])
def test_deflate_winbits(winbits: int) -> None:
    codec = make_codec("deflate", winbits=winbits)
    for page in PAGES.values():
        assert codec.decompress(codec.compress(page)) == page


@pytest.mark.parametrize("winbits", [8, 16, -15, 0])
def test_deflate_winbits_out_of_range(winbits: int) -> None:
    with pytest.raises(CodecError, match="winbits"):
        make_codec("deflate", winbits=winbits)
    make_codec("zstd", winbits=winbits)  # only deflate reads it


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)
    assert issubclass(DecompressError, CodecError)


@pytest.mark.parametrize("level", [True, 3.0, "3"])
def test_level_must_be_an_int(level: object) -> None:
    with pytest.raises(CodecError):
        make_codec("zstd", level=level)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_corrupt_block_raises_decompress_error(name: str) -> None:
    codec = make_codec(name)
    block = codec.compress(PAGES["text"])
    for bad in (b"", b"\xff" * 50, block[: len(block) // 2]):
        try:
            out = codec.decompress(bad)
        except DecompressError as exc:
            assert name in str(exc)
        else:  # a damaged block may still decode, but never to a whole page silently
            raise AssertionError(f"{name} decoded {len(out)} bytes from garbage")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_wrong_size_raises(name: str) -> None:
    codec = make_codec(name)
    block = codec.compress(PAGES["text"][:1000])
    with pytest.raises(DecompressError):
        codec.decompress(block, PAGE)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_threads_share_a_codec(name: str) -> None:
    codec = make_codec(name)
    pages = [text_page(s) for s in range(32)] + [os.urandom(PAGE) for _ in range(8)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                page = rng.choice(pages)
                assert codec.decompress(codec.compress(page)) == page
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("name", ALGORITHMS)
def test_same_filled_pages_compress_small_at_default_level(name: str) -> None:
    # Not relied on by the page store (it checks same-fill itself), but a sanity check.
    codec = make_codec(name)
    for word in (bytes(8), b"\xff" * 8, b"12345678"):
        assert len(codec.compress(word * (PAGE // 8))) < 200


# -- algorithm_params ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("algo=zstd level=3 dict=/p priority=1", AlgorithmParams("zstd", 3, "/p", 1)),
        ("level=9\n", AlgorithmParams(None, 9, None, None)),
        ("algo=zstd", AlgorithmParams("zstd", None, None, None)),
        ("  algo=lz4hc   level=12  ", AlgorithmParams("lz4hc", 12, None, None)),
        ("algo=zstd level=-5", AlgorithmParams("zstd", -5, None, None)),
        ("level=+4", AlgorithmParams(None, 4, None, None)),
        ("dict=/a/b=c", AlgorithmParams(None, None, "/a/b=c", None)),
        ("priority=0 algo=deflate", AlgorithmParams("deflate", None, None, 0)),
        ("", AlgorithmParams()),
        ("\n", AlgorithmParams()),
        ("   \t ", AlgorithmParams()),
        # algorithm_params_store() (zram_drv.c) ignores a key it does not know, and a
        # repeated key's last value wins; the range of priority= is the device's check.
        ("color=blue", AlgorithmParams()),
        ("level=3 color=blue", AlgorithmParams(None, 3, None, None)),
        ("level=3 level=4", AlgorithmParams(None, 4, None, None)),
        ("algo=zstd algo=lz4", AlgorithmParams("lz4", None, None, None)),
        ("priority=-1", AlgorithmParams(None, None, None, -1)),
        ("=a=b level=1", AlgorithmParams(None, 1, None, None)),  # next_arg: "=a" is a key
        ("deflate.winbits=9", AlgorithmParams(winbits=9)),
        ("level=-2147483648", AlgorithmParams(None, -(2**31), None, None)),
        ("level=7\n", AlgorithmParams(None, 7, None, None)),
        # next_arg() quoting: a token or a value may be quoted, spaces kept inside
        ('level="3"', AlgorithmParams(None, 3, None, None)),
        ('"level=3"', AlgorithmParams(None, 3, None, None)),
        ('level="3', AlgorithmParams(None, 3, None, None)),
        ('dict="/a b" level=2', AlgorithmParams(None, 2, "/a b", None)),
        ('"dict=/a b"', AlgorithmParams(None, None, "/a b", None)),
    ],
)
def test_parse_algorithm_params(text: str, expected: AlgorithmParams) -> None:
    assert parse_algorithm_params(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # algorithm_params_store(): a token without a value is EINVAL, known key or not
        ("level=", "needs a value"),
        ("algo=", "needs a value"),
        ("level", "needs a value"),
        ("color", "needs a value"),
        ("color=", "needs a value"),
        ("=3", "needs a value"),
        ('level=""', "needs a value"),
        ("level=3 dict", "needs a value"),
        # kstrtoint(val, 10): decimal, one optional sign
        ("level=abc", "not an integer"),
        ("level=1.5", "not an integer"),
        ("level=0x3", "not an integer"),
        ("level=-+3", "not an integer"),
        ("level=٣", "not an integer"),
        ("priority=x", "not an integer"),
        ("deflate.winbits=a", "not an integer"),
        ("algo=nosuch", "unknown algorithm"),
        ("algo=ZSTD", "unknown algorithm"),
        ("algo=zstd,level=3", "unknown algorithm"),
    ],
)
def test_parse_algorithm_params_errors(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as info:
        parse_algorithm_params(text)
    assert not isinstance(info.value, ParamRangeError)


@pytest.mark.parametrize("text", ["level=2147483648", "level=-2147483649", "priority=99999999999"])
def test_parse_algorithm_params_out_of_range(text: str) -> None:
    # kstrtoint answers ERANGE for a number outside a C int; the device maps this error.
    with pytest.raises(ParamRangeError):
        parse_algorithm_params(text)


def test_algorithm_params_is_frozen() -> None:
    p = parse_algorithm_params("algo=zstd")
    with pytest.raises(AttributeError):
        p.algo = "lz4"  # type: ignore[misc]
