"""Command line and phases of ``benchmarks/compare``."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from .contenders import REPO, ZRAMFS_CLI, Contender, Device, Zramfs, all_contenders
from .fio import JOBS, PREFILL, FioJob, run_fio
from .kernel_tree import kernel_tarball, run_kernel_tree
from .report import Results, render_table, write_chart, write_json
from .scaling import empty_rss, fill_steps
from .system import (
    CommandError,
    GiB,
    MiB,
    TiB,
    Unavailable,
    ensure_tools,
    format_size,
    log,
    parse_size,
    read_file,
    run,
)

BENCH_DIR = REPO / "benchmarks"
OTHER_JOBS = ("kernel-tree", "scaling", "rss")
QUICK_JOBS = ("seqwrite", "seqread", "randread-qd1", "randread-qd16")
MEMORY_FIELDS = ("orig_data_size", "compr_data_size", "mem_used_total")


@dataclass
class Settings:
    """What to run and how big, after --quick and the explicit options are applied."""

    contenders: list[Contender]
    jobs: list[str]
    size: int
    runtime: float
    ramp: float
    repeat: int
    tree_size: int
    scale_max: int
    scale_step: int
    rss_sizes: list[int]
    results_dir: Path
    chart: bool
    quick: bool
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Status:
    """What happened to each contender, per phase (for the JSON and the failure list)."""

    description: str
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> Settings:
    names = [c.name for c in all_contenders()]
    all_jobs = [j.name for j in JOBS] + list(OTHER_JOBS)
    p = argparse.ArgumentParser(
        prog="benchmarks/compare",
        description="zramfs (lz4, zstd) against the kernel's zram, nbdkit memory "
                    "allocator=zstd behind nbdfuse, and a tmpfs file: fio jobs, a kernel "
                    "source tree on ext4, fill scaling and daemon RSS, in one run.",
        epilog=f"contenders: {', '.join(names)}; jobs: {', '.join(all_jobs)} "
               "(patterns allowed, e.g. 'rand*').",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"under a minute: {', '.join(QUICK_JOBS)} on 256 MiB, 3 s random jobs")
    p.add_argument("--only", metavar="CONTENDER[,..]", help="run only these contenders")
    p.add_argument("--jobs", metavar="JOB[,..]", help="run only these jobs")
    p.add_argument("--size", type=parse_size, help="fio region per device (1G; quick 256M)")
    p.add_argument("--runtime", type=float, help="seconds per random job (10; quick 3)")
    p.add_argument("--ramp", type=float, help="ramp seconds before random jobs (1; quick 0)")
    p.add_argument("--repeat", type=int, default=1, help="runs per fio job (median reported)")
    p.add_argument("--tree-size", type=parse_size, default=4 * GiB,
                   help="device size for the kernel tree (4G)")
    p.add_argument("--scale-max", type=parse_size, default=8 * GiB,
                   help="fill up to this size in the scaling test (8G)")
    p.add_argument("--scale-step", type=parse_size, default=256 * MiB,
                   help="step of the scaling test (256M)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--zramfs-cli", type=Path, default=ZRAMFS_CLI,
                   help=f"the zramfs command to drive (default {ZRAMFS_CLI})")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument("--list", action="store_true", help="list contenders and jobs, then exit")
    p.add_argument("--replot", type=Path, metavar="JSON",
                   help="print the table and redraw the chart of a saved run, then exit")
    a = p.parse_args(argv)
    if a.replot:
        sys.exit(replot(a.replot))
    if a.list:
        for c in all_contenders():
            print(f"contender {c.name:<12} {c.description}")
        for j in JOBS:
            print(f"job       {j.name:<14} {j.title}")
        print("job       kernel-tree    unpack linux-source-6.1 onto ext4, read it back")
        print("job       scaling        time per GiB while filling zramfs (zram as reference)")
        print("job       rss            zramfs daemon RSS, empty 1 GiB and 1 TiB devices")
        sys.exit(0)

    contenders = all_contenders(a.zramfs_cli)
    if a.only:
        wanted = [w.strip() for w in a.only.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(fnmatch.fnmatch(n, w) for n in names)]
        if unknown:
            p.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(names)}")
        contenders = [c for c in contenders if any(fnmatch.fnmatch(c.name, w) for w in wanted)]
    if a.jobs:
        wanted = [w.strip() for w in a.jobs.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(fnmatch.fnmatch(n, w) for n in all_jobs)]
        if unknown:
            p.error(f"unknown job(s) {', '.join(unknown)}; known: {', '.join(all_jobs)}")
        jobs = [j for j in all_jobs if any(fnmatch.fnmatch(j, w) for w in wanted)]
    else:
        jobs = list(QUICK_JOBS) if a.quick else all_jobs
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.scale_step <= 0 or a.scale_max < a.scale_step:
        p.error("--scale-step must be positive and at most --scale-max")
    return Settings(
        contenders=contenders,
        jobs=jobs,
        size=a.size or (256 * MiB if a.quick else GiB),
        runtime=a.runtime if a.runtime is not None else (3.0 if a.quick else 10.0),
        ramp=a.ramp if a.ramp is not None else (0.0 if a.quick else 1.0),
        repeat=a.repeat,
        tree_size=a.tree_size,
        scale_max=a.scale_max,
        scale_step=a.scale_step,
        rss_sizes=[GiB, TiB],
        results_dir=a.results_dir,
        chart=not a.no_chart,
        quick=a.quick,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    )


def _mib(n: int | None) -> float | None:
    return None if n is None else n / MiB


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, (Unavailable, CommandError)) \
        else str(exc)


# -- phases ---------------------------------------------------------------------------------


def fio_phase(s: Settings, results: Results, status: dict[str, Status]) -> None:
    """Every device open at once; each job runs on each contender in turn (interleaved, so
    that a slow spell of a noisy machine hits all contenders rather than one)."""
    jobs = [j for j in JOBS if j.name in s.jobs]
    if not jobs:
        return
    rows = {j.name: results.row(f"fio/{j.name}", j.title, "MiB/s", "higher") for j in jobs}
    # How long one request waits at queue depth 1 (a page fault on swap, for reads): fio's
    # total-latency percentiles (submission + completion), side by side.
    for j in jobs:
        if j.iodepth == 1 and j.rw in ("randread", "randwrite"):
            for pct in ("p50", "p99"):
                rows[f"{j.name}/{pct}"] = results.row(
                    f"fio/{j.name}/{pct}", f"{j.title}: {pct} latency", "us", "lower")
    mem_row = results.row("fio/memory", f"{format_size(s.size)} fio data: mem_used_total",
                          "MiB", "lower")
    need_data = any(j.reads or j.time_based for j in jobs)
    fill = next((j for j in jobs if j.name == "seqwrite"), PREFILL if need_data else None)
    devices: dict[str, Device] = {}
    with ExitStack() as stack:
        for c in s.contenders:
            log(f"[fio] setting up {c.name} ({format_size(s.size)})")
            try:
                devices[c.name] = stack.enter_context(c.open(s.size))
                status[c.name].notes["fio"] = devices[c.name].notes
            except Exception as exc:  # reported; the others still run
                msg = _one_line(exc)
                log(f"  {c.name}: FAILED: {msg}")
                status[c.name].errors["fio"] = msg
                for row in [*rows.values(), mem_row]:
                    results.set_error(row, c.name, msg)
        ordered = ([fill] if fill is not None else []) + [j for j in jobs if j is not fill]
        for job in ordered:
            for rep in range(s.repeat if job is not PREFILL else 1):
                for name, dev in devices.items():
                    _fio_one(s, job, name, dev, rep, results, rows, status)
            if job is fill:
                for name, dev in devices.items():
                    try:
                        mem = dev.memory()
                        results.set_value(mem_row, name, _mib(mem.get("mem_used_total")),
                                          {"memory": mem})
                    except OSError as exc:
                        results.set_error(mem_row, name, str(exc))


def _fio_one(s: Settings, job: FioJob, name: str, dev: Device, rep: int, results: Results,
             rows: dict[str, Any], status: dict[str, Status]) -> None:
    label = f"[fio] {job.title:<24} {name:<12}"
    if job is not PREFILL and job.writes and not job.time_based and rep > 0:
        label += " (overwrite)"
    try:
        r = run_fio(job, dev.path, s.size, s.runtime, ramp=s.ramp if job.time_based else 0)
    except (CommandError, OSError) as exc:
        log(f"{label} FAILED: {str(exc).splitlines()[0]}")
        status[name].errors.setdefault(f"fio/{job.name}", str(exc))
        if job.name in rows:
            results.set_error(rows[job.name], name, str(exc))
        for pct in ("p50", "p99"):
            if f"{job.name}/{pct}" in rows:
                results.set_error(rows[f"{job.name}/{pct}"], name, str(exc))
        return
    log(f"{label} {r.mib_s:9.1f} MiB/s {r.iops:10.0f} IOPS")
    if job.name in rows:
        results.add_sample(rows[job.name], name, r.mib_s, r.as_dict())
    side = "read" if job.rw == "randread" else "write"
    for pct, attr in (("p50", "p50_us"), ("p99", "lat_p99_us")):
        value = getattr(r, f"{side}_{attr}")
        if f"{job.name}/{pct}" in rows and value is not None:
            results.add_sample(rows[f"{job.name}/{pct}"], name, value)


def kernel_tree_phase(s: Settings, results: Results, status: dict[str, Status]) -> None:
    """One contender at a time, so that MemAvailable's drop belongs to that one."""
    if "kernel-tree" not in s.jobs:
        return
    rows = {
        "untar": results.row("tree/untar", "kernel tree: tar -x + sync", "s", "lower"),
        "read": results.row("tree/read", "kernel tree: read every file (cold)", "s", "lower"),
        **{key: results.row(f"tree/{key}", f"kernel tree: {key}", "MiB",
                            "lower" if key != "orig_data_size" else "neither")
           for key in MEMORY_FIELDS},
        "memavail": results.row("tree/memavail", "kernel tree: MemAvailable drop", "MiB",
                                "lower"),
    }
    try:
        tarball = kernel_tarball(BENCH_DIR / ".cache")
    except (CommandError, OSError, subprocess.CalledProcessError) as exc:
        for c in s.contenders:
            for row in rows.values():
                results.set_error(row, c.name, f"kernel source unavailable: {exc}")
        return
    for c in s.contenders:
        log(f"[kernel-tree] {c.name}: unpacking {tarball.name} onto ext4")
        try:
            with c.open(s.tree_size) as dev:
                r = run_kernel_tree(dev, tarball)
        except Exception as exc:  # reported; the others still run
            msg = _one_line(exc)
            log(f"  {c.name}: FAILED: {msg}")
            status[c.name].errors["kernel-tree"] = msg
            for row in rows.values():
                results.set_error(row, c.name, msg)
            continue
        log(f"  untar {r.untar_s:.1f} s, read {r.read_s:.1f} s, "
            f"mem_used_total {_mib(r.memory.get('mem_used_total')) or 0:.0f} MiB, "
            f"MemAvailable -{r.memavail_drop / MiB:.0f} MiB")
        status[c.name].notes["kernel-tree"] = {"memory": r.memory}
        results.set_value(rows["untar"], c.name, r.untar_s)
        results.set_value(rows["read"], c.name, r.read_s)
        for key in MEMORY_FIELDS:
            results.set_value(rows[key], c.name, _mib(r.memory.get(key)))
        results.set_value(rows["memavail"], c.name, r.memavail_drop / MiB)


