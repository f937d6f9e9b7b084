"""Seed program: a FlashAttention-2-style forward kernel in CUDA C++ with inline PTX tensor-core instructions.

The kernel is `attention.cu` (mma.sync m16n8k16 on bf16/fp16 with float32 accumulators, ldmatrix, cp.async;
fragment index arithmetic in `fragments.cuh`), bound to Python by `binding.cpp`, and compiled with
`torch.utils.cpp_extension.load` at import when CUDA is available (lazily on first call otherwise, so the
module imports on a machine without a GPU). The extension's name is a hash of the sources, the compile flags
and CONFIG, and the sources are built from a copy named after that hash inside torch's build cache
(TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions), so the build commands do not depend on where
this directory is (the evaluator runs a private copy of it): torch rebuilds only when the sources, the
flags or CONFIG change. A failed build raises a RuntimeError that starts with the compiler's error lines,
followed by torch's whole build output.
"""
import hashlib
import os
import re
from pathlib import Path

import torch

# Values the `heuristic` operator may choose from, and the current choice (one key per line, rewritten in place).
# BLOCK_M: query rows per CTA (BLOCK_M / 16 warps, 16 rows each); BLOCK_N: keys per shared-memory tile.
# Both become compile defines (AVO_BLOCK_M, AVO_BLOCK_N), so a change is a rebuild.
TUNABLES = {
    "BLOCK_M": [32, 64, 128],
    "BLOCK_N": [32, 64, 128],
}
CONFIG = {
    "BLOCK_M": 64,
    "BLOCK_N": 64,
}

HERE = Path(__file__).resolve().parent
SOURCES = ("binding.cpp", "attention.cu")
HEADERS = ("fragments.cuh",)
# sm_90a (Hopper) cubin, sm_80 cubin (Ampere and later), and compute_80 PTX for the driver to JIT elsewhere.
ARCH_FLAGS = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_80,code=compute_80",
]
# --threads=0: nvcc compiles the architectures in parallel.
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "--threads=0", *ARCH_FLAGS]
CXX_FLAGS = ["-O3"]

_extension = None


def defines() -> list:
    return [f"-DAVO_BLOCK_M={int(CONFIG['BLOCK_M'])}", f"-DAVO_BLOCK_N={int(CONFIG['BLOCK_N'])}"]


def extension_name() -> str:
    """A stable name: the same sources, flags, CONFIG and torch give the same name (and torch's cached build)."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    digest.update(repr((NVCC_FLAGS, CXX_FLAGS, defines(), torch.__version__, torch.version.cuda)).encode())
    return f"avo_cuda_mma_{digest.hexdigest()[:16]}"


def compiler_errors(output: str, limit: int = 30) -> list:
    """The error lines of a build log: nvcc's "file(line): error: ...", gcc's "file:line:col: error: ...",
    ptxas's "ptxas ... error : ...", fatal errors, and the compilers' "N errors detected" summaries."""
    pattern = re.compile(r"\berror\s*:|\bfatal\b|\berrors? detected\b", re.IGNORECASE)
    return [line for line in output.splitlines() if pattern.search(line)][:limit]


def build_error(output: str) -> RuntimeError:
    """A RuntimeError whose message leads with the compiler's errors, then the whole build output."""
    errors = compiler_errors(output)
    head = "building the cuda_mma extension failed"
    if errors:
        head += "; compiler errors:\n" + "\n".join(errors)
    return RuntimeError(f"{head}\n\nfull build output:\n{output}")


def stable_sources(name: str) -> Path:
    """The sources and headers, copied to <torch build root>/<name>_src (written once; the name is their hash)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    src = root / f"{name}_src"
    src.mkdir(parents=True, exist_ok=True)
    for file in (*SOURCES, *HEADERS):
        data = (HERE / file).read_bytes()
        dest = src / file
        if not dest.is_file() or dest.read_bytes() != data:
            tmp = src / f".{file}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, dest)  # atomic: a concurrent build of the same name sees a whole file
    return src


def build(verbose: bool = False):
    """Compile (or load from torch's cache) the extension; returns the module with `forward`."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        name = extension_name()
        flags = defines()
        src = stable_sources(name)
        try:
            _extension = load(
                name=name,
                sources=[str(src / file) for file in SOURCES],  # attention.cu finds fragments.cuh beside it
                extra_cflags=CXX_FLAGS + flags,
                extra_cuda_cflags=NVCC_FLAGS + flags,
                verbose=verbose,
            )
        except RuntimeError as exc:  # torch's message carries ninja's output, nvcc's errors included
            # Name this directory's files in the messages, not the build copies.
            raise build_error(str(exc).replace(f"{src}{os.sep}", f"{HERE}{os.sep}")) from None
    return _extension


if torch.cuda.is_available():
    build()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, sm_scale: float) -> torch.Tensor:
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise RuntimeError(f"cuda_mma needs CUDA tensors (got q on {q.device}, k on {k.device}, v on {v.device}); "
                           f"on a CPU use a PyTorch or Triton seed (seeds/torch_blocked, seeds/triton_fa)")
    return build().forward(q, k, v, bool(causal), float(sm_scale))
