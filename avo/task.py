"""What is being optimised: the attention task, the shapes it is measured on, its reference and FLOPs.

These are plain dataclasses. The composition root (avo.config) uses them as Hydra schemas, so the same
classes validate the YAML and travel as plain values to the evaluator, which knows nothing of Hydra.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class Task:
    """Attention forward: q (B, S, Hq, D), k/v (B, S, Hkv, D); query head h reads KV head h // (Hq // Hkv)."""

    name: str = "mha_causal"
    heads_q: int = 16
    heads_kv: int = 16
    head_dim: int = 128
    causal: bool = True
    dtype: str = "bfloat16"
    # |out - ref| <= atol + rtol * |ref| elementwise, against a float32 reference.
    atol: float = 2e-2
    rtol: float = 2e-2
    # Whole-tensor bound ||out - ref|| / ||ref||: bf16 kernels land near 2e-3, fp8 shortcuts near 3e-2.
    rel_l2: float = 1e-2

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"task.dtype={self.dtype!r} is not one of {DTYPES}")
        if self.heads_q <= 0 or self.heads_kv <= 0 or self.heads_q % self.heads_kv:
            raise ValueError(f"task.heads_q={self.heads_q} must be a positive multiple of task.heads_kv={self.heads_kv}")
        if self.head_dim <= 0:
            raise ValueError(f"task.head_dim must be positive, got {self.head_dim}")

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv


@dataclass
class GridPoint:
    batch: int = 1
    seqlen: int = 1024


@dataclass
class Grid:
    """A benchmark grid: the configurations a program is timed on, and how the task is scaled for it."""

    name: str = "smoke"
    configs: list[GridPoint] = field(default_factory=list)
    # Overrides of the task for this grid (None keeps the task's value). The CPU `smoke` grid runs in
    # float16 because Triton's CPU interpreter computes tl.dot on bf16 operands wrongly.
    dtype: Optional[str] = None
    # Cap on KV heads (query heads scale with it so the GQA group is kept), to make CPU runs small.
    max_heads_kv: Optional[int] = None
    head_dim: Optional[int] = None


@dataclass(frozen=True)
class Shape:
    """One concrete problem: everything needed to build inputs, call a program and count FLOPs."""

    batch: int
    seqlen: int
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool
    dtype: str

    @property
    def flops(self) -> float:
        f = 4.0 * self.batch * self.seqlen * self.seqlen * self.heads_q * self.head_dim
        return f / 2 if self.causal else f

    @property
    def label(self) -> str:
        return f"B{self.batch}_S{self.seqlen}_H{self.heads_q}/{self.heads_kv}_D{self.head_dim}"

    def to_dict(self) -> dict:
        return asdict(self)


def grid_shapes(task: Task, grid: Grid) -> list[Shape]:
    """The concrete shapes of `grid` for `task`, with the grid's overrides applied."""
    task.validate()
    heads_kv = task.heads_kv if grid.max_heads_kv is None else min(task.heads_kv, grid.max_heads_kv)
    return [
        Shape(
            batch=p.batch,
            seqlen=p.seqlen,
            heads_q=heads_kv * task.group,
            heads_kv=heads_kv,
            head_dim=grid.head_dim or task.head_dim,
            causal=task.causal,
            dtype=grid.dtype or task.dtype,
        )
        for p in grid.configs
    ]


def with_seqlen(shape: Shape, seqlen: int, batch: int = 1) -> Shape:
    """The same problem at another (typically small and odd) sequence length."""
    return Shape(batch, seqlen, shape.heads_q, shape.heads_kv, shape.head_dim, shape.causal, shape.dtype)


def aggregate(tflops: list[float]) -> float:
    """Aggregate score over grid configurations: the geometric mean (no single shape dominates)."""
    if not tflops or any(t <= 0 for t in tflops):
        return 0.0
    return math.exp(sum(math.log(t) for t in tflops) / len(tflops))


def reference_attention(q, k, v, *, causal: bool, sm_scale: float):
    """Float32 reference in plain PyTorch ops (no SDPA, so it is independent of the kernels it judges)."""
    import torch

    group = q.shape[2] // k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
    if group > 1:
        kf = kf.repeat_interleave(group, dim=1)
        vf = vf.repeat_interleave(group, dim=1)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * sm_scale
    if causal:
        s = q.shape[1]
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vf)
    return out.transpose(1, 2).contiguous()