def scaling_phase(s: Settings, results: Results, status: dict[str, Status]) -> dict[str, Any]:
    """Fill zramfs (and the kernel's zram, as the flat reference) in steps."""
    if "scaling" not in s.jobs:
        return {}
    chosen = [c for c in s.contenders if isinstance(c, Zramfs) or c.name == "zram"]
    quarter = max(1, (s.scale_max // s.scale_step) // 4)
    span = format_size(quarter * s.scale_step)
    first = results.row("scale/first", f"fill: first {span}", "s/GiB", "lower")
    last = results.row("scale/last", f"fill: last {span} of {format_size(s.scale_max)}",
                       "s/GiB", "lower")
    growth = results.row("scale/growth", "fill: last / first", "x", "lower")
    out: dict[str, Any] = {}
    for c in chosen:
        log(f"[scaling] {c.name}: filling {format_size(s.scale_max)} "
            f"in {format_size(s.scale_step)} steps")
        try:
            with c.open(s.scale_max) as dev:
                def progress(i: int, sec: float) -> None:
                    if (i + 1) % 4 == 0:
                        log(f"  {format_size((i + 1) * s.scale_step):>6}: {sec:.2f} s/GiB")

                steps = fill_steps(dev, s.scale_max, s.scale_step, progress)
                memory = dev.memory()
        except Exception as exc:  # reported; the others still run
            msg = _one_line(exc)
            log(f"  {c.name}: FAILED: {msg}")
            status[c.name].errors["scaling"] = msg
            for row in (first, last, growth):
                results.set_error(row, c.name, msg)
            continue
        head, tail = statistics.mean(steps[:quarter]), statistics.mean(steps[-quarter:])
        results.set_value(first, c.name, head)
        results.set_value(last, c.name, tail)
        results.set_value(growth, c.name, tail / head if head else None)
        out[c.name] = {"step_bytes": s.scale_step, "s_per_gib": steps, "memory": memory}
    return out


def rss_phase(s: Settings, results: Results, status: dict[str, Status]) -> None:
    if "rss" not in s.jobs:
        return
    for c in s.contenders:
        if not isinstance(c, Zramfs):
            continue
        for size in s.rss_sizes:
            row = results.row(f"rss/{format_size(size)}",
                              f"daemon RSS, empty {format_size(size)} device", "MiB", "lower")
            log(f"[rss] {c.name}: zramfs mount -s {format_size(size)}")
            try:
                rss = empty_rss(c, size)
            except Exception as exc:  # reported; the others still run
                msg = _one_line(exc)
                log(f"  FAILED: {msg}")
                status[c.name].errors[f"rss/{format_size(size)}"] = msg
                results.set_error(row, c.name, msg)
                continue
            if rss is None:
                results.set_error(row, c.name, "no daemon pid (pid file missing)")
            else:
                log(f"  {rss / MiB:.1f} MiB")
                results.set_value(row, c.name, rss / MiB)


# -- the run ----------------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    def version(cmd: list[str]) -> str | None:
        try:
            return run(cmd, timeout=30).strip().splitlines()[0]
        except (CommandError, IndexError):
            return None

    meminfo = read_file("/proc/meminfo").splitlines()
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total": next((int(x.split()[1]) * 1024 for x in meminfo
                           if x.startswith("MemTotal:")), None),
        "loadavg_start": read_file("/proc/loadavg").split()[:3],
        "python": platform.python_version(),
        "fio": version(["fio", "--version"]),
        "nbdkit": version(["nbdkit", "--version"]),
    }


