"""`zramfs top`: a live per-device view, refreshed until q or Ctrl-C.

Each refresh reads MOUNT/metrics (one read gives every device's figures, rendered by the
daemon from statistics()) for every mount, and shows per device the compression ratio,
memory used and its limit, read and write rates (from the page counters' change since the
last refresh) and the writeback tier's figures.  Plain ANSI: the screen is cleared and
redrawn; the terminal is put in cbreak mode so a single q quits, and restored on the way
out whatever happens.  Without a terminal (or with -n) it prints the given number of frames.
"""

from __future__ import annotations

import os
import re
import select
import sys
import termios
import time
import tty
from collections.abc import Sequence

from .sizes import format_size

PAGE_SIZE = 4096
SAMPLE_RE = re.compile(r'^zramfs_([a-z_]+)\{device="(zram[0-9]+)"\} (\S+)$')
CLEAR = "\x1b[H\x1b[2J"


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """device -> {metric name without prefix: value}, from our own exposition format."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = SAMPLE_RE.match(line)
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return out


def read_mount(mount: str) -> dict[str, dict[str, float]] | str:
    """The mount's figures, or why it cannot be read."""
    try:
        with open(os.path.join(mount, "metrics")) as f:
            return parse_metrics(f.read())
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"


def _rate(now: dict[str, float], before: dict[str, float] | None, key: str, dt: float) -> str:
    if before is None or dt <= 0 or key not in now or key not in before:
        return "-"
    delta = max(now[key] - before[key], 0.0)
    return format_size(int(delta * PAGE_SIZE / dt)) + "/s"


def frame(mounts: Sequence[str], samples: dict[str, dict[str, dict[str, float]] | str],
          previous: dict[str, dict[str, dict[str, float]] | str], dt: float) -> str:
    """One screen: a header, then a line per device."""
    head = (f"{'DEVICE':<28} {'RATIO':>6} {'DATA':>7} {'MEM':>7} {'LIMIT':>7} "
            f"{'READ':>9} {'WRITE':>9} {'WB-DATA':>8} {'WB-WRITE':>9}")
    lines = [f"zramfs top - {time.strftime('%H:%M:%S')} - q quits", "", head]
    for mount in mounts:
        now = samples.get(mount)
        if isinstance(now, str) or now is None:
            lines.append(f"{mount}: {now or 'no data'}")
            continue
        before_all = previous.get(mount)
        for dev in sorted(now, key=lambda n: int(n[4:])):
            s = now[dev]
            before = before_all.get(dev) if isinstance(before_all, dict) else None
            name = f"{mount.rstrip('/')}/{dev}"
            if not s.get("initialised"):
                lines.append(f"{name:<28} (not initialised)")
                continue
            limit = int(s.get("mem_limit_bytes", 0))
            lines.append(
                f"{name:<28} {s.get('compression_ratio', 0):>6.2f} "
                f"{format_size(int(s.get('orig_data_bytes', 0))):>7} "
                f"{format_size(int(s.get('mem_used_total_bytes', 0))):>7} "
                f"{format_size(limit) if limit else 'none':>7} "
                f"{_rate(s, before, 'read_pages_total', dt):>9} "
                f"{_rate(s, before, 'written_pages_total', dt):>9} "
                f"{format_size(int(s.get('bd_count_bytes', 0))):>8} "
                f"{_wb_rate(s, before, dt):>9}"
            )
    return "\n".join(lines) + "\n"


def _wb_rate(now: dict[str, float], before: dict[str, float] | None, dt: float) -> str:
    if before is None or dt <= 0:
        return "-"
    delta = max(now.get("bd_writes_bytes_total", 0) - before.get("bd_writes_bytes_total", 0), 0)
    return format_size(int(delta / dt)) + "/s"


def run_top(mounts: Sequence[str], delay: float, iterations: int) -> int:
    """Refresh every `delay` seconds until q, Ctrl-C or `iterations` frames (0: no limit)."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    previous: dict[str, dict[str, dict[str, float]] | str] = {}
    last = time.monotonic()
    count = 0
    try:
        if saved is not None:
            tty.setcbreak(sys.stdin.fileno())
            sys.stdout.write("\x1b[?25l")  # hide the cursor
        while True:
            samples = {m: read_mount(m) for m in mounts}
            now = time.monotonic()
            text = frame(mounts, samples, previous, now - last)
            sys.stdout.write((CLEAR if interactive else "") + text)
            sys.stdout.flush()
            previous, last = samples, now
            count += 1
            if iterations and count >= iterations:
                return 0
            if _wait_for_quit(delay, interactive):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()


def _wait_for_quit(delay: float, interactive: bool) -> bool:
    """Sleep `delay` seconds; True as soon as q is typed."""
    if not interactive:
        time.sleep(delay)
        return False
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            key = os.read(sys.stdin.fileno(), 1)
            if key in (b"q", b"Q") or not key:
                return True
    return False
