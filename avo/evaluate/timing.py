"""Timing protocol: warm-up, then one measured sample per call, summarised by median and spread.

A `Clock` measures one call of a function and returns milliseconds. `time_call` is the simple protocol
(warm up, then `repeats` samples of one function). Protocols that interleave several functions (a program
and its baselines, sample by sample, so drift hits all alike) use the same clocks and `summarize`.

On CUDA (the protocol of FlashAttention's benchmark and triton.testing.do_bench): the L2 cache is flushed
before each call by zeroing a buffer larger than L2, a CUDA event pair brackets the call, and the device is
synchronised before the end event is recorded, so work the program put on side streams is counted.
On a CPU: time.perf_counter around each call (the numbers exercise the loop; they say nothing about GPUs).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

# Larger than the L2 of any current GPU (H100: 50 MB, B200: 126 MB); the same size do_bench uses.
L2_FLUSH_BYTES = 256 * 1024 * 1024


class CpuClock:
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
        return start.elapsed_time(end)


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
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    clock = make_clock(device, flush_l2)
    for _ in range(warmup):
        fn()
    clock.sync()  # warm-up work must not spill into the first sample
    return summarize([clock.measure(fn) for _ in range(repeats)])
