#!/usr/bin/env python3
"""Core benchmark: PageStore write/read speed per codec on a real corpus, and allocator
overhead side by side with the kernel's zram. The corpus is the regular files under a
directory (default /usr/lib, sorted walk order, up to --mib MiB, default 256), concatenated
and cut into 4 KiB pages. For each codec the script writes the corpus into a fresh PageStore
in 1 MiB requests (what FUSE hands the daemon), timing compression (prepare_write) and the
page-table/pool work (commit_write) separately, reads it back the same way (fetch, then
finish_read) and verifies it, then times random single-page reads and writes; it reports
pages per second and the store's mm_stat figures, in particular the allocator overhead
mem_used_total / compr_data_size. If /dev/zram0 exists and is not initialised, the same bytes
are written to it with O_DIRECT after selecting lz4, its mm_stat is read for comparison, and
the device is always reset afterwards; a device that is already initialised is left alone
and its column skipped. Run as ``python benchmarks/core_bench.py [--mib N] [--root DIR]
[--codecs lz4,zstd] [--no-kernel]``; it prints a table and writes JSON to
benchmarks/results/core_bench.json.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import stat
import sys
import time
from pathlib import Path
from typing import Any

from zramfs.codecs import ALGORITHMS, make_codec
from zramfs.pagestore import PAGE_SIZE, PageStore
from zramfs.zsmalloc import HUGE_CLASS_SIZE

MiB = 1 << 20
REQUEST = MiB  # bytes per write/read request, as FUSE batches them
ZRAM = Path("/sys/block/zram0")
MM_STAT_FIELDS = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "mem_limit",
    "mem_used_max",
    "same_pages",
    "pages_compacted",
    "huge_pages",
    "huge_pages_since",
)


def load_corpus(root: str, limit: int) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of the regular files under ``root``, padded to whole pages."""
    buf = bytearray()
    files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                with open(path, "rb") as f:
                    buf += f.read(limit - len(buf))
            except OSError:
                continue
            files += 1
            if len(buf) >= limit:
                break
        if len(buf) >= limit:
            break
    buf += bytes(-len(buf) % PAGE_SIZE)
    return bytes(buf), files


def bench_codec(name: str, corpus: bytes, random_ops: int) -> dict[str, Any]:
    codec = make_codec(name)
    store = PageStore(len(corpus), codec)
    mv = memoryview(corpus)
    pages = len(corpus) // PAGE_SIZE
    t_prepare = t_commit = 0.0
    for off in range(0, len(corpus), REQUEST):
        t0 = time.perf_counter()
        prepared = store.prepare_write(off, mv[off : off + REQUEST])
        t1 = time.perf_counter()
        store.commit_write(prepared)
        t_commit += time.perf_counter() - t1
        t_prepare += t1 - t0
    stats = store.statistics()

    t_fetch = t_finish = 0.0
    ok = True
    for off in range(0, len(corpus), REQUEST):
        t0 = time.perf_counter()
        pending = store.fetch(off, min(REQUEST, len(corpus) - off))
        t1 = time.perf_counter()
        out = store.finish_read(pending)
        t_finish += time.perf_counter() - t1
        t_fetch += t1 - t0
        ok = ok and out == mv[off : off + REQUEST]

    rng = random.Random(42)
    picks = [rng.randrange(pages) for _ in range(random_ops)]
    t0 = time.perf_counter()
    for p in picks:
        store.read(p * PAGE_SIZE, PAGE_SIZE)
    t_rand_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in picks:
        store.write(p * PAGE_SIZE, mv[p * PAGE_SIZE : (p + 1) * PAGE_SIZE])
    t_rand_write = time.perf_counter() - t0
    store.close()

    write_s = t_prepare + t_commit
    read_s = t_fetch + t_finish
    return {
        "codec": name,
        "level": codec.level,
        "pages": pages,
        "verified": ok,
        "write_pages_per_s": pages / write_s,
        "read_pages_per_s": pages / read_s,
        "write_MiB_per_s": pages * PAGE_SIZE / MiB / write_s,
        "read_MiB_per_s": pages * PAGE_SIZE / MiB / read_s,
        "prepare_us_per_page": t_prepare / pages * 1e6,
        "commit_us_per_page": t_commit / pages * 1e6,
        "fetch_us_per_page": t_fetch / pages * 1e6,
        "finish_us_per_page": t_finish / pages * 1e6,
        "random_4k_read_pages_per_s": random_ops / t_rand_read if random_ops else None,
        "random_4k_write_pages_per_s": random_ops / t_rand_write if random_ops else None,
        "mm_stat": {f: getattr(stats, f) for f in MM_STAT_FIELDS},
        "ratio": stats.orig_data_size / stats.compr_data_size if stats.compr_data_size else None,
        "overhead": stats.mem_used_total / stats.compr_data_size if stats.compr_data_size else None,
    }


