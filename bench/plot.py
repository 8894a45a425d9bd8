"""Charts of the committed benchmark results: bench/results/*.json in, docs/img/*.svg out.

    .venv/bin/python bench/plot.py [--results bench/results] [--out docs/img]     (make plots)

Each chart is drawn from the newest file of its kind (by the JSON's `time`), and says in its
subtitle which machine, model and date that is, and in its footer which file:

- concurrency-cpu.svg   aggregate tok/s against concurrent clients, ours vs mlx_lm.server, from
                        cpu-concurrency-SmolLM2-*.json (bench/concurrency.py, the real model).
- concurrency-gpu.svg   the same on a GPU, from gpu-qwen2.5-7b-4bit-*.json (bench/gpu.py: "stack"
                        is ours, "in-process" our engine without HTTP or Redis; FLAT_DECODE=0
                        ablations skipped) or gpu-h100-concurrency-*.json, whichever is newer.
- latency-cpu.svg,      time to first token and inter-token latency against clients from the
  latency-gpu.svg       same two files, ours vs the peer: the marker is the p50, the bar reaches
                        the p95 (the files keep only those two percentiles, so nothing more is drawn).
- overhead.svg          what the queue path adds: TTFT (stack p50 - in-process p50) and decode
                        tok/s (stack / in-process), one bar per model, from the newest
                        gpu-h200-overhead-<model>-*.json and cpu-overhead-<model>-*.json.
- embeddings.svg        inputs/s per request shape, ours vs in-process, one panel per model, from
                        the newest gpu-h200-embeddings-<model>-*.json of each model.
- vision.svg            tok/s against clients: ours, ours-interleaved and mlx_vlm.server, one panel
                        per shape, from the newest gpu-h200-vision-<shape>-*.json of each.

A chart whose files are missing is skipped with a line saying why. The SVGs are deterministic
(fixed hash salt, text kept as text, no date), so regenerating from unchanged JSON changes no
byte and a diff of docs/img means the results changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_kit import (
    OTHER,
    OURS,
    PEER,
    ROOT,
    WHITE_BOX,
    Run,
    day,
    figure,
    machine,
    newest_per,
    note,
    our_side,
    percentile_bars,
    plain_numbers,
    runs,
    save,
    skip,
    style,
    throughput,
)

# ---------------------------------------------------------------- the charts


def concurrency_run(results: Path, kind: str) -> Run | None:
    """The run the concurrency and latency charts of one machine kind use, or None."""
    if kind == "cpu":
        found = runs(results, "cpu-concurrency-SmolLM2-*.json", has_peer)
    else:
        # FLAT_DECODE=0 runs are an ablation of our worker, not how it runs.
        gpu = runs(results, "gpu-qwen2.5-7b-4bit-*.json", lambda run: has_peer(run) and run.get("flat_decode", True))
        found = sorted(
            gpu + runs(results, "gpu-h100-concurrency-*.json", has_peer), key=lambda run: run.get("time", "")
        )
    return found[-1] if found else None


def has_peer(run: Run) -> bool:
    """The file has both sides of the comparison these charts draw: ours and mlx_lm.server."""
    return {"mlx_lm.server", our_side(run)} <= {r["server"] for r in run["rows"]}


def run_detail(run: Run) -> str:
    streams = f"{run['max_tokens']} tokens a stream" if run.get("max_tokens") else ""
    rounds = f"{run['rounds']} round{'s' if run.get('rounds', 1) > 1 else ''}" if run.get("rounds") else ""
    return ", ".join(part for part in (streams, rounds) if part)


def concurrency_chart(results: Path, out: Path, kind: str) -> None:
    name = f"concurrency-{kind}.svg"
    run = concurrency_run(results, kind)
    if run is None:
        return skip(name, f"no {kind.upper()} concurrency result with both ours and mlx_lm.server")
    fig, (ax,) = figure(
        1,
        "Tokens/s against concurrent clients: ours vs mlx_lm.server",
        f"{machine(run)} · {run['model']} · {day(run)} · {run_detail(run)} · above the plot: ours / mlx_lm.server",
        [run],
    )
    throughput(ax, run, [our_side(run), "in-process", "mlx_lm.server"], "vs_mlx_lm_server")
    ax.legend(loc="upper left")
    save(fig, out, name, f"tok/s vs clients, {run['model']} on {machine(run)} ({run['_file']})")


def latency_chart(results: Path, out: Path, kind: str) -> None:
    name = f"latency-{kind}.svg"
    run = concurrency_run(results, kind)
    if run is None:
        return skip(name, f"no {kind.upper()} concurrency result with both ours and mlx_lm.server")
    fig, axes = figure(
        2,
        "Latency against concurrent clients: ours vs mlx_lm.server",
        f"{machine(run)} · {run['model']} · {day(run)} · marker = p50, bar up to p95 (the only percentiles recorded)",
        [run],
    )
    wanted = [our_side(run), "mlx_lm.server"]
    percentile_bars(axes[0], run, wanted, "ttft_ms", "time to first token")
    percentile_bars(axes[1], run, wanted, "itl_ms", "inter-token latency")
    axes[0].set_title("Time to first token")
    axes[1].set_title("Inter-token latency")
    axes[0].legend(loc="upper left")
    save(fig, out, name, f"TTFT and ITL p50/p95 vs clients, {run['model']} on {machine(run)} ({run['_file']})")


def overhead_chart(results: Path, out: Path) -> None:
    name = "overhead.svg"
    found = newest_per(runs(results, "gpu-h200-overhead-*.json"), "model")
    found += newest_per(runs(results, "cpu-overhead-*.json"), "model")
    if not found:
        return skip(name, "no gpu-h200-overhead-*.json or cpu-overhead-*.json")
    days = sorted({day(run) for run in found})
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    # Older files lack `device`, so one machine can read "CPU" and "CPU (x86_64, 2 cores)": the
    # bars say "CPU", the subtitle the most detailed names.
    kind = {run["_file"]: machine(run).split(" (")[0] for run in found}
    names = {machine(run) for run in found}
    names = {n for n in names if not any(other != n and other.startswith(n) for other in names)}
    fig, (ttft, decode) = figure(
        2,
        "What the queue path costs: stack vs in-process",
        f"{' and '.join(sorted(names))} · {span} · p50 over "
        "runs alternating stack (HTTP → Redis queue → worker → SSE) and in-process (mlx-lm stream_generate)",
        found,
    )
    labels = [f"{run['model']}\n{kind[run['_file']]}, {len(run['stack']['runs'])} runs" for run in found]
    places = list(range(len(found)))[::-1]  # first file on top
    added = [run["added_ttft_ms_p50"] for run in found]
    ratios = [run["decode_ratio"] for run in found]
    ttft.barh(places, added, color=OURS, height=0.55)
    ttft.axvline(5, color=PEER, linestyle="--", linewidth=1, label="target: ≤ 5 ms added")
    ttft.set_title("Added time to first token")
    ttft.set_xlabel("stack p50 − in-process p50, ms")
    # Bars start at 1.0, the ratio of no cost, so a loss points left and a gain right.
    decode.barh(places, [r - 1 for r in ratios], left=1, color=OURS, height=0.55)
    decode.axvline(0.97, color=PEER, linestyle="--", linewidth=1, label="target: ≥ 0.97")
    decode.set_title("Decode tok/s, stack / in-process")
    decode.set_xlabel("ratio (1 = no cost)")
    for ax, values, text in ((ttft, added, "{:+.1f} ms"), (decode, ratios, "{:.3f}")):
        base = 1 if ax is decode else 0
        # Each value just right of its bar's far end, or of the base line where the bar points
        # left: a column the tick labels on the left never run into.
        for y, v in zip(places, values, strict=True):
            note(ax, text.format(v), (max(v, base), y), (4, 0), ha="left", va="center", bbox=WHITE_BOX)
        ax.axvline(base, color="black", linewidth=0.8)
        ax.set_yticks(places, labels if ax is ttft else [""] * len(places))
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.2)
        ax.legend(loc="upper left")
    save(fig, out, name, f"added TTFT and decode ratio for {len(found)} models")


def shape_label(shape: str) -> str:
    return shape.replace(" x ", "\n× ")  # "16 clients x 32" over two lines


def embeddings_chart(results: Path, out: Path) -> None:
    name = "embeddings.svg"
    found = newest_per(runs(results, "gpu-h200-embeddings-*.json"), "model")
    if not found:
        return skip(name, "no gpu-h200-embeddings-*.json")
    fig, axes = figure(
        len(found),
        "Embeddings: inputs/s through the stack vs an in-process loop",
        f"{machine(found[0])} · {day(found[-1])} · above each pair: ours / in-process · log scale",
        found,
    )
    for ax, run in zip(axes, found, strict=True):
        shapes = list(dict.fromkeys(r["shape"] for r in run["rows"]))  # in the order measured
        by = {(r["shape"], r["server"]): r for r in run["rows"]}
        for offset, server, colour, label in ((-0.2, "ours", OURS, "ours"), (0.2, "in-process", OTHER, "in-process")):
            measured = [(i, by[s, server]["inputs_per_s"]) for i, s in enumerate(shapes) if (s, server) in by]
            ax.bar([i + offset for i, _ in measured], [v for _, v in measured], 0.4, color=colour, label=label)
        for i, s in enumerate(shapes):
            if (s, "ours") in by and (s, "in-process") in by:
                top = max(by[s, "ours"]["inputs_per_s"], by[s, "in-process"]["inputs_per_s"])
                note(ax, f"{by[s, 'ours']['vs_in_process']:.2f}×", (i, top), (0, 3), color=OURS)
        ax.set_xticks(range(len(shapes)), [shape_label(s) for s in shapes], fontsize=7.5)
        ax.grid(axis="x", visible=False)
        ax.set_yscale("log")
        ax.margins(y=0.12)
        plain_numbers(ax, subs=(1, 3))  # three decades: 1-2-5 ticks would crowd
        ax.set_title(f"{run['model']}, {run['rounds']} rounds")
        ax.set_ylabel("inputs/s (log scale)")
    axes[0].legend(loc="upper left")
    save(fig, out, name, f"inputs/s per shape for {', '.join(run['model'] for run in found)}")


def vision_chart(results: Path, out: Path) -> None:
    name = "vision.svg"
    found = newest_per(runs(results, "gpu-h200-vision-*.json"), "shape")
    if not found:
        return skip(name, "no gpu-h200-vision-*.json")
    fig, axes = figure(
        len(found),
        "Concurrent image chats: tokens/s against clients",
        f"{machine(found[0])} · {day(found[-1])} · random weights, 4-bit language models · "
        f"{run_detail(found[0])} · above each plot: ours / mlx_vlm.server",
        found,
    )
    for ax, run in zip(axes, found, strict=True):
        throughput(ax, run, ["ours", "ours-interleaved", "mlx_vlm.server"], "vs_mlx_vlm_server")
        ax.set_title(f"{run['shape']}, {'an image a request' if run.get('images') else 'text only'}", pad=16)
    axes[0].legend(loc="upper left")  # serves every panel: same series, same colours
    save(fig, out, name, f"tok/s vs clients for {', '.join(run['shape'] for run in found)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    style()
    for kind in ("cpu", "gpu"):
        concurrency_chart(args.results, args.out, kind)
        latency_chart(args.results, args.out, kind)
    overhead_chart(args.results, args.out)
    embeddings_chart(args.results, args.out)
    vision_chart(args.results, args.out)


if __name__ == "__main__":
    main()
