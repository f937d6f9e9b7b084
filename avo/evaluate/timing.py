"""Timing protocol: warm-up, then one measured sample per call, summarised by median and spread.

On CUDA this is the protocol of FlashAttention's benchmark and of triton.testing.do_bench: before each
call the L2 cache is flushed by zeroing a buffer larger than L2 and a CUDA event pair brackets the call;
calls are queued back to back and the events read after the last one, so the GPU never idles between calls.
Why not synchronise the device before each end event (which would count side-stream work directly): on
the lent H100 the idle gap that sync leaves after every call let kernels read 5-13% faster than do_bench
at seqlen <= 8k. Side-stream work is caught instead by the worker's
wall-clock cross-check (`wall_per_call`), which pays for everything a call launches, on any stream.
On a CPU: time.perf_counter around each call (the numbers exercise the loop; they say nothing about GPUs).

`measure_interleaved` times several implementations sample by sample, in an order rotated each round, so
clock drift and thermal state hit all of them alike (the program against its incumbent). Nothing but the L2
flush should run between timed calls: measured on the lent H100, refilling the inputs before every call
(memory-bound work that leaves the tensor cores idle) let the next call run 5-12% faster than do_bench
reads it, and interleaving cuDNN with slower kernels read it 10% faster. Hence the worker's input pool and
its baselines timed one at a time.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Optional

# Larger than the L2 of any current GPU (H100: 50 MB, B200: 126 MB); the same size do_bench uses.
L2_FLUSH_BYTES = 256 * 1024 * 1024


class CpuClock:
    """`record` runs one timed call and returns a token; `resolve` turns tokens into milliseconds."""

    def sync(self) -> None:
        pass

    def record(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def resolve(self, token: float) -> float:
        return token * 1e3

    def measure(self, fn: Callable[[], object]) -> float:
        return self.resolve(self.record(fn))


class CudaClock(CpuClock):
    def __init__(self, flush_l2: bool = True):
        import torch

        self._torch = torch
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None

    def sync(self) -> None:
        self._torch.cuda.synchronize()

    def record(self, fn: Callable[[], object]):
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        if self._flush is not None:
            self._flush.zero_()
        start.record()
        fn()
        end.record()
        return start, end

    def resolve(self, token) -> float:
        start, end = token
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
    return measure_interleaved({"fn": fn}, clock=make_clock(device, flush_l2), warmup=warmup,
                               repeats=repeats)["fn"]


def measure_interleaved(fns: dict[str, Callable[[], object]], *, clock, warmup: int, repeats: int,
                        warmup_ms: float = 0.0,
                        before_each: Optional[Callable[[str], None]] = None,
                        after_each: Optional[Callable[[str, int], None]] = None) -> dict[str, dict]:
    """Time every function `repeats` times, interleaved round by round (order rotated each round).

    Warm-up: at least `warmup` rounds and at least `warmup_ms` of device time, as do_bench does. A GPU
    under sustained tensor-core load settles at lower clocks than a fresh one: a few warm-up calls left
    the evaluator reading cuDNN 10-13% faster than do_bench at seqlen <= 8k on the H100.
    `before_each(name, round)` runs untimed before every call, `round` None during the warm-up (e.g. pointing
    the call at that round's inputs); `after_each(name, round)` runs untimed after every timed call. Both
    run on the host while the device works through the queue: work they put on the device lands between the
    timed calls (see the module's note). Returns {name: summarize(samples)}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    start, rounds = time.perf_counter(), 0
    while rounds < warmup or (time.perf_counter() - start) * 1e3 < warmup_ms:
        for name in names:
            if before_each:
                before_each(name, None)
            fns[name]()
        clock.sync()  # so the host's clock follows the device's work, and none spills into the samples
        rounds += 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    tokens = []
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if before_each:
                before_each(name, r)
            tokens.append((name, clock.record(fns[name])))
            if after_each:
                after_each(name, r)
    # Events are read only once every call is queued, as do_bench does: the device runs the calls back to
    # back. (Reading them per call or per round left the GPU idle between calls; on the H100 that made
    # cuDNN read up to 12% faster than do_bench at seqlen 2k-8k.)
    for name, token in tokens:
        samples[name].append(clock.resolve(token))
    return {name: summarize(s) for name, s in samples.items()}


def rounds_for(fns: dict[str, Callable[[], object]], *, clock, repeats: int, rep_ms: float,
               max_rounds: int = 1000) -> int:
    """Rounds to time: `repeats`, or as many as fill `rep_ms` (do_bench's window), at most `max_rounds`.

    The time of a round is estimated from two untimed rounds after a first one (which may compile).
    """
    if rep_ms <= 0:
        return repeats
    for fn in fns.values():
        fn()
    clock.sync()
    start = time.perf_counter()
    for _ in range(2):
        for fn in fns.values():
            fn()
    clock.sync()
    per_round_ms = max((time.perf_counter() - start) * 1e3 / 2, 1e-3)
    return max(repeats, min(max_rounds, math.ceil(rep_ms / per_round_ms)))


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
