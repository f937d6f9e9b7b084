"""Baselines: other attention implementations, timed by the same protocol as the program, and the peak.

`available(names, device)` returns the baselines of `names` that can run here, each a function with the
program's signature (q, k, v in (B, S, H, D); causal; sm_scale). cuDNN and FlashAttention-2 come through
PyTorch's SDPA with one backend forced; the flash-attn package (FA2), FA3 (flash_attn_interface) and
FA4 (flash_attn.cute) when importable. On a CPU, SDPA's CPU kernel stands in so the loop is exercised.

Measured baselines are cached per (device, library versions, task shape, grid configuration) in a JSON
file under <project>/outputs/.cache, so a run pays for them once, not per candidate.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from avo import PROJECT_ROOT

DEFAULT_CACHE = PROJECT_ROOT / "outputs" / ".cache" / "baselines.json"
# bf16 matrix product used to measure the device's tensor-core peak (a result above it is impossible).
PEAK_GEMM_N = 8192


def _sdpa(backend_name: str) -> Callable:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fn(q, k, v, *, causal: bool, sm_scale: float):
        with sdpa_kernel([backend]):
            out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=sm_scale,
                       enable_gqa=q.shape[2] != k.shape[2])
        return out.transpose(1, 2)

    return fn


def _flash_attn_package(module: str, attr: str = "flash_attn_func") -> Optional[Callable]:
    try:
        mod = __import__(module, fromlist=[attr])
        func = getattr(mod, attr)
    except Exception:  # noqa: BLE001 - not installed or broken: that baseline is simply unavailable
        return None

    def fn(q, k, v, *, causal: bool, sm_scale: float):
        out = func(q, k, v, softmax_scale=sm_scale, causal=causal)
        return out[0] if isinstance(out, tuple) else out

    return fn


def _factories(device: str) -> dict[str, Callable[[], Optional[Callable]]]:
    if device == "cpu":
        return {"sdpa_cpu": lambda: _sdpa("MATH")}
    return {
        "cudnn": lambda: _sdpa("CUDNN_ATTENTION"),
        "fa2": lambda: _sdpa("FLASH_ATTENTION"),
        "flash_attn": lambda: _flash_attn_package("flash_attn"),
        "fa3": lambda: _flash_attn_package("flash_attn_interface"),
        "fa4": lambda: _flash_attn_package("flash_attn.cute"),
    }


def available(names: list[str], device: str) -> dict[str, Callable]:
    """The requested baselines that exist on this device (CPU: the SDPA math kernel only)."""
    factories = _factories(device)
    wanted = list(factories) if device == "cpu" else [n for n in names if n in factories]
    found = {}
    for name in wanted:
        fn = factories[name]()
        if fn is not None:
            found[name] = fn
    return found


def library_versions() -> dict:
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    with contextlib.suppress(Exception):
        versions["cudnn"] = torch.backends.cudnn.version()
    for dist in ("flash-attn", "flash-attn-3", "flash-attn-4"):
        with contextlib.suppress(Exception):
            import importlib.metadata

            versions[dist] = importlib.metadata.version(dist)
    return versions


def cache_key(device_name: str, shape_dict: dict, extra: str = "") -> str:
    blob = json.dumps({"device": device_name, "libs": library_versions(), "shape": shape_dict, "extra": extra},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class BaselineCache:
    """A small JSON file of measured figures, shared by concurrent runs (writes are flock-serialised)."""

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path or os.environ.get("AVO_BASELINE_CACHE") or DEFAULT_CACHE)

    def get(self, key: str) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text()).get(key)
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    data = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    data = {}
                data[key] = value
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written only costs a re-measurement


def measure_peak_tflops(clock) -> float:
    """The device's dense bf16 tensor-core rate, measured by a large matrix product with the same clock."""
    import torch

    n = PEAK_GEMM_N
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    samples = sorted(clock.measure(lambda: torch.matmul(a, b)) for _ in range(20))
    best_ms = samples[len(samples) // 10]  # a low quantile: the peak is what the device can do
    return 2.0 * n ** 3 / (best_ms / 1e3) / 1e12
