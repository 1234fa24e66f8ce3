"""Type stub of the C extension zramfs/_pagecodec.c (see its header comment)."""

from collections.abc import Sequence

from typing_extensions import Buffer

LZ4: int
ZSTD: int

def encode(algo: int, data: Buffer, huge: int, /) -> list[int | bytes]: ...
def decode(algo: int, payloads: Sequence[int | bytes], /) -> bytes | int: ...
def decompress_page(algo: int, block: Buffer, /) -> bytes | None: ...
