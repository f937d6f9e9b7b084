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
    repeats: int = 10
    flush_l2: bool = True
    # Characters of captured compiler/Python output kept in the result (head and tail).
    log_chars: int = 4000
