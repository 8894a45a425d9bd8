"""The plotting kit of bench/plot.py: the house style, finding and reading result files, and
drawing the pieces every chart shares (figures with a subtitle and source footer, throughput
lines, p50-p95 bars, labels), so that bench/plot.py holds only the charts."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

ROOT = Path(__file__).resolve().parent.parent

OURS, PEER, OTHER, MUTED = "#1f5fbf", "#e07020", "#8a8a8a", "#666666"
# How each `server` value of the result rows is drawn: label, colour, marker, line style.
SERIES = {
    "ours": ("ours", OURS, "o", "-"),
    "stack": ("ours (HTTP + Redis + worker)", OURS, "o", "-"),
    "in-process": ("our engine in-process (no HTTP, no Redis)", OTHER, "s", "--"),
    "ours-interleaved": ("ours, interleaved (VISION_BATCH=0)", OTHER, "s", "--"),
    "mlx_lm.server": ("mlx_lm.server", PEER, "^", "-"),
    "mlx_vlm.server": ("mlx_vlm.server", PEER, "^", "-"),
}
# A label at a data x just over the axes' frame (y in axes units), bold: the ratios' row.
ABOVE_FRAME = {"xycoords": ("data", "axes fraction"), "va": "bottom", "fontsize": 8, "fontweight": "bold"}
WHITE_BOX = {"fc": "white", "ec": "none", "pad": 0.5}  # keeps a label readable over a grid or target line
WIDTH, HEIGHT = 7.2, 4.3  # inches: ~700 px wide where a browser shows the SVG at its size

Run = dict  # one result file's JSON, plus "_file": its name


def style() -> None:
    matplotlib.use("Agg")  # never a display, even where a GUI toolkit is installed
    matplotlib.rcParams.update(
        {
            # Deterministic SVG: clip-path and other ids come from this salt, not a random one.
            # Text stays text: no glyph outlines embedded, smaller files, searchable labels.
            "svg.hashsalt": "mlx-inference-server",
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "axes.axisbelow": True,  # grid lines behind bars, not through them
            "grid.color": "#e4e4e4",
            "legend.fontsize": 8,
            "legend.frameon": False,
        }
    )


# ---------------------------------------------------------------- reading the results


def load(path: Path) -> Run:
    run = json.loads(path.read_text())
    run["_file"] = path.name
    return run


def runs(results: Path, pattern: str, keep: Callable[[Run], bool] = lambda run: True) -> list[Run]:
    """Every file matching pattern that keep accepts, oldest first."""
    found = [run for run in map(load, sorted(results.glob(pattern))) if keep(run)]
    return sorted(found, key=lambda run: (run.get("time", ""), run["_file"]))


def newest_per(found: Iterable[Run], key: str) -> list[Run]:
    """The newest run for each value of key (e.g. one per model), in order of that value."""
    latest = {run.get(key): run for run in found}  # found is oldest first: later ones win
    return [latest[k] for k in sorted(latest, key=str)]


def machine(run: Run) -> str:
    """The device in words: 'NVIDIA H200', 'CPU (x86_64, 2 cores)'. Older files lack `device`,
    so the file name's prefix (cpu-, gpu-h200-) is the fallback."""
    found = re.match(r"Device\((\w+), \d+\)\s*(.*)", run.get("device", ""))
    if found:
        kind, rest = found.groups()
        if kind != "gpu":
            return f"CPU {rest}".strip()
        # Some GPU names carry a note in parentheses about how they were recorded: drop it.
        return rest.split(" (")[0].strip() or "GPU"
    prefix = run["_file"].split("-")
    if prefix[0] == "gpu" and re.fullmatch(r"[hab]\d+", prefix[1]):
        return f"NVIDIA {prefix[1].upper()}"
    return "CPU" if prefix[0] == "cpu" else run.get("machine", "unknown machine")


def day(run: Run) -> str:
    return run.get("time", "")[:10] or "undated"


def rows(run: Run, server: str) -> list[dict]:
    return sorted((r for r in run["rows"] if r["server"] == server), key=lambda r: r["concurrency"])


def servers(run: Run, wanted: Iterable[str]) -> list[str]:
    present = {r["server"] for r in run["rows"]}
    return [s for s in wanted if s in present]


def our_side(run: Run) -> str:
    """bench/gpu.py calls our stack "stack"; bench/concurrency.py and vision.py call it "ours"."""
    return "stack" if any(r["server"] == "stack" for r in run["rows"]) else "ours"


# ---------------------------------------------------------------- drawing


