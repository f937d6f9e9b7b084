import time

import pytest

from avo.evaluate import timing


def test_summarize_statistics():
    s = timing.summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s["median_ms"] == 3.0
    assert s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["mean_ms"] == pytest.approx(22.0)
    assert s["iqr_ms"] == pytest.approx(2.0)  # quartiles 2 and 4: the outlier does not move it
    assert s["samples_ms"] == [4.0, 1.0, 3.0, 2.0, 100.0]


def test_summarize_one_sample_and_none():
    assert timing.summarize([2.5])["iqr_ms"] == 0.0
    with pytest.raises(ValueError, match="no timing samples"):
        timing.summarize([])


def test_time_call_cpu_counts_warmup_and_repeats():
    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.002)

    stats = timing.time_call(fn, device="cpu", warmup=2, repeats=5)
    assert len(calls) == 7
    assert len(stats["samples_ms"]) == 5
    assert 2.0 <= stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        timing.time_call(lambda: None, device="cpu", warmup=0, repeats=0)
    with pytest.raises(ValueError, match="unknown timing device 'tpu'"):
        timing.make_clock("tpu")


@pytest.mark.gpu
def test_side_stream_work_escapes_the_events_but_not_the_wall_clock():
    """Events queued back to back (do_bench's protocol) do not see work moved to another stream; the
    synchronised wall clock per call does, which is why the worker cross-checks the two."""
    import torch

    side = torch.cuda.Stream()

    def fn():  # returns at once; the work runs on another stream
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)  # tens of ms of GPU cycles

    stats = timing.time_call(fn, device="cuda", warmup=1, repeats=3, flush_l2=True)
    wall = timing.wall_per_call(fn, clock=timing.make_clock("cuda"), calls=3)
    assert wall > 5.0
    assert stats["median_ms"] < 0.2 * wall


@pytest.mark.gpu
def test_cuda_time_call_matmul():
    import torch

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    stats = timing.time_call(lambda: a @ a, device="cuda", warmup=3, repeats=10)
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]


def test_warmup_lasts_at_least_warmup_ms():
    """Clocks settle under sustained load: warm-up is a minimum time as well as a minimum count."""
    import time as _time

    from avo.evaluate.timing import CpuClock, measure_interleaved

    calls = []

    def fn():
        calls.append(1)
        _time.sleep(0.005)

    stats = measure_interleaved({"f": fn}, clock=CpuClock(), warmup=1, repeats=3, warmup_ms=60)
    assert len(calls) >= 3 + 60 // 5 - 1 and len(stats["f"]["samples_ms"]) == 3
    calls.clear()
    measure_interleaved({"f": fn}, clock=CpuClock(), warmup=2, repeats=3)
    assert len(calls) == 5


def test_interleaved_rounds_rotate_and_hooks_run_untimed():
    from avo.evaluate.timing import CpuClock, measure_interleaved

    order, hooks = [], []
    fns = {n: (lambda n=n: order.append(n)) for n in ("a", "b", "c")}
    measure_interleaved(fns, clock=CpuClock(), warmup=0, repeats=3, before_each=lambda n, r: hooks.append(("b", n, r)),
                        after_each=lambda n, r: hooks.append(("a", n, r)))
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert hooks[:2] == [("b", "a", 0), ("a", "a", 0)] and len(hooks) == 18


def test_rounds_fill_the_rep_window():
    import time as _time

    from avo.evaluate.timing import CpuClock, rounds_for

    calls = []

    def fn():
        calls.append(1)
        _time.sleep(0.002)

    assert rounds_for({"f": fn}, clock=CpuClock(), repeats=3, rep_ms=0) == 3 and not calls
    n = rounds_for({"f": fn, "g": fn}, clock=CpuClock(), repeats=3, rep_ms=100)
    assert 8 <= n <= 25  # 100 ms over rounds of two ~2 ms calls
    assert len(calls) == 6  # one round that may compile, two timed by the wall clock
    assert rounds_for({"f": fn}, clock=CpuClock(), repeats=3, rep_ms=10_000, max_rounds=50) == 50
    assert rounds_for({"f": fn}, clock=CpuClock(), repeats=40, rep_ms=1) == 40
