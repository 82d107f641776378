"""Turn the benchmark CSVs into PNG plots and markdown tables (never typed by hand).

python3 benchmarks/report.py   # newest run of each op per device -> results/*.png, summary.md

The documentation site's Benchmarks page and each op page's plot are drawn by these functions
at build time (docs/_ext/opslib_pages.py).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from bench_table import BENCH, elements_label

from opslib.testing.opinfos import OPS_BY_NAME

RESULTS = Path(__file__).parent / "results"


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def latest_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """Each op's most recent float32 run on each device: {device: its rows}, so that a run of
    a few ops (``bench.py --ops``) adds to the tables instead of replacing them. (The tables
    compare float32; a ``bench.py --dtype`` run of another dtype is read from its own folder.)
    model.csv's rows have no op: one newest run per device."""
    rows = [r for r in rows if r.get("dtype") in ("float32", "", None)]  # none: model.csv
    newest: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["device"], r.get("op", ""))
        newest[key] = max(newest.get(key, ""), r["run_id"])
    runs: dict[str, list[dict]] = {}
    for r in rows:
        if r["run_id"] == newest[(r["device"], r.get("op", ""))]:
            runs.setdefault(r["device"], []).append(r)
    return runs


def size_label(op: str, size: int) -> str:
    info = OPS_BY_NAME.get(op)  # rows of ops no longer in the table: plain element counts
    return BENCH[info.name].size_label(size) if info else elements_label(size)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(r["op"] for r in rows))
    cols = min(4, len(ops))
    fig, axes = plt.subplots(
        (len(ops) + cols - 1) // cols,
        cols,
        figsize=(4 * cols, 3.2 * ((len(ops) + cols - 1) // cols)),
        squeeze=False,
    )
    styles = {"forward": ":", "backward": "--", "full": "-"}
    for ax, op in zip(axes.flat, ops, strict=False):
        series = defaultdict(list)
        for r in rows:
            if r["op"] == op:
                series[(r["mode"], r["phase"])].append((int(r["size"]), float(r["ratio"])))
        for (mode, phase), points in sorted(series.items()):
            points.sort()
            color = {"eager": "tab:blue", "compiled": "tab:orange"}.get(
                mode.split("-")[0], "tab:green"
            )
            ax.plot(
                *zip(*points, strict=True),
                styles[phase],
                marker="o",
                ms=3,
                color=color,
                label=f"{mode} {phase}",
            )
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel(BENCH[OPS_BY_NAME[op].name].size_unit if op in OPS_BY_NAME else "elements")
        ax.set_ylabel("time opslib / native")
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    r0 = rows[0]
    fig.suptitle(
        f"opslib / native time (lower is better; < 1 is faster than native) — "
        f"{r0['device']}, torch {r0['torch']}, {runs_label(rows)}",
        fontsize=10 if len(ops) > 1 else 8,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def ratio_table(rows: list[dict], mode_prefix: str) -> str:
    rows = [r for r in rows if r["mode"].startswith(mode_prefix)]
    if not rows:
        return ""
    ops = list(dict.fromkeys(r["op"] for r in rows))
    size_index = sorted({i for op in ops for i, _ in enumerate(_sizes(rows, op))})
    header = "| op | phase | " + " | ".join(f"size {i + 1}" for i in size_index) + " |"
    lines = [header, "|---|---|" + "---|" * len(size_index)]
    for op in ops:
        sizes = _sizes(rows, op)
        for phase in ("forward", "backward", "full"):
            cells = []
            for size in sizes:
                match = [
                    r
                    for r in rows
                    if r["op"] == op and r["phase"] == phase and int(r["size"]) == size
                ]
                cells.append(
                    f"{float(match[0]['ratio']):.2f}x ({size_label(op, size)})" if match else ""
                )
            lines.append(f"| {op} | {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sizes(rows: list[dict], op: str) -> list[int]:
    return sorted({int(r["size"]) for r in rows if r["op"] == op})


def roofline_table(rows: list[dict]) -> str:
    """At the largest size: achieved bandwidth / FLOP rate against the machine's."""
    lines = [
        "| op | mode | phase | size | opslib | native | machine limit | opslib % of limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op in dict.fromkeys(r["op"] for r in rows):
        largest = max(_sizes(rows, op))
        for r in rows:
            if r["op"] == op and int(r["size"]) == largest:
                native = float(r["achieved"]) * float(r["ratio"])
                lines.append(
                    f"| {op} | {r['mode']} | {r['phase']} | {size_label(op, largest)} | "
                    f"{float(r['achieved']):.1f} {r['unit']} | {native:.1f} {r['unit']} | "
                    f"{float(r['machine_limit']):.1f} {r['unit']} | "
                    f"{100 * float(r['fraction_of_limit']):.0f}% |"
                )
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    lines = ["| op | size | opslib saves | native saves | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['op']} | {size_label(r['op'], int(r['size']))} | "
            f"{int(r['ours_saved_bytes']):,} B | {int(r['native_saved_bytes']):,} B | "
            f"{r['ratio']} |"
        )
    return "\n".join(lines)


def model_table(rows: list[dict]) -> str:
    lines = ["| mode | batch | opslib step | torch.nn step | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batch']} | {float(r['ours_ms']):.3f} ms "
            f"({float(r['ours_p20_ms']):.3f}-{float(r['ours_p80_ms']):.3f}) | "
            f"{float(r['native_ms']):.3f} ms ({float(r['native_p20_ms']):.3f}-"
            f"{float(r['native_p80_ms']):.3f}) | {float(r['ratio']):.2f}x |"
        )
    return "\n".join(lines)


def runs_label(rows: list[dict]) -> str:
    """The commits, run ids and thread counts of the runs the rows come from, oldest first."""
    runs = sorted({(r["run_id"], r["commit"], r["threads"]) for r in rows})
    return "; ".join(
        f"commit {commit}, run {run}, {threads} thread{'s' * (threads != '1')}"
        for run, commit, threads in runs
    )


def summary(results: Path, image_prefix: str, images: Path | None = None) -> str:
    """Markdown tables of the newest runs, with their plots drawn into ``images`` (default:
    ``results``) and linked as ``image_prefix`` + file name."""
    timings = latest_runs(read(results / "timings.csv"))
    memory = latest_runs(read(results / "memory.csv"))
    model = latest_runs(read(results / "model.csv"))
    parts = []
    for device, rows in timings.items():
        r0 = rows[0]
        slug = "cpu" if device == "cpu" else "cuda"
        png = (images or results) / f"ratios_{slug}.png"
        plot(rows, png)
        parts += [
            f"## {device} — {r0['machine']}, torch {r0['torch']}, "
            f"{runs_label(rows)}"
            + (f", C++ CPU fast path: {r0['cpu_fast_path']}" if r0.get("cpu_fast_path") else ""),
            "",
            f"![opslib / native time per op]({image_prefix}{png.name})",
            "",
            "Time opslib / native (median; below 1 is faster than native), eager:",
            "",
            ratio_table(rows, "eager"),
            "",
        ]
        compiled = ratio_table(rows, "compiled")
        if compiled:
            parts += ["Under torch.compile (both sides compiled):", "", compiled, ""]
        against = ratio_table(rows, "vs-compiled")
        if against:
            parts += [
                "opslib eager against torch.compile of the native expression (ops whose eager "
                "path is fused):",
                "",
                against,
                "",
            ]
        parts += ["Against the machine (largest size):", "", roofline_table(rows), ""]
        if device in memory:
            parts += ["Bytes saved for backward:", "", memory_table(memory[device]), ""]
        if device in model:
            parts += [
                "Example classifier training step (median, 20th-80th percentile):",
                "",
                model_table(model[device]),
                "",
            ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = summary(args.results, "")
    (args.results / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
