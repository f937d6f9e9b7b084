"""Timing protocol: warm-up, then one measured sample per call, summarised by median and spread.

On CUDA this is the protocol of FlashAttention's benchmark (benchmarks/benchmark_attn.py) and of
triton.testing.do_bench: before each call the L2 cache is flushed by zeroing a buffer larger than L2, a
CUDA event pair brackets the call, and the device is synchronised before the end event is recorded, so
work a program put on side streams is counted. That synchronisation costs a fixed host round trip (a few
microseconds) which do_bench does not pay; it is measured once per clock on an empty call and subtracted,
so figures stay comparable with do_bench while side-stream work is still caught.
On a CPU: time.perf_counter around each call (the numbers exercise the loop; they say nothing about GPUs).

`measure_interleaved` times several implementations sample by sample, in an order rotated each round, so
clock drift and thermal state hit all of them alike: the program against its incumbent and its baselines.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

# Larger than the L2 of any current GPU (H100: 50 MB, B200: 126 MB); the same size do_bench uses.
L2_FLUSH_BYTES = 256 * 1024 * 1024
CALIBRATION_CALLS = 25


class CpuClock:
    overhead_ms = 0.0

    def sync(self) -> None:
        pass

    def measure(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


class CudaClock:
    def __init__(self, flush_l2: bool = True):
        import torch

        self._torch = torch
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None
        self.overhead_ms = 0.0
        self.overhead_ms = statistics.median(self.measure(lambda: None) for _ in range(CALIBRATION_CALLS))

    def sync(self) -> None:
        self._torch.cuda.synchronize()

    def measure(self, fn: Callable[[], object]) -> float:
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        if self._flush is not None:
            self._flush.zero_()
        start.record()
        fn()
        # Before the end event, not after: the event is recorded on the current stream only, so without
        # this a program that launches on side streams would be timed short.
        torch.cuda.synchronize()
        end.record()
        end.synchronize()
        return max(0.0, start.elapsed_time(end) - self.overhead_ms)


def make_clock(device: str, flush_l2: bool = True):
    if device == "cuda":
        return CudaClock(flush_l2)
    if device == "cpu":
        return CpuClock()
    raise ValueError(f"unknown timing device {device!r}: expected 'cpu' or 'cuda'")


def summarize(samples_ms: list[float]) -> dict:
    """Median, mean, extremes and interquartile range of the samples (all in ms)."""
    if not samples_ms:
        raise ValueError("no timing samples to summarise (repeats must be >= 1)")
    if len(samples_ms) >= 2:
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
    else:
        q1 = q3 = samples_ms[0]
    return {
        "median_ms": statistics.median(samples_ms),
        "mean_ms": statistics.fmean(samples_ms),
        "min_ms": min(samples_ms),
        "max_ms": max(samples_ms),
        "iqr_ms": q3 - q1,
        "samples_ms": list(samples_ms),
    }


def time_call(fn: Callable[[], object], *, device: str, warmup: int, repeats: int, flush_l2: bool = True) -> dict:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; return `summarize` of the samples."""
    return measure_interleaved({"fn": fn}, clock=make_clock(device, flush_l2), warmup=warmup,
                               repeats=repeats)["fn"]


def measure_interleaved(fns: dict[str, Callable[[], object]], *, clock, warmup: int, repeats: int,
                        before_each: Optional[Callable[[str], None]] = None,
                        after_each: Optional[Callable[[str, int], None]] = None) -> dict[str, dict]:
    """Time every function `repeats` times, interleaved round by round (order rotated each round).

    `before_each(name)` runs untimed before every call (e.g. refilling the inputs with fresh values, so no
    call can reuse an earlier result); `after_each(name, round)` runs untimed after every timed call (e.g.
    validating a sampled output). Returns {name: summarize(samples)}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            if before_each:
                before_each(name)
            fns[name]()
    clock.sync()  # warm-up work must not spill into the first sample
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if before_each:
                before_each(name)
            samples[name].append(clock.measure(fns[name]))
            if after_each:
                after_each(name, r)
    return {name: summarize(s) for name, s in samples.items()}


def wall_per_call(fn: Callable[[], object], *, clock, calls: int) -> float:
    """Milliseconds per call by the host clock over back-to-back calls, the device synchronised at both ends.

    A cross-check of the event timings: whatever a program defers (to other streams, threads or the next
    call), the wall clock over a synchronised batch still pays for it.
    """
    clock.sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    clock.sync()
    return (time.perf_counter() - start) * 1e3 / max(1, calls)
