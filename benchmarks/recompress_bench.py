"""Recompression on real data through the core: /usr/lib pages stored with lz4, then
recompressed with zstd as `recompress` does (PageStore.select_recompress + recompress).

Prints compr_data_size and mem_used_total before and after, the pages replaced, the time
per page tried and the time per page to read back a recompressed page, as JSON.

    .venv/bin/python benchmarks/recompress_bench.py [--mib 64] [--level 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator

from zramfs.codecs import make_codec
from zramfs.pagestore import PAGE_SIZE, PageStore


def corpus_pages(root: str, limit: int) -> Iterator[bytes]:
    """Up to ``limit`` bytes of whole pages from the regular files under ``root``."""
    total = 0
    for dirpath, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read(8 << 20)
            except OSError:
                continue
            whole = len(data) // PAGE_SIZE * PAGE_SIZE
            for off in range(0, whole, PAGE_SIZE):
                yield data[off : off + PAGE_SIZE]
                total += PAGE_SIZE
                if total >= limit:
                    return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/usr/lib")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--level", type=int, default=None, help="zstd level (default: zstd's)")
    args = ap.parse_args()
    pages = list(corpus_pages(args.root, args.mib << 20))
    n = len(pages)
    store = PageStore(n * PAGE_SIZE, make_codec("lz4"))
    store.set_recompression({1: make_codec("zstd", level=args.level)})
    store.write(0, b"".join(pages))
    before = store.statistics()
    indices = store.select_recompress(0, 2)
    t0 = time.perf_counter()
    tried, replaced = store.recompress(indices, 1, 2)
    t1 = time.perf_counter()
    store.compact()
    after = store.statistics()
    # Read back every page (recompressed ones are decoded with zstd).
    t2 = time.perf_counter()
    for i in range(n):
        assert store.read(i * PAGE_SIZE, PAGE_SIZE) == pages[i]
    t3 = time.perf_counter()
    out = {
        "corpus": f"{args.root}, {n} pages ({n * PAGE_SIZE >> 20} MiB)",
        "primary": "lz4",
        "secondary": f"zstd level {args.level or 'default'}",
        "same_pages": before.same_pages,
        "huge_pages_before": before.huge_pages,
        "huge_pages_after": after.huge_pages,
        "compr_data_size_before": before.compr_data_size,
        "compr_data_size_after": after.compr_data_size,
        "compr_saved_percent": round(
            100 * (1 - after.compr_data_size / max(before.compr_data_size, 1)), 1
        ),
        "mem_used_total_before": before.mem_used_total,
        "mem_used_total_after_compact": after.mem_used_total,
        "pages_tried": tried,
        "pages_replaced": replaced,
        "us_per_page_tried": round((t1 - t0) / max(tried, 1) * 1e6, 1),
        "us_per_page_read_back_all": round((t3 - t2) / n * 1e6, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