def _write_attr(name: str, value: str) -> None:
    (ZRAM / name).write_text(value)


def bench_kernel(corpus: bytes, algorithm: str) -> dict[str, Any]:
    """Write the corpus to /dev/zram0 with O_DIRECT and read its mm_stat; always reset."""
    if not ZRAM.exists() or not os.path.exists("/dev/zram0"):
        return {"skipped": "no /sys/block/zram0 or /dev/zram0 on this machine"}
    if os.geteuid() != 0:
        return {"skipped": "needs root to initialise /dev/zram0"}
    if (ZRAM / "initstate").read_text().strip() != "0":
        return {"skipped": "/dev/zram0 is initialised (in use): not touched"}
    listed = (ZRAM / "comp_algorithm").read_text().split()
    previous = next((a.strip("[]") for a in listed if a.startswith("[")), None)
    if algorithm not in [a.strip("[]") for a in listed]:
        return {"skipped": f"kernel zram has no {algorithm} (has: {' '.join(listed)})"}
    initialised = False
    try:
        try:
            _write_attr("comp_algorithm", algorithm)
            _write_attr("disksize", str(len(corpus)))
        except OSError as exc:
            return {"skipped": f"could not initialise /dev/zram0: {exc}"}
        initialised = True
        buf = mmap.mmap(-1, REQUEST)  # page-aligned, as O_DIRECT needs
        fd = os.open("/dev/zram0", os.O_WRONLY | os.O_DIRECT)
        try:
            t0 = time.perf_counter()
            for off in range(0, len(corpus), REQUEST):
                chunk = corpus[off : off + REQUEST]
                buf[: len(chunk)] = chunk
                view = memoryview(buf)[: len(chunk)]
                try:
                    done = os.pwrite(fd, view, off)
                finally:
                    view.release()
                if done != len(chunk):
                    raise OSError(f"short write at {off}: {done}")
            elapsed = time.perf_counter() - t0
        finally:
            os.close(fd)
            buf.close()
        values = [int(x) for x in (ZRAM / "mm_stat").read_text().split()]
        mm = dict(zip(MM_STAT_FIELDS, values, strict=False))
        pages = len(corpus) // PAGE_SIZE
        return {
            "algorithm": algorithm,
            "write_pages_per_s": pages / elapsed,
            "write_MiB_per_s": len(corpus) / MiB / elapsed,
            "mm_stat": mm,
            "ratio": mm["orig_data_size"] / mm["compr_data_size"]
            if mm["compr_data_size"]
            else None,
            "overhead": mm["mem_used_total"] / mm["compr_data_size"]
            if mm["compr_data_size"]
            else None,
        }
    finally:
        if initialised:
            _write_attr("reset", "1")
            if previous and previous != algorithm:
                try:
                    _write_attr("comp_algorithm", previous)
                except OSError:
                    pass


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split(". ")[0])
    ap.add_argument("--root", default="/usr/lib", help="corpus directory (default /usr/lib)")
    ap.add_argument("--mib", type=int, default=256, help="corpus size in MiB (default 256)")
    ap.add_argument(
        "--codecs", default=",".join(ALGORITHMS), help="comma-separated codecs (default all)"
    )
    ap.add_argument("--random-ops", type=int, default=20000, help="random 4 KiB reads/writes")
    ap.add_argument("--no-kernel", action="store_true", help="skip the kernel zram column")
    ap.add_argument(
        "--output",
        default=str(Path(__file__).resolve().parent / "results" / "core_bench.json"),
        help="JSON output path",
    )
    args = ap.parse_args(argv)
    codecs = [c for c in args.codecs.split(",") if c]
    for c in codecs:
        make_codec(c)  # fail early on a bad name

    t0 = time.perf_counter()
    corpus, files = load_corpus(args.root, args.mib * MiB)
    pages = len(corpus) // PAGE_SIZE
    print(
        f"corpus: {len(corpus) / MiB:.1f} MiB ({pages} pages) from {files} files under "
        f"{args.root}, read in {time.perf_counter() - t0:.1f} s; "
        f"huge threshold {HUGE_CLASS_SIZE} B; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )

    results = []
    for name in codecs:
        r = bench_codec(name, corpus, args.random_ops)
        results.append(r)
        if not r["verified"]:
            print(f"ERROR: {name} read back different data", file=sys.stderr)

    kernel: dict[str, Any]
    if args.no_kernel:
        kernel = {"skipped": "--no-kernel given"}
    else:
        kernel = bench_kernel(corpus, "lz4")

    print()
    head = (
        f"{'codec':<8} {'write p/s':>10} {'read p/s':>10} {'write MiB/s':>11} "
        f"{'read MiB/s':>10} {'cmp us/p':>8} {'commit us/p':>11} {'dec us/p':>8} "
        f"{'rnd rd p/s':>10} {'rnd wr p/s':>10} {'ratio':>6} {'overhead':>8} "
        f"{'same':>6} {'huge':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        mm = r["mm_stat"]
        print(
            f"{r['codec']:<8} {r['write_pages_per_s']:>10,.0f} {r['read_pages_per_s']:>10,.0f} "
            f"{r['write_MiB_per_s']:>11.1f} {r['read_MiB_per_s']:>10.1f} "
            f"{r['prepare_us_per_page']:>8.2f} {r['commit_us_per_page']:>11.2f} "
            f"{r['finish_us_per_page']:>8.2f} "
            f"{fmt(r['random_4k_read_pages_per_s'], ',.0f'):>10} "
            f"{fmt(r['random_4k_write_pages_per_s'], ',.0f'):>10} "
            f"{fmt(r['ratio'], '.3f'):>6} {fmt(r['overhead'], '.4f'):>8} "
            f"{mm['same_pages']:>6} {mm['huge_pages']:>6}"
        )

    print()
    print("allocator overhead (mem_used_total / compr_data_size), same corpus:")
    ours = next((r for r in results if r["codec"] == "lz4"), None)
    rows = []
    if ours is not None:
        rows.append(("zramfs lz4", ours["mm_stat"], ours["overhead"], ours["ratio"]))
    if "skipped" in kernel:
        print(f"  kernel zram: skipped: {kernel['skipped']}")
    else:
        rows.append(("kernel zram lz4", kernel["mm_stat"], kernel["overhead"], kernel["ratio"]))
    for label, mm, overhead, ratio in rows:
        print(
            f"  {label:<16} orig {mm['orig_data_size']:>11} compr {mm['compr_data_size']:>11} "
            f"mem_used {mm['mem_used_total']:>11}  ratio {fmt(ratio, '.3f')}  "
            f"overhead {fmt(overhead, '.4f')}  same {mm['same_pages']}  huge {mm['huge_pages']}"
        )
    if "skipped" not in kernel:
        print(
            f"  kernel zram write through /dev/zram0 (O_DIRECT, 1 MiB): "
            f"{kernel['write_pages_per_s']:,.0f} pages/s"
        )

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "corpus": {"root": args.root, "bytes": len(corpus), "pages": pages, "files": files},
        "request_bytes": REQUEST,
        "huge_class_size": HUGE_CLASS_SIZE,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel_release": platform.release(),
        "codecs": results,
        "kernel_zram": kernel,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {out}")
    return 0 if all(r["verified"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