def figure(columns: int, title: str, subtitle: str, sources: Iterable[Run]) -> tuple[Figure, list[Axes]]:
    """A figure with a title, a grey subtitle and a footer naming the result files, both wrapped
    to the width: the layout engine keeps the axes in the band left between them."""
    subtitle = textwrap.fill(subtitle, 105)
    files = ", ".join(f"bench/results/{run['_file']}" for run in sources)
    footer = textwrap.fill(f"data: {files}", 140, break_on_hyphens=False)
    top = 0.875 - 0.037 * subtitle.count("\n")  # figure fractions of one line at these font sizes
    bottom = 0.04 + 0.027 * footer.count("\n")
    fig = Figure(figsize=(WIDTH, HEIGHT), layout=ConstrainedLayoutEngine(rect=(0, bottom, 1, top - bottom)))
    fig.text(0.01, 0.98, title, fontsize=12, fontweight="bold", va="top")
    fig.text(0.01, 0.925, subtitle, fontsize=8.5, color=MUTED, va="top", linespacing=1.3)
    fig.text(0.01, 0.01, footer, fontsize=6.5, color=MUTED, va="bottom", linespacing=1.3)
    return fig, list(fig.subplots(1, columns, squeeze=False)[0])


def clients_axis(ax: Axes, levels: Iterable[int]) -> None:
    """Client counts double from level to level, so a log2 axis spaces them evenly."""
    levels = sorted(set(levels))
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(levels[0] / 1.4, levels[-1] * 1.4)
    ax.set_xlabel("concurrent streaming clients")


def plain_numbers(ax: Axes, subs: tuple[float, ...] = (1, 2, 5)) -> None:
    """A log y axis ticked at 1, 2 and 5 (subs) of each decade and labelled 2,000 rather than
    2×10³: readers compare milliseconds, not exponents."""
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def throughput(ax: Axes, run: Run, wanted: list[str], ratio_key: str) -> None:
    """Aggregate tok/s per level, one line per server. Ours' ratio to the peer (ratio_key) is
    written above the plot at each level, where no line can cross it; a level that lost requests
    says how many."""
    for server in servers(run, wanted):
        label, colour, marker, line = SERIES[server]
        points = rows(run, server)
        xs = [r["concurrency"] for r in points]
        ax.plot(xs, [r["aggregate_tok_s"] for r in points], line, color=colour, marker=marker, label=label)
        for r in points:
            if server == our_side(run) and r.get(ratio_key):
                note(ax, f"{r[ratio_key]:.2f}×", (r["concurrency"], 1.02), (0, 0), color=colour, **ABOVE_FRAME)
            if r.get("failed_requests"):
                failed = f"{r['failed_requests']} requests failed"
                note(ax, failed, (r["concurrency"], r["aggregate_tok_s"]), (0, -12), color=colour, fontsize=7)
    clients_axis(ax, (r["concurrency"] for r in run["rows"]))
    # From zero, so heights compare as ratios; headroom above for the legend.
    ax.set_ylim(0, 1.3 * max(r["aggregate_tok_s"] for r in run["rows"] if r["server"] in wanted))
    ax.set_ylabel("aggregate tokens/s (all clients)")


def percentile_bars(ax: Axes, run: Run, wanted: list[str], metric: str, label: str) -> None:
    """p50 as the marker, a bar from it up to the p95; the series are nudged apart sideways so
    their bars do not hide each other."""
    for i, server in enumerate(wanted):
        name, colour, marker, line = SERIES[server]
        points = [r for r in rows(run, server) if r.get(f"{metric}_p50") is not None]
        nudge = 2 ** (0.07 * (i - (len(wanted) - 1) / 2))
        p50 = [r[f"{metric}_p50"] for r in points]
        up = [r[f"{metric}_p95"] - r[f"{metric}_p50"] for r in points]
        xs = [r["concurrency"] * nudge for r in points]
        ax.errorbar(xs, p50, yerr=[[0] * len(up), up], fmt=line, color=colour, marker=marker, capsize=3, label=name)
    clients_axis(ax, (r["concurrency"] for r in run["rows"]))
    ax.set_yscale("log")
    plain_numbers(ax)
    ax.set_ylabel(f"{label}, ms (log scale)")


def note(ax: Axes, text: str, xy: tuple, offset: tuple[float, float], **style: Any) -> None:
    """A small label offset from xy by points, centred unless style says otherwise."""
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", **{"ha": "center", "fontsize": 7.5, **style})


def save(fig: Figure, out: Path, name: str, what: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, format="svg", metadata={"Date": None})  # no date: same JSON, same bytes
    print(f"wrote {out / name}: {what}")


def skip(name: str, why: str) -> None:
    print(f"skipped {name}: {why}")
