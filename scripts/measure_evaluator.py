"""Measure the evaluator itself on this GPU: evaluation time, run-to-run noise, a program against cuDNN.

    python scripts/measure_evaluator.py --program seeds/triton_fa --tasks mha_causal ... --noise-runs 5 --out DIR

(a) one evaluation per task on the chosen grid, compile included (a fresh Triton cache for the first),
    with the program's TFLOPS and its speedup over each baseline per configuration;
(b) `--noise-runs` evaluations of the same program on the first task: spread (max-min)/median of the
    aggregate score, which is the noise the acceptance margin must exceed;
(c) one evaluation on the quick grid, compile included.
Prints tables; writes every result JSON under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from avo import PROJECT_ROOT  # noqa: E402
from avo.config import register  # noqa: E402
from avo.evaluate import evaluate  # noqa: E402


def parts(task: str, grid: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", f"benchmark={grid}", *overrides])
    return (OmegaConf.to_object(cfg.task), OmegaConf.to_object(cfg.benchmark), OmegaConf.to_object(cfg.evaluator))


def timed_eval(program: Path, task: str, grid: str, overrides: list[str], fresh_cache: bool) -> tuple[dict, float]:
    if fresh_cache:  # compile included: Triton's cache (inherited by the worker) starts empty
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")
    t, g, s = parts(task, grid, overrides)
    start = time.monotonic()
    result = evaluate(program, t, g, s)
    return result, time.monotonic() - start


def show(result: dict, wall: float) -> None:
    print(f"\n{result['task']} on {result['grid']}: correct={result['correct']} score={result['score']:.1f} "
          f"TFLOPS wall={wall:.1f}s speedups={ {k: round(v, 3) for k, v in result.get('speedups', {}).items()} } "
          f"flags={result['flags']}")
    if result.get("error"):
        print(result["error"][:1500])
    for c in result["configs"]:
        base = result["baselines"].get(c["label"], {})
        cols = "  ".join(f"{n} {b['tflops']:.0f} ({c['tflops'] / b['tflops']:.2f}x)" for n, b in base.items() if b["tflops"])
        print(f"  {c['label']:<24} {c['tflops']:7.1f} TFLOPS  rel_iqr {c['spread_ms']['rel_iqr'] if c['spread_ms'] else 0:.3f}"
              f"  err {c['max_err'] or 0:.2e} rel_l2 {c.get('rel_l2') or 0:.2e} | {cols}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--program", default="seeds/triton_fa")
    p.add_argument("--tasks", nargs="+", default=["mha_causal"])
    p.add_argument("--grid", default="paper")
    p.add_argument("--noise-runs", type=int, default=5)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    register()
    program = Path(args.program).resolve()
    out = Path(args.out) if args.out else None
    summary = {"evals": [], "noise": None, "quick": None}
    for i, task in enumerate(args.tasks):
        result, wall = timed_eval(program, task, args.grid, args.overrides, fresh_cache=i == 0)
        show(result, wall)
        summary["evals"].append({"task": task, "wall_s": wall, "score": result["score"],
                                 "speedups": result.get("speedups"), "correct": result["correct"]})
        if out:
            (out / f"eval_{task}_{args.grid}.json").write_text(json.dumps(result, indent=1))
    if args.noise_runs:
        scores = [timed_eval(program, args.tasks[0], args.grid, args.overrides, False)[0]["score"]
                  for _ in range(args.noise_runs)]
        med = statistics.median(scores)
        summary["noise"] = {"scores": scores, "spread": (max(scores) - min(scores)) / med if med else None}
        print(f"\nnoise: {args.noise_runs} evaluations of {args.tasks[0]}: {[round(s, 1) for s in scores]} "
              f"spread (max-min)/median = {summary['noise']['spread'] or 0:.2%}")
    result, wall = timed_eval(program, args.tasks[0], "quick", args.overrides, fresh_cache=True)
    summary["quick"] = {"wall_s": wall, "score": result["score"]}
    print(f"\nquick grid, compile included: {wall:.1f}s, score {result['score']:.1f}")
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
