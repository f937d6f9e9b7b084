"""Plain-file results of a run: CSV tables, a JSON summary and a progress plot in the run directory.

Nothing here needs W&B or the network, so a run's results are readable even when tracking failed.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional

from avo.budget import write_json_atomic

log = logging.getLogger(__name__)


def _config_columns(results: list[dict]) -> list[str]:
    labels: list[str] = []
    for result in results:
        for c in result.get("configs", []):
            if c.get("label") not in labels:
                labels.append(c.get("label"))
    return labels


def _tflops(result: dict) -> dict[str, float]:
    return {c.get("label"): float(c.get("tflops", 0.0)) for c in result.get("configs", [])}


def write_versions_csv(path: Path, versions: list[Any]) -> None:
    labels = _config_columns([v.result for v in versions])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["branch", "version", "score_tflops", "lineage_score", *labels, "sha", "message"])
        for v in versions:
            per = _tflops(v.result)
            w.writerow([v.branch, v.number, f"{v.score:.4f}", f"{v.lineage_score:.4f}",
                        *(f"{per.get(l, 0.0):.4f}" for l in labels),
                        v.sha[:12], (v.message or "").splitlines()[0] if v.message else ""])


def write_attempts_csv(path: Path, attempts: list[dict]) -> None:
    cols = ["n", "operator", "outcome", "parent", "version", "score", "correct", "stage", "elapsed_s", "error"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for a in attempts:
            row = [a.get(c) for c in cols]
            row[-1] = (str(row[-1] or "").strip().splitlines() or [""])[-1][:200]
            w.writerow(row)


def plot_progress(path: Path, attempts: list[dict], title: str) -> Optional[Path]:
    """Score of every attempt (accepted ones marked) and the best committed score so far."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; the CSVs carry the same numbers
        log.warning("matplotlib is not installed: no progress plot")
        return None
    xs = [a.get("n", i) for i, a in enumerate(attempts)]
    scores = [float(a.get("score") or 0.0) for a in attempts]
    best, running = [], 0.0
    for a, s in zip(attempts, scores):
        if a.get("outcome") in ("seed", "accepted"):
            running = max(running, float(a.get("lineage_score", s)))  # how versions are ranked
        best.append(running)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(xs, scores, s=14, c=["tab:green" if a.get("outcome") in ("seed", "accepted") else "tab:gray"
                                   for a in attempts], label="attempt (green: committed)")
    ax.step(xs, best, where="post", color="tab:blue", label="best committed (lineage scale)")
    ax.set_xlabel("attempt")
    ax.set_ylabel("aggregate TFLOPS")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(run_dir: Path, *, versions: list[Any], attempts: list[dict], summary: dict, title: str) -> dict:
    """Write summary.json, versions.csv, attempts.csv and progress.png; returns their paths."""
    run_dir = Path(run_dir)
    paths = {"summary": run_dir / "summary.json", "versions": run_dir / "versions.csv",
             "attempts": run_dir / "attempts.csv", "plot": run_dir / "progress.png"}
    write_json_atomic(paths["summary"], summary)
    write_versions_csv(paths["versions"], versions)
    write_attempts_csv(paths["attempts"], attempts)
    if plot_progress(paths["plot"], attempts, title) is None:
        paths.pop("plot")
    return paths


