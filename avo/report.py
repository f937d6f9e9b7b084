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
        w.writerow(["branch", "version", "score_tflops", *labels, "sha", "message"])
        for v in versions:
            per = _tflops(v.result)
            w.writerow([v.branch, v.number, f"{v.score:.4f}", *(f"{per.get(l, 0.0):.4f}" for l in labels),
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
            running = max(running, s)
        best.append(running)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(xs, scores, s=14, c=["tab:green" if a.get("outcome") in ("seed", "accepted") else "tab:gray"
                                   for a in attempts], label="attempt (green: committed)")
    ax.step(xs, best, where="post", color="tab:blue", label="best committed")
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
    """A small terminal table of the committed versions."""
    lines = [f"{'version':>9}  {'TFLOPS':>10}  message"]
    for v in versions:
        first = (v.message or "").splitlines()[0] if v.message else ""
        lines.append(f"{v.tag:>9}  {v.score:>10.4g}  {first[:70]}")
    return "\n".join(lines)
