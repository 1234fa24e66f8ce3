"""The batch codec API (Codec.encode_pages / decode_pages) against the per-page path.

Without a dictionary, lz4's batch encoding and every lz4 and zstd decode run in the C
extension (zramfs._pagecodec); its lz4 blocks need not be byte-identical to the per-page
path's, so the oracle is what a user relies on: every payload decodes, with the per-page
decompress, to its page; a same-filled page is its fill word; a page is stored raw exactly
when the block would have been ``huge`` bytes or more; and decode_pages gives back the
pages whichever path encoded them.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zramfs.codecs import ALGORITHMS, BatchDecompressError, Codec, DecompressError, make_codec
from zramfs.zsmalloc import HUGE_CLASS_SIZE

PAGE = 4096
WORDS = [b"zram", b"page", b"compress", b"kernel", b"swap", b"\n", b"0123", b"  "]


def make_page(kind: str, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(PAGE)
    if kind == "zero":
        return bytes(PAGE)
    if kind == "same":
        return rng.randbytes(8) * (PAGE // 8)
    if kind == "text":
        out = bytearray()
        while len(out) < PAGE:
            out += rng.choice(WORDS) + b" "
        return bytes(out[:PAGE])
    if kind == "nearly-same":  # one differing byte: not same-filled
        page = bytearray(rng.randbytes(8) * (PAGE // 8))
        page[rng.randrange(PAGE)] ^= 0xFF
        return bytes(page)
    # "half": half text, half noise, compresses to around the huge threshold
    cut = rng.randrange(PAGE // 4, PAGE)
    return make_page("text", seed)[:cut] + rng.randbytes(PAGE - cut)


KINDS = ["random", "zero", "same", "text", "nearly-same", "half"]


def codecs(tmp: Path) -> list[Codec]:
    dict_file = tmp / "dict"
    dict_file.write_bytes(b"".join(make_page("text", s) for s in range(4)))
    out = [make_codec(name) for name in ALGORITHMS]
    out += [make_codec("zstd", level=-3), make_codec("zstd", level=19)]
    out += [
        make_codec("lz4", dict_path=str(dict_file)),
        make_codec("zstd", dict_path=str(dict_file)),
    ]
    return out


@pytest.fixture(scope="module")
def all_codecs(tmp_path_factory: pytest.TempPathFactory) -> list[Codec]:
    return codecs(tmp_path_factory.mktemp("dict"))


def check_payloads(
    codec: Codec, pages: list[bytes], payloads: list[int | bytes], huge: int
) -> None:
    assert len(payloads) == len(pages)
    for page, p in zip(pages, payloads, strict=True):
        word = page[:8]
        if page == word * (PAGE // 8):
            assert p == int.from_bytes(word, "little")
            continue
        assert type(p) is bytes
        if len(p) == PAGE:
            assert p == page
            # raw only when the block would not have been smaller than ``huge``: check with
            # the per-page compressor, allowing the C block to differ by a few bytes
            assert len(codec.compress(page)) >= huge - 64
        else:
            assert len(p) < huge
            assert codec.decompress(p, PAGE) == page  # the per-page path decodes it


def per_page(codec: Codec, pages: list[bytes], huge: int) -> list[int | bytes]:
    out: list[int | bytes] = []
    for page in pages:
        word = page[:8]
        if page == word * (PAGE // 8):
            out.append(int.from_bytes(word, "little"))
            continue
        c = codec.compress(page)
        out.append(page if len(c) >= huge else c)
    return out


def test_c_path_is_used_without_a_dictionary(all_codecs: list[Codec]) -> None:
    fast = {(c.name, c.dict_path is None) for c in all_codecs if c.batch_nogil}
    assert fast == {("lz4", True)}
    # decoding in C: a corrupt block comes back as the batch error, not the library's
    for c in all_codecs:
        if c.name in ("lz4", "zstd") and c.dict_path is None:
            with pytest.raises(BatchDecompressError, match="not a valid block"):
                c.decode_pages([b"\xff" * 40])


@pytest.mark.parametrize("kind", KINDS)
def test_one_page_decompress_agrees(all_codecs: list[Codec], kind: str) -> None:
    page = make_page(kind, 11)
    for codec in all_codecs:
        block = codec.compress(page)
        assert codec.decompress(block, PAGE) == page
        assert codec.decompress(memoryview(bytearray(block)), PAGE) == page
        for c_block in codec.encode_pages(page, PAGE):
            if type(c_block) is bytes and len(c_block) < PAGE:
                assert codec.decompress(c_block, PAGE) == page
        with pytest.raises(DecompressError):
            codec.decompress(block[: len(block) // 2], PAGE)


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=0, max_size=40),
    seed=st.integers(0, 2**32),
    huge=st.sampled_from([HUGE_CLASS_SIZE, 64, 2, PAGE]),
    offset=st.integers(0, 3),
)
def test_round_trip_against_the_per_page_path(
    all_codecs: list[Codec], kinds: list[str], seed: int, huge: int, offset: int
) -> None:
    pages = [make_page(k, seed + i) for i, k in enumerate(kinds)]
    joined = b"".join(pages)
    # a memoryview slice of a larger buffer, as prepare_write passes it
    buf = memoryview(bytes(offset) + joined + bytes(5))[offset : offset + len(joined)]
    for codec in all_codecs:
        payloads = codec.encode_pages(buf, huge)
        check_payloads(codec, pages, payloads, huge)
        assert codec.decode_pages(payloads) == joined
        # and what the per-page path stored decodes through the batch path
        if pages:
            assert codec.decode_pages(per_page(codec, pages, huge)) == joined
            # the generic (per-page) decode agrees with the C one
            assert Codec.decode_pages(codec, payloads) == joined


@pytest.mark.parametrize("index", [0, 3, 7])
def test_a_corrupt_block_names_its_page(all_codecs: list[Codec], index: int) -> None:
    pages = [make_page("text", s) for s in range(8)]
    for codec in all_codecs:
        payloads = codec.encode_pages(b"".join(pages), HUGE_CLASS_SIZE)
        bad = list(payloads)
        block = bad[index]
        assert type(block) is bytes and len(block) < PAGE
        bad[index] = block[: len(block) // 2]
        with pytest.raises(BatchDecompressError) as info:
            codec.decode_pages(bad)
        assert info.value.index == index, codec
        bad[index] = b"\xff" * 40  # garbage
        with pytest.raises(BatchDecompressError) as info:
            codec.decode_pages(bad)
        assert info.value.index == index, codec


def test_unwritten_and_fill_pages_decode(all_codecs: list[Codec]) -> None:
    w = 0x0102030405060708
    for codec in all_codecs:
        out = codec.decode_pages([0, w, make_page("random", 1)])
        assert out == bytes(PAGE) + w.to_bytes(8, "little") * (PAGE // 8) + make_page("random", 1)
        # a block read back from a backing store may come as a bytearray
        block = codec.encode_pages(make_page("text", 3), HUGE_CLASS_SIZE)[0]
        assert type(block) is bytes
        assert codec.decode_pages([bytearray(block), 0]) == make_page("text", 3) + bytes(PAGE)  # type: ignore[list-item]


def test_bad_input_raises(all_codecs: list[Codec]) -> None:
    for codec in all_codecs:
        if not codec.batch_nogil:
            continue
        with pytest.raises(ValueError):
            codec.encode_pages(b"x" * (PAGE + 1), HUGE_CLASS_SIZE)  # not whole pages
        with pytest.raises(TypeError):
            codec.decode_pages([1.5])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            codec.decode_pages([b"x" * (PAGE + 1)])


def test_threads_encode_and_decode_at_once(all_codecs: list[Codec]) -> None:
    pages = [make_page(KINDS[i % len(KINDS)], i) for i in range(64)]
    joined = b"".join(pages)
    errors: list[BaseException] = []

    def work(codec: Codec) -> None:
        try:
            for _ in range(20):
                payloads = codec.encode_pages(joined, HUGE_CLASS_SIZE)
                check_payloads(codec, pages, payloads, HUGE_CLASS_SIZE)
                assert codec.decode_pages(payloads) == joined
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for codec in all_codecs:
        if not codec.batch_nogil:
            continue
        threads = [threading.Thread(target=work, args=(codec,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