def versions_table(versions: list[Any]) -> str:
    """A small terminal table of the committed versions: measured TFLOPS, and the lineage score (how versions
    are ranked) as a speedup over the branch's seed."""
    seeds = {v.branch: v.lineage_score for v in versions if v.number == 0}
    lines = [f"{'version':>9}  {'TFLOPS':>10}  {'x v0 paired':>11}  message"]
    for v in versions:
        first = (v.message or "").splitlines()[0] if v.message else ""
        ratio = f"{v.lineage_score / seeds[v.branch]:.3f}" if seeds.get(v.branch) else "-"
        lines.append(f"{v.tag:>9}  {v.score:>10.4g}  {ratio:>11}  {first[:70]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- avo bench

# How the implementations of a bench result are named in tables and plots (others keep their own name).
IMPL_NAMES = {"program": "program", "cudnn": "cuDNN", "fa2": "FA2", "fa3": "FA3", "fa4": "FA4",
              "flash_attn": "flash-attn", "sdpa_cpu": "SDPA (CPU)", "math": "SDPA math", "efficient": "SDPA mem-efficient"}


def impl_name(impl: str) -> str:
    return IMPL_NAMES.get(impl, impl)


def _numbers(values: Any) -> list[float]:
    out = []
    for v in values or []:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _stats(values: list[float]) -> dict:
    """mean, sample standard deviation (n - 1; 0 for one value), n, min, max; mean None without values."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "min": min(values), "max": max(values)}


def _speedups(stats: dict, impls: list[str]) -> dict:
    """program mean / baseline mean for every baseline (None where either is missing or the baseline is 0)."""
    prog = (stats.get("program") or {}).get("mean")
    out = {}
    for impl in impls:
        if impl == "program":
            continue
        base = (stats.get(impl) or {}).get("mean")
        out[impl] = prog / base if prog is not None and base else None
    return out


def bench_summary(result: dict, *, program_label: Optional[str] = None) -> dict:
    """Statistics of a bench result (avo.evaluate.bench): per configuration and implementation the mean and
    standard deviation of TFLOPS over the repetitions and the program's speedup over each baseline (ratio
    of means); an aggregate over configurations: the geometric mean (avo.task.aggregate) of the means, its
    spread as the std of the per-repetition geometric means, and the speedups of the geometric means."""
    from avo.task import aggregate

    impls = list(result.get("impls") or [])
    if "program" not in impls:
        impls.insert(0, "program")
    for c in result.get("configs") or []:  # implementations measured but not listed still count
        for impl in (c.get("tflops") or {}):
            if impl not in impls:
                impls.append(impl)
    configs = []
    for i, c in enumerate(result.get("configs") or []):
        tflops = c.get("tflops") or {}
        stats = {impl: _stats(_numbers(tflops.get(impl))) for impl in impls}
        configs.append({"label": c.get("label") or f"config {i}", "shape": c.get("shape") or {},
                        "stats": stats, "speedup": _speedups(stats, impls)})
    agg_stats = {}
    for impl in impls:
        means = [c["stats"][impl]["mean"] for c in configs]
        if not configs or any(m is None for m in means):
            agg_stats[impl] = _stats([])
            continue
        # Per repetition r, the geometric mean over configurations of the r-th measurement.
        runs = [_numbers((c.get("tflops") or {}).get(impl)) for c in result.get("configs") or []]
        reps = min(len(r) for r in runs)
        per_rep = [aggregate([r[k] for r in runs]) for k in range(reps)]
        spread = _stats(per_rep)
        agg_stats[impl] = {"mean": aggregate(means), "std": spread["std"], "n": reps,
                           "min": spread["min"], "max": spread["max"]}
    device = result.get("device") or {}
    reps_seen = [s["n"] for c in configs for s in c["stats"].values() if s["n"]]
    return {
        "task": result.get("task"), "grid": result.get("grid"), "device": device,
        "device_name": device.get("name") or device.get("kind") or "unknown device",
        "correct": bool(result.get("correct")), "error": result.get("error"),
        "program": program_label or "program", "impls": impls, "reps": max(reps_seen, default=0),
        "configs": configs,
        "aggregate": {"label": "geomean", "stats": agg_stats, "speedup": _speedups(agg_stats, impls)},
    }


def _mean_std(s: dict) -> str:
    if not s or s.get("mean") is None:
        return "-"
    mean, std = s["mean"], s["std"] or 0.0
    if mean >= 1:  # GPU figures: fixed decimals so a column lines up
        d = 1 if mean >= 100 else 2
        return f"{mean:.{d}f} ± {std:.{d}f}"
    return f"{mean:.3g} ± {std:.2g}"  # CPU smoke figures are tiny


def _ratio(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}x" if x >= 0.1 or x == 0 else f"{x:.2g}x"


def bench_table(summary: dict) -> str:
    """The terminal table: one row per configuration (TFLOPS mean ± std per implementation, the program's
    speedup over each baseline) and a geometric-mean row."""
    impls = summary["impls"]
    baselines = [i for i in impls if i != "program"]
    head = ["configuration", *(summary["program"] if i == "program" else impl_name(i) for i in impls),
            *(f"vs {impl_name(b)}" for b in baselines)]
    rows = []
    for c in [*summary["configs"], summary["aggregate"]]:
        speed = [_ratio(c["speedup"].get(b)) for b in baselines]
        rows.append([c["label"], *(_mean_std(c["stats"].get(i)) for i in impls), *speed])
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]

    def line(cells: list) -> str:
        return "  ".join(str(x).ljust(w) if k == 0 else str(x).rjust(w) for k, (x, w) in enumerate(zip(cells, widths)))

    title = (f"{summary.get('task')} on {summary['device_name']} (grid {summary.get('grid')}, "
             f"{summary['reps']} repetitions): TFLOPS mean ± std, speedup = program / baseline")
    rule = "-" * len(line(head))
    out = [title, line(head), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    if not summary["correct"]:
        out.append(f"program FAILED correctness: {(summary.get('error') or 'no error message').strip().splitlines()[0]}")
    return "\n".join(out)


def _seqlen_label(shape: dict, fallback: str) -> str:
    s = shape.get("seqlen")
    if not isinstance(s, int):
        return fallback
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def plot_bench(summary: dict, path: Path) -> Optional[Path]:
    """A grouped bar chart like the paper's Figures 3-4: x = sequence length (the configuration's label when
    sequence lengths repeat), one bar per implementation with its std as error bar, the mean written on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no bench plot")
        return None
    configs, impls = summary["configs"], summary["impls"]
    labels = [_seqlen_label(c["shape"], c["label"]) for c in configs]
    xlabel = "sequence length"
    if len(set(labels)) != len(labels):
        labels, xlabel = [c["label"] for c in configs], "configuration"
    tokens = {c["shape"].get("batch", 0) * c["shape"].get("seqlen", 0) for c in configs}
    if xlabel == "sequence length" and len(configs) > 1 and len(tokens) == 1 and tokens != {0}:
        xlabel += f" (batch x seqlen = {tokens.pop()} tokens)"
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(configs) * max(1, len(impls)) / 2 + 2), 4.8))
    colors = plt.get_cmap("tab10")
    top = 0.0
    for k, impl in enumerate(impls):
        means = [c["stats"][impl]["mean"] or 0.0 for c in configs]
        stds = [c["stats"][impl]["std"] or 0.0 for c in configs]
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(configs))]
        name = summary["program"] if impl == "program" else impl_name(impl)
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=name, color=colors(k % 10),
                      edgecolor="black", linewidth=0.4)
        for bar, m, s in zip(bars, means, stds):
            if m > 0:
                ax.annotate(f"{m:.0f}" if m >= 10 else f"{m:.2g}", (bar.get_x() + bar.get_width() / 2, m + s),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
            top = max(top, m + s)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(labels, rotation=0 if xlabel.startswith("sequence") else 30,
                       ha="center" if xlabel.startswith("sequence") else "right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("TFLOPS")
    if top > 0:
        ax.set_ylim(0, top * 1.12)
    status = "" if summary["correct"] else " [program INCORRECT]"
    ax.set_title(f"{summary.get('task')} on {summary['device_name']} ({summary.get('grid')} grid, "
                 f"{summary['reps']} reps){status}")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
