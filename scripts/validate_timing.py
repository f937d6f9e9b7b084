"""Cross-check the evaluator's timing protocol against triton.testing.do_bench on this GPU.

    python scripts/validate_timing.py [--tasks mha_noncausal mha_causal] [--grid paper]

For every configuration, times cuDNN through PyTorch SDPA (a) with the evaluator's own protocol and
clock (L2 flush, events per call, calls queued back to back) and (b) with a plain
`triton.testing.do_bench` (median, warmup 50 ms, rep 200 ms), in the same process, and prints both in
TFLOPS with their ratio. The issue's target: within 3%.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from avo import PROJECT_ROOT  # noqa: E402
from avo.config import register  # noqa: E402
from avo.evaluate import baselines  # noqa: E402
from avo.evaluate.timing import CudaClock, measure_interleaved  # noqa: E402
from avo.evaluate.worker import make_inputs  # noqa: E402
from avo.task import grid_shapes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=["mha_noncausal", "mha_causal"])
    p.add_argument("--grid", default="paper")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    register()
    clock = CudaClock(flush_l2=True)
    print(f"device {torch.cuda.get_device_name()}")
    print(f"{'task':<16}{'config':<24}{'evaluator':>10}{'do_bench':>10}{'ratio':>8}")
    worst = 0.0
    for task_name in args.tasks:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"task={task_name}", f"benchmark={args.grid}"])
        task, grid = OmegaConf.to_object(cfg.task), OmegaConf.to_object(cfg.benchmark)
        cudnn = baselines.available(["cudnn"], "cuda")["cudnn"]
        for shape in grid_shapes(task, grid):
            x = make_inputs(shape, 0, 0, "cuda")
            scale = 1 / math.sqrt(shape.head_dim)
            fn = lambda: cudnn(x["q"], x["k"], x["v"], causal=shape.causal, sm_scale=scale)  # noqa: E731
            ours = measure_interleaved({"cudnn": fn}, clock=clock, warmup=5, warmup_ms=100,
                                       repeats=args.repeats)["cudnn"]["median_ms"]
            ref = triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
            t_ours, t_ref = shape.flops / ours / 1e9, shape.flops / ref / 1e9
            worst = max(worst, abs(t_ours / t_ref - 1))
            print(f"{task_name:<16}{shape.label:<24}{t_ours:>10.1f}{t_ref:>10.1f}{t_ours / t_ref:>8.3f}")
    print(f"largest difference: {worst:.1%}")


if __name__ == "__main__":
    main()
