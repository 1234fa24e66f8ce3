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
    rng = level_range(name)
    if rng is None:
        return [None]
    return [lv for lv in range(rng[0], rng[1] + 1) if lv != 0 or name != "zstd"]


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
    assert make_codec("lz4").level is None
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
        ("lz4", 1, None, "takes no level"),
        ("lz4hc", 0, None, "out of range"),
        ("lz4hc", 13, None, "out of range"),
        ("zstd", 23, None, "out of range"),
        ("zstd", -8, None, "out of range"),
        ("zstd", 0, None, "out of range"),
        ("deflate", 0, None, "out of range"),
        ("deflate", 10, None, "out of range"),
        ("lz4hc", None, "d", "takes no dictionary"),
        ("deflate", None, "d", "takes no dictionary"),
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
    ],
)
def test_parse_algorithm_params(text: str, expected: AlgorithmParams) -> None:
    assert parse_algorithm_params(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("level=", "needs a value"),
        ("algo=", "needs a value"),
        ("level", "not key=value"),
        ("level=abc", "not an integer"),
        ("level=1.5", "not an integer"),
        ("level=٣", "not an integer"),
        ("priority=-1", "negative"),
        ("priority=x", "not an integer"),
        ("algo=nosuch", "unknown algorithm"),
        ("algo=ZSTD", "unknown algorithm"),
        ("color=blue", "unknown parameter"),
        ("=3", "unknown parameter"),
        ("level=3 level=4", "twice"),
        ("algo=zstd,level=3", "unknown algorithm"),
    ],
)
def test_parse_algorithm_params_errors(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_algorithm_params(text)


def test_algorithm_params_is_frozen() -> None:
    p = parse_algorithm_params("algo=zstd")
    with pytest.raises(AttributeError):
        p.algo = "lz4"  # type: ignore[misc]
