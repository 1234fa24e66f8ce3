"""The fio jobs: libaio, O_DIRECT, compressible data, JSON output."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from typing import Any

from .system import CommandError, MiB, run

# About two thirds of every 4 KiB chunk compressible, fresh data for every write: lz4 gets
# roughly 2.5:1, like a mixed binary/text workload, and nobody stores same-filled pages.
COMPRESSIBLE = (
    "--buffer_compress_percentage=65",
    "--buffer_compress_chunk=4k",
    "--refill_buffers",
)


@dataclass(frozen=True)
class FioJob:
    """One fio job; ``time_based`` jobs run for the runtime over the prefilled region."""

    name: str
    title: str
    rw: str
    bs: str
    iodepth: int
    time_based: bool
    rwmixread: int | None = None

    @property
    def writes(self) -> bool:
        return "write" in self.rw or self.rw == "randrw"

    @property
    def reads(self) -> bool:
        return "read" in self.rw or self.rw == "randrw"


JOBS: tuple[FioJob, ...] = (
    FioJob("seqwrite", "write 1 MiB QD8", "write", "1M", 8, False),
    FioJob("seqread", "read 1 MiB QD8", "read", "1M", 8, False),
    FioJob("randread-qd1", "randread 4 KiB QD1", "randread", "4k", 1, True),
    FioJob("randread-qd16", "randread 4 KiB QD16", "randread", "4k", 16, True),
    FioJob("randwrite-qd1", "randwrite 4 KiB QD1", "randwrite", "4k", 1, True),
    FioJob("randwrite-qd16", "randwrite 4 KiB QD16", "randwrite", "4k", 16, True),
    FioJob("randrw-qd16", "randrw 70/30 4 KiB QD16", "randrw", "4k", 16, True, 70),
)

# Unmeasured: fills the region when the jobs that need data do not include seqwrite.
PREFILL = FioJob("prefill", "prefill 1 MiB QD8", "write", "1M", 8, False)


@dataclass(frozen=True)
class FioResult:
    """Bandwidth over both directions, IOPS, the p99 completion latency per direction
    (fio's clat), and the p50 and p99 total latency per direction (fio's lat: submission
    plus completion, which is what a waiting page fault sees: the kernel's zram does its
    work inside the submission, so its clat alone is near zero)."""

    mib_s: float
    iops: float
    runtime_s: float
    read_mib_s: float
    write_mib_s: float
    read_p99_us: float | None
    write_p99_us: float | None
    read_p50_us: float | None = None
    write_p50_us: float | None = None
    read_lat_p99_us: float | None = None
    write_lat_p99_us: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fio_command(job: FioJob, device: str, size: int, runtime: float, offset: int = 0,
                ramp: float = 0.0) -> list[str]:
    cmd = [
        "fio", f"--name={job.name}", f"--filename={device}", "--ioengine=libaio",
        "--direct=1", f"--rw={job.rw}", f"--bs={job.bs}", f"--iodepth={job.iodepth}",
        f"--size={size}", f"--offset={offset}", "--output-format=json", *COMPRESSIBLE,
        "--lat_percentiles=1",
    ]
    if job.time_based:
        cmd += ["--time_based", f"--runtime={runtime:g}s", "--norandommap"]
        if ramp > 0:
            cmd.append(f"--ramp_time={ramp:g}s")
    if job.rwmixread is not None:
        cmd.append(f"--rwmixread={job.rwmixread}")
    return cmd


def _pct_us(side: dict[str, Any], which: str, kind: str = "clat_ns") -> float | None:
    pct = side.get(kind, {}).get("percentile", {})
    value = pct.get(which)
    return None if value is None else value / 1000.0


def _p99_us(side: dict[str, Any]) -> float | None:
    return _pct_us(side, "99.000000")


def run_fio(job: FioJob, device: str, size: int, runtime: float, offset: int = 0,
            ramp: float = 0.0) -> FioResult:
    """Run one job on ``device`` (from a scratch directory, so fio leaves no state files)."""
    cmd = fio_command(job, device, size, runtime, offset, ramp)
    timeout = 3600 if not job.time_based else runtime + ramp + 300
    with tempfile.TemporaryDirectory(prefix="fio-compare-") as scratch:
        out = run(cmd, timeout=timeout, cwd=scratch)
    start = out.find("{")
    try:
        data = json.loads(out[start:])
    except json.JSONDecodeError as exc:
        raise CommandError(f"fio printed no JSON ({exc}): {out[:300]}") from None
    fj = data["jobs"][0]
    if fj.get("error"):
        raise CommandError(f"fio job {job.name} failed with error {fj['error']}")
    rd, wr = fj["read"], fj["write"]
    total_bytes = rd["io_bytes"] + wr["io_bytes"]
    runtime_ms = max(rd["runtime"], wr["runtime"]) or fj.get("job_runtime", 0)
    if total_bytes == 0 or runtime_ms == 0:
        raise CommandError(f"fio job {job.name} did no I/O")
    return FioResult(
        mib_s=(rd["bw_bytes"] + wr["bw_bytes"]) / MiB,
        iops=rd["iops"] + wr["iops"],
        runtime_s=runtime_ms / 1000.0,
        read_mib_s=rd["bw_bytes"] / MiB,
        write_mib_s=wr["bw_bytes"] / MiB,
        read_p99_us=_p99_us(rd) if rd["io_bytes"] else None,
        write_p99_us=_p99_us(wr) if wr["io_bytes"] else None,
        read_p50_us=_pct_us(rd, "50.000000", "lat_ns") if rd["io_bytes"] else None,
        write_p50_us=_pct_us(wr, "50.000000", "lat_ns") if wr["io_bytes"] else None,
        read_lat_p99_us=_pct_us(rd, "99.000000", "lat_ns") if rd["io_bytes"] else None,
        write_lat_p99_us=_pct_us(wr, "99.000000", "lat_ns") if wr["io_bytes"] else None,
    )
