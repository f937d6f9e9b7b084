"""Checks that refuse a program: static rules on its source text, and validation of what a call returns.

Static rules are textual on purpose: they are cheap, run before any GPU time is spent, and their message
names the file and line so an agent can act on it. A program can evade them (string-built imports), which
is why the evaluator also isolates the program in its own process group and validates every output; a
later layer adds dynamic (dispatcher-level) checks. To add a rule, append a `Rule` to `RULES`.

Output checks are small functions returning an error message (str) or None, so the worker can stop at the
first failure and report it verbatim.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Files whose text is scanned: Python, CUDA/C++ sources and headers (the genome may be a tree of these).
SOURCE_SUFFIXES = (".py", ".pyx", ".cu", ".cuh", ".cpp", ".cc", ".cxx", ".c", ".h", ".hpp")
NATIVE_SUFFIXES = tuple(s for s in SOURCE_SUFFIXES if s not in (".py", ".pyx"))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern
    why: str
    suffixes: tuple = SOURCE_SUFFIXES


def _rule(name: str, regex: str, why: str, suffixes: tuple = SOURCE_SUFFIXES, flags: int = re.IGNORECASE) -> Rule:
    return Rule(name, re.compile(regex, flags), why, suffixes)


_OTHER_ATTENTION = "calls another attention implementation (the program must compute attention itself)"
_CONCURRENCY = "starts threads or processes or opens sockets (not allowed inside the evaluator)"

RULES: list[Rule] = [
    _rule("sdpa", r"scaled_dot_product_attention|_scaled_dot_product|\bsdpa_kernel\b|\bSDPBackend\b|_fused_sdp",
          _OTHER_ATTENTION),
    _rule("flash_attn", r"flash_attn|flash_attention", _OTHER_ATTENTION),
    _rule("cudnn_attention", r"cudnn\w*attention|attention\w*cudnn|\.sdpa\s*\(", _OTHER_ATTENTION),
    _rule("xformers", r"xformers|memory_efficient_attention|efficient_attention_forward", _OTHER_ATTENTION),
    _rule("torch_mha", r"multi_head_attention|MultiheadAttention|flex_attention|torch\.nn\.attention",
          _OTHER_ATTENTION),
    # Private fused-attention ATen ops (torch.ops.aten._efficient_attention_forward and friends).
    _rule("aten_fused_attention", r"aten\s*\.\s*_\w*(attention|sdp|attn)", _OTHER_ATTENTION),
    _rule("subprocess", r"\bsubprocess\b|\bos\s*\.\s*(system|popen|fork|spawn\w*|exec\w*)\b", _CONCURRENCY, (".py", ".pyx")),
    _rule("threading", r"\bthreading\b|\b_thread\b|\bconcurrent\s*\.\s*futures\b", _CONCURRENCY, (".py", ".pyx")),
    _rule("multiprocessing", r"\bmultiprocessing\b", _CONCURRENCY, (".py", ".pyx")),
    _rule("socket", r"\bsocket\b", _CONCURRENCY),
    _rule("native_concurrency", r"\bstd\s*::\s*(thread|async)\b|\bpthread_create\b|\bfork\s*\(|\bpopen\s*\(|\bsystem\s*\(",
          _CONCURRENCY, NATIVE_SUFFIXES),
]


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the program directory
    line: int
    rule: str
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why} [{self.rule}]: {self.text.strip()[:160]}"


def source_files(program_dir: Path) -> list[Path]:
    return sorted(p for p in Path(program_dir).rglob("*")
                  if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts)


def scan_sources(program_dir: Path, rules: Optional[list[Rule]] = None) -> list[Violation]:
    """Every line of every source file that matches a rule (all of them, so one fix round suffices)."""
    program_dir = Path(program_dir)
    found = []
    for path in source_files(program_dir):
        rel = path.relative_to(program_dir).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            for rule in rules or RULES:
                if path.suffix in rule.suffixes and rule.pattern.search(line):
                    found.append(Violation(rel, lineno, rule.name, line, rule.why))
    return found


def static_error(program_dir: Path) -> Optional[str]:
    """The refusal message for a program, or None when its sources pass every rule."""
    violations = scan_sources(program_dir)
    if not violations:
        return None
    lines = [f"refused by static checks ({len(violations)} forbidden use(s)):"]
    lines += [f"  {v}" for v in violations[:20]]
    if len(violations) > 20:
        lines.append(f"  ... and {len(violations) - 20} more")
    return "\n".join(lines)


# --- outputs -----------------------------------------------------------------------------------------

def check_output(out, like) -> Optional[str]:
    """`out` must be a plain dense torch.Tensor with `like`'s shape, dtype and device, and finite."""
    import torch

    # Exact type: a subclass could override __torch_function__ and fake comparisons or defer the work.
    if type(out) is not torch.Tensor:
        return f"attention returned {type(out).__module__}.{type(out).__qualname__}, expected a plain torch.Tensor"
    if out.layout != torch.strided:
        return f"attention returned a tensor with layout {out.layout}, expected a dense (strided) tensor"
    if tuple(out.shape) != tuple(like.shape):
        return f"attention returned shape {tuple(out.shape)}, expected {tuple(like.shape)} (q's shape)"
    if out.dtype != like.dtype:
        return f"attention returned dtype {out.dtype}, expected {like.dtype} (q's dtype)"
    if out.device != like.device:
        return f"attention returned a tensor on {out.device}, expected {like.device}"
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        n = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        return f"attention output has {n} NaN/Inf element(s) of {out.numel()}, first at (b, s, h, d) = {first}"
    return None


def check_inputs_unchanged(inputs: dict, clones: dict) -> Optional[str]:
    """Inputs are compared bitwise with copies taken before the call."""
    import torch

    changed = [name for name, t in inputs.items() if not torch.equal(t, clones[name])]
    if changed:
        return f"attention modified its input(s) {', '.join(changed)} in place; inputs must be left unchanged"
    return None


def compare(out, ref, *, atol: float, rtol: float) -> tuple[float, Optional[str]]:
    """Max abs error of `out` against the float32 `ref`, and a message when any element is out of tolerance."""
    err = (out.float() - ref).abs()
    max_err = float(err.max()) if err.numel() else 0.0
    bad = err > atol + rtol * ref.abs()
    if not bool(bad.any()):
        return max_err, None
    n = int(bad.sum())
    # Worst element among those out of tolerance (err * bad zeroes the ones within it).
    where = tuple(_unravel(int((err * bad).flatten().argmax()), err.shape))
    return max_err, (
        f"{n} of {err.numel()} output elements out of tolerance (|out - ref| <= {atol:g} + {rtol:g} * |ref|); "
        f"max abs error {max_err:.4g}; worst at (b, s, h, d) = {where}: "
        f"out {float(out.flatten()[_flat(where, out.shape)]):.5g}, ref {float(ref.flatten()[_flat(where, ref.shape)]):.5g}"
    )


def _unravel(flat: int, shape) -> list[int]:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return idx[::-1]


def _flat(idx, shape) -> int:
    flat = 0
    for i, size in zip(idx, shape):
        flat = flat * size + i
    return flat
