"""Evaluator settings: a plain dataclass, also used as the Hydra schema of `conf/evaluator/`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EvalSettings:
    # "auto": CUDA when torch sees a GPU, else CPU (Triton programs then run under TRITON_INTERPRET=1).
    device: str = "auto"
    # GPUs this run may time on (None: all visible). The worker is pinned with CUDA_VISIBLE_DEVICES.
    gpus: Optional[list[int]] = None
    # Hard wall-clock limit for one evaluation (compile + correctness + timing); the worker's whole
    # process group is killed after it.
    timeout_s: float = 600.0
    # Correctness: fresh random inputs per trial; small odd sequence lengths are checked first (fail fast).
    trials: int = 2
    odd_seqlens: list[int] = field(default_factory=lambda: [1, 37, 131])
    # Timing: warm-up calls, timed repetitions (median and spread reported), L2 flush between calls on GPU.
    warmup: int = 3
    # ... and at least this much warm-up time on a GPU (do_bench's 50-100 ms): clocks settle under load.
    warmup_ms: float = 100.0
    repeats: int = 10
    # ... and on a GPU as many more as fill at least this many milliseconds (do_bench's rep window): a GPU's
    # clocks keep falling for a few hundred ms under load, so a shorter window reads short calls faster.
    rep_ms: float = 200.0
    flush_l2: bool = True
    # Characters of captured compiler/Python output kept in the result (head and tail).
    log_chars: int = 4000
    # Baselines timed by the same protocol (those not installed are skipped): cudnn and fa2 through PyTorch
    # SDPA, flash_attn (FA2 package), fa3, fa4. Measured figures are cached per device, libraries and shape.
    baselines: list[str] = field(default_factory=lambda: ["cudnn", "fa2", "flash_attn", "fa3", "fa4"])
    baseline_cache: bool = True
    # A configuration faster than this multiple of the best baseline is flagged for a person to review.
    review_factor: float = 1.3
    # Event time below this fraction of the synchronised wall-clock time per call means work escaped the
    # timed stream: the wall-clock figure is used and the result flagged.
    wall_check: float = 0.8
    # Record the ATen ops of a correctness call (another attention implementation reached dynamically).
    monitor_ops: bool = True
