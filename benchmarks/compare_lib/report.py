"""Result rows, ratios to the references, the terminal table, JSON and the PNG chart."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REFERENCES = ("zram", "nbdkit")
ARROWS = {"higher": "↑", "lower": "↓"}
RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass
class Cell:
    """One contender's figure for one row: the median of ``samples``, or why there is none."""

    value: float | None = None
    error: str | None = None
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One figure measured on every contender; ``better`` is 'higher', 'lower' or 'neither'
    (a size that describes the data rather than the contender)."""

    key: str
    title: str
    unit: str
    better: str
    cells: dict[str, Cell] = field(default_factory=dict)

    def ratio(self, contender: str, reference: str) -> float | None:
        """This contender's figure divided by the reference's (same unit, same direction)."""
        mine, ref = self.cells.get(contender), self.cells.get(reference)
        if mine is None or ref is None or mine.value is None or not ref.value:
            return None
        return mine.value / ref.value


class Results:
    """Rows in the order they were first added."""

    def __init__(self, contenders: list[str]) -> None:
        self.contenders = contenders
        self.rows: dict[str, Row] = {}

    def row(self, key: str, title: str, unit: str, better: str) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, title, unit, better)
        return self.rows[key]

    def add_sample(self, row: Row, contender: str, value: float,
                   extra: dict[str, Any] | None = None) -> None:
        cell = row.cells.setdefault(contender, Cell())
        cell.samples.append(value)
        cell.value = statistics.median(cell.samples)
        if extra:
            cell.extra.setdefault("runs", []).append(extra)

    def set_value(self, row: Row, contender: str, value: float | None,
                  extra: dict[str, Any] | None = None) -> None:
        if value is None:
            return
        row.cells[contender] = Cell(value=value, samples=[value], extra=extra or {})

    def set_error(self, row: Row, contender: str, error: str) -> None:
        cell = row.cells.setdefault(contender, Cell())
        if cell.value is None:
            cell.error = error

    @classmethod
    def from_json(cls, contenders: list[str], rows: list[dict[str, Any]]) -> Results:
        """The inverse of ``to_json`` (for --replot)."""
        results = cls(contenders)
        for d in rows:
            row = results.row(d["key"], d["title"], d["unit"], d["better"])
            row.cells = {name: Cell(**cell) for name, cell in d["cells"].items()}
        return results

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows.values():
            d = asdict(row)
            d["ratios"] = {
                ref: {c: row.ratio(c, ref) for c in row.cells if c != ref}
                for ref in REFERENCES
            }
            out.append(d)
        return out


# -- terminal table ---------------------------------------------------------------------------


def fmt_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(results: Results) -> str:
    """A block per row: each contender's figure and its ratios to zram and to nbdkit."""
    name_w = max([len(c) for c in results.contenders] + [10])
    head = f"  {'':<{name_w}}  {'figure':>10}  {'x zram':>7}  {'x nbdkit':>8}"
    lines = [head, "  " + "-" * (len(head) - 2)]
    errors: dict[str, str] = {}
    for row in results.rows.values():
        direction = f", {row.better} is better" if row.better in ("higher", "lower") else ""
        lines.append(f"{row.title} ({row.unit}{direction})")
        for contender in results.contenders:
            cell = row.cells.get(contender)
            if cell is None:
                continue
            if cell.value is None:
                # The last line of an error is its cause; the command is in "failures".
                reason = (cell.error or "no figure").strip().splitlines()[-1].strip()
                errors.setdefault(contender, cell.error or "no figure")
                lines.append(f"  {contender:<{name_w}}  {'failed':>10}  ({reason[:76]})")
                continue
            ratios = [row.ratio(contender, ref) for ref in REFERENCES]
            lines.append(
                f"  {contender:<{name_w}}  {fmt_number(cell.value):>10}  "
                f"{fmt_number(ratios[0]):>7}  {fmt_number(ratios[1]):>8}"
            )
    if errors:
        lines.append("")
        lines.append("failures:")
        for contender, error in errors.items():
            text = "\n    ".join(error.strip().splitlines()[:8])
            lines.append(f"  {contender}: {text}")
    return "\n".join(lines) + "\n"


# -- files --------------------------------------------------------------------------------------


def write_json(document: dict[str, Any], results_dir: Path, stamp: str) -> Path:
    """results_dir/compare-STAMP.json and results_dir/latest.json; returns the former."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    path = results_dir / f"compare-{stamp}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path


def write_chart(results: Results, scaling: dict[str, list[float]], step_gib: float,
                path: Path, subtitle: str) -> None:
    """Bars of every row's ratio to zram and to nbdkit (log scale), and the fill curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    def rows_for(ref: str) -> list[Row]:
        return [r for r in results.rows.values()
                if any(r.ratio(c, ref) for c in r.cells if c != ref)]

    panels = [ref for ref in REFERENCES if rows_for(ref)]
    n_panels = len(panels) + (1 if scaling else 0)
    if n_panels == 0:
        return
    most = max([len(rows_for(ref)) for ref in panels] + [8])
    fig, axes = plt.subplots(1, n_panels, figsize=(7.5 * n_panels, 0.45 * most + 2.5),
                             squeeze=False)
    colors = plt.get_cmap("tab10")

    def color(contender: str) -> Any:
        return colors(results.contenders.index(contender) % 10)

    for ax, ref in zip(axes[0], panels, strict=False):
        rows = rows_for(ref)
        others = [c for c in results.contenders
                  if c != ref and any(r.ratio(c, ref) for r in rows)]
        width = 0.8 / max(1, len(others))
        shown: list[float] = []
        for i, contender in enumerate(others):
            ys, xs = [], []
            for y, row in enumerate(rows):
                ratio = row.ratio(contender, ref)
                if ratio:
                    ys.append(y - 0.4 + width * (i + 0.5))
                    xs.append(ratio)
            # Bars grow from 1 (as good as the reference) to the ratio, left or right.
            ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=width, color=color(contender))
            shown.extend(xs)
        ax.set_xscale("log")
        lo, hi = min(shown + [1.0]) / 1.25, max(shown + [1.0]) * 1.25
        ax.set_xlim(lo, hi)
        ticks = [t for t in RATIO_TICKS if lo <= t <= hi] or [1.0]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r.title} ({r.unit}) {ARROWS.get(r.better, '')}".strip()
                            for r in rows], fontsize=8)
        ax.set_xlabel(f"figure / {ref}'s figure (log scale; arrow: which way is better)")
        ax.set_title(f"relative to {ref}")
        ax.grid(axis="x", which="both", alpha=0.3)
    if scaling:
        ax = axes[0][-1]
        for contender, steps in scaling.items():
            xs = [step_gib * (i + 1) for i in range(len(steps))]
            ax.plot(xs, steps, marker=".",
                    color=color(contender) if contender in results.contenders else None)
        ax.set_xlabel("GiB written so far")
        ax.set_ylabel("seconds per GiB for this step")
        ax.set_ylim(bottom=0)
        ax.set_title("filling a device: time per GiB should stay flat")
        ax.grid(alpha=0.3)
    handles = [Patch(color=color(c), label=c) for c in results.contenders]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               fontsize=9)
    fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