def replot(path: Path) -> int:
    """Table and chart again from a saved JSON (the chart goes next to it, same stem)."""
    doc = json.loads(path.read_text())
    results = Results.from_json(list(doc["contenders"]), doc["rows"])
    header = doc.get("header", path.stem)
    sys.stdout.write(f"{header}\n\n{render_table(results)}")
    step = doc["settings"]["scale_step"] / GiB
    chart = path.with_suffix(".png")
    write_chart(results, {k: v["s_per_gib"] for k, v in doc.get("scaling", {}).items()},
                step, chart, header)
    log(f"chart: {chart}")
    return 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/compare needs root (loop devices, mounts, zram, drop_caches)",
              file=sys.stderr)
        return 2
    reason = ensure_tools({"fio": "fio", "losetup": "mount", "mkfs.ext4": "e2fsprogs"})
    if reason:
        print(f"benchmarks/compare: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    results = Results([c.name for c in s.contenders])
    status = {c.name: Status(c.description) for c in s.contenders}
    host = host_info()
    scaling: dict[str, Any] = {}
    interrupted = False
    log(f"compare: {'quick' if s.quick else 'full'} run; contenders "
        f"{', '.join(c.name for c in s.contenders)}; jobs {', '.join(s.jobs)}")
    try:
        fio_phase(s, results, status)
        kernel_tree_phase(s, results, status)
        scaling = scaling_phase(s, results, status)
        rss_phase(s, results, status)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: everything set up has been released; writing what was measured")
    duration = time.monotonic() - t0
    host["loadavg_end"] = read_file("/proc/loadavg").split()[:3]

    table = render_table(results)
    mode = "quick" if s.quick else "full"
    header = (f"zramfs compare, {mode} run {started:%Y-%m-%d %H:%M}, "
              f"{host['cpus']} CPUs, kernel {host['kernel']}, {duration:.0f} s")
    sys.stdout.write(f"{header}\nratios: figure / reference's figure "
                     f"(read with the 'better' direction of each row)\n\n{table}")
    document = {
        "schema": 1,
        "header": header,
        "mode": mode,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "interrupted": interrupted,
        "settings": {
            "fio_size": s.size, "runtime_s": s.runtime, "ramp_s": s.ramp, "repeat": s.repeat,
            "tree_size": s.tree_size, "scale_max": s.scale_max, "scale_step": s.scale_step,
            "jobs": s.jobs, "argv": s.args,
        },
        "host": host,
        "references": ["zram", "nbdkit"],
        "contenders": {name: {"description": st.description,
                              "status": "failed" if st.errors else "ok",
                              "errors": st.errors, "notes": st.notes}
                       for name, st in status.items()},
        "rows": results.to_json(),
        "scaling": scaling,
    }
    path = write_json(document, s.results_dir, stamp)
    log(f"results: {path} (and latest.json)")
    if s.chart:
        try:
            chart = s.results_dir / f"compare-{stamp}.png"
            write_chart(results, {k: v["s_per_gib"] for k, v in scaling.items()},
                        s.scale_step / GiB, chart, header)
            if chart.exists():
                (s.results_dir / "latest.png").write_bytes(chart.read_bytes())
                log(f"chart: {chart} (and latest.png)")
        except Exception as exc:  # the numbers are already written
            log(f"chart failed: {_one_line(exc)}")
    return 130 if interrupted else 0
