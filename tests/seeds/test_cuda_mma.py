"""The seed program `seeds/cuda_mma` (CUDA C++ with inline PTX mma.sync / ldmatrix / cp.async).

Without a GPU:
- attention.cu compiles with nvcc for sm_90a and sm_80 (ptxas validates the inline PTX), and a broken copy
  fails with nvcc's own message, which reaches the evaluator's `error` field through torch's build;
- the fragment index arithmetic of fragments.cuh (compiled for the host) drives a numpy emulation of the
  kernel's warp-level algorithm, with ldmatrix and mma.m16n8k16 emulated from the PTX ISA's fragment
  layouts, and the emulated kernel's output matches the reference attention;
- kernel.py imports on a CPU and refuses CPU tensors clearly.
With a GPU (`pytest -m gpu tests/seeds`): correctness against avo.task.reference_attention over head groups,
causal modes, head dims, dtypes and odd lengths; other CONFIGs; a full evaluate(); a compile error's report.
"""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

from avo import PROJECT_ROOT
from avo.evaluate import EvalSettings, evaluate
from avo.task import Grid, GridPoint, Task

SEED = PROJECT_ROOT / "seeds" / "cuda_mma"
NVCC = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
CXX = shutil.which("c++") or shutil.which("g++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def load_kernel(program_dir=SEED, config=None):
    """A fresh instance of the program's kernel.py (its own module name, so CONFIGs do not collide)."""
    name = f"cuda_mma_test_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, program_dir / "kernel.py")
    module = importlib.util.module_from_spec(spec)
    if config:
        # Import with CUDA builds at import: set CONFIG first by executing the source with it replaced.
        source = (program_dir / "kernel.py").read_text()
        start = source.index("CONFIG = {\n")
        end = source.index("}\n", start) + 2
        body = "".join(f"    {k!r}: {v!r},\n" for k, v in config.items())
        source = source[:start] + "CONFIG = {\n" + body + "}\n" + source[end:]
        module.__file__ = str(program_dir / "kernel.py")
        sys.modules[name] = module
        exec(compile(source, str(program_dir / "kernel.py"), "exec"), module.__dict__)  # noqa: S102
        return module
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def nvcc_command(cu_path, out_path, *, archs=("-gencode=arch=compute_90a,code=sm_90a",), defines=()):
    from torch.utils.cpp_extension import include_paths

    return [NVCC, "-c", str(cu_path), "-o", str(out_path), "-O3", "--use_fast_math", "-lineinfo", *archs,
            *defines, f"-I{cu_path.parent}", *(f"-I{p}" for p in include_paths())]


def nvcc_compile(cu_path, out_path, **kwargs):
    return subprocess.run(nvcc_command(cu_path, out_path, **kwargs), capture_output=True, text=True, timeout=300)


# --- compile-only (no GPU) ---------------------------------------------------------------------------

@needs_nvcc
def test_cu_compiles_for_sm90a_and_sm80(tmp_path):
    """ptxas validates the inline PTX for both architectures kernel.py builds (default CONFIG)."""
    archs = ("-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80")
    assert set(archs) <= set(load_kernel().ARCH_FLAGS)
    proc = nvcc_compile(SEED / "attention.cu", tmp_path / "attention.o", archs=("--threads=0", *archs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stderr[-3000:]


def _broken_copy(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(SEED, broken, ignore=shutil.ignore_patterns("__pycache__"))
    cu = broken / "attention.cu"
    text = cu.read_text()
    assert "const int kvh = h / (heads_q / heads_kv);" in text
    cu.write_text(text.replace("const int kvh = h / (heads_q / heads_kv);",
                               "const int kvh = h / (heads_q / heads_kv_misspelt);"))
    return broken


@needs_nvcc
def test_broken_cu_fails_with_nvccs_message(tmp_path):
    broken = _broken_copy(tmp_path)
    proc = nvcc_compile(broken / "attention.cu", tmp_path / "attention.o")
    assert proc.returncode != 0
    assert 'error: identifier "heads_kv_misspelt" is undefined' in proc.stdout + proc.stderr


def test_build_error_leads_with_the_compiler_errors():
    kernel = load_kernel()
    output = ("Error building extension 'x': [1/3] /usr/local/cuda/bin/nvcc -c a.cu " + "-I/long/path " * 300 + "\n"
              "FAILED: attention.cuda.o\n/x/attention.cu(135): error: identifier \"foo\" is undefined\n"
              "1 error detected in the compilation of \"/x/attention.cu\".\nninja: build stopped: subcommand failed.\n")
    message = str(kernel.build_error(output))
    head = message[:300]
    assert 'attention.cu(135): error: identifier "foo" is undefined' in head
    assert "1 error detected" in head
    assert message.endswith(output)


@needs_nvcc
def test_compile_error_reaches_the_evaluators_result(tmp_path, monkeypatch):
    """Through torch's real build (torch's CPU build can run nvcc when told where CUDA is; it cannot link a
    CUDA extension): the evaluator's `error` carries nvcc's message. On a CPU the program builds lazily, so
    the broken copy is made to build at import, as it does on a GPU machine."""
    broken = _broken_copy(tmp_path)
    kernel_py = broken / "kernel.py"
    cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(NVCC)))
    kernel_py.write_text(
        "import torch.utils.cpp_extension as _ce\n"
        f"_ce.CUDA_HOME = _ce.CUDA_HOME or {cuda_home!r}\n" + kernel_py.read_text() + "\nbuild()\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    task = Task(name="mha_causal", heads_q=2, heads_kv=2, head_dim=128, causal=True, dtype="float16")
    grid = Grid(name="t", configs=[GridPoint(1, 64)], dtype="float16")
    res = evaluate(broken, task, grid, EvalSettings(device="cpu", trials=1, timeout_s=240))
    assert (res["stage"], res["correct"]) == ("compile", False), res["log"]
    assert "building the cuda_mma extension failed" in res["error"]
    assert 'error: identifier "heads_kv_misspelt" is undefined' in res["error"]
    assert f"{broken.resolve() / 'attention.cu'}(" in res["error"]  # the program's file, not a build copy


def test_imports_on_a_cpu_and_refuses_cpu_tensors():
    import torch

    kernel = load_kernel()
    assert kernel.extension_name().startswith("avo_cuda_mma_")
    x = torch.zeros(1, 4, 2, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="cuda_mma needs CUDA tensors"):
        kernel.attention(x, x, x, causal=True, sm_scale=0.125)


def test_extension_name_is_stable_and_follows_sources_and_config(tmp_path):
    a = load_kernel()
    assert a.extension_name() == load_kernel().extension_name()
    a.CONFIG["BLOCK_N"] = 32 if a.CONFIG["BLOCK_N"] != 32 else 64
    assert a.extension_name() != load_kernel().extension_name()
    copy = tmp_path / "copy"
    shutil.copytree(SEED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert load_kernel(copy).extension_name() == load_kernel().extension_name()  # not the directory
    (copy / "fragments.cuh").write_text((copy / "fragments.cuh").read_text() + "\n// edited\n")
    assert load_kernel(copy).extension_name() != load_kernel().extension_name()


def test_config_is_a_literal_within_tunables():
    from avo.program import read_tunables

    tunables, config = read_tunables(SEED)
    assert set(config) == set(tunables) and all(config[k] in tunables[k] for k in config)
    assert all(v % 16 == 0 for v in tunables["BLOCK_M"] + tunables["BLOCK_N"])


# --- the fragment layouts, emulated --------------------------------------------------------------------

TABLES_MAIN = r"""
#include "fragments.cuh"
#include <cstdio>
static void pairs(const char* name, int (*row)(int), int (*col)(int)) {
    std::printf("\"%s\": [", name);
    for (int l = 0; l < 32; ++l) std::printf("%s[%d, %d]", l ? ", " : "", row(l), col(l));
    std::printf("], ");
}
int main() {
    std::printf("{");
    pairs("a_ldsm", frag::a_ldsm_row, frag::a_ldsm_col);
    pairs("k_ldsm", frag::k_ldsm_row, frag::k_ldsm_col);
    pairs("v_ldsm", frag::v_ldsm_row, frag::v_ldsm_col);
    std::printf("\"acc\": [");
    for (int l = 0; l < 32; ++l) {
        std::printf("%s[", l ? ", " : "");
        for (int i = 0; i < 4; ++i) std::printf("%s[%d, %d]", i ? ", " : "", frag::acc_row(l, i), frag::acc_col(l, i));
        std::printf("]");
    }
    std::printf("], \"p\": [");
    for (int kk = 0; kk < 16; ++kk) {
        std::printf("%s[", kk ? ", " : "");
        for (int r = 0; r < 4; ++r) std::printf("%s[%d, %d]", r ? ", " : "", frag::p_tile(kk, r), frag::p_elem(r));
        std::printf("]");
    }
    std::printf("]}\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """fragments.cuh's functions, compiled for the host, tabulated for every lane."""
    if CXX is None:
        pytest.skip("no host C++ compiler")
    tmp = tmp_path_factory.mktemp("frag")
    (tmp / "tables.cpp").write_text(TABLES_MAIN)
    exe = tmp / "tables"
    proc = subprocess.run([CXX, "-std=c++17", f"-I{SEED}", str(tmp / "tables.cpp"), "-o", str(exe)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: np.array(v) for k, v in json.loads(out).items()}


# The PTX ISA's fragment layouts (independent of fragments.cuh): groupID g = lane / 4, t = lane % 4.
LANES = np.arange(32)
G, T = LANES // 4, LANES % 4


def spec_a(i):  # A element a_i (i = 0..7) of mma.m16n8k16 .f16/.bf16: (row, col) for every lane
    return G + 8 * ((i // 2) % 2), 2 * T + (i % 2) + 8 * (i // 4)


def spec_b(i):  # B element b_i (i = 0..3): (k, n)
    return 2 * T + (i % 2) + 8 * (i // 2), G


def spec_c(i):  # C/D element c_i (i = 0..3): (row, col)
    return G + 8 * (i // 2), 2 * T + (i % 2)


def ldmatrix_x4(tile, addrs, trans=False):
    """ldmatrix.sync.aligned.m8n8.x4[.trans].b16: addrs[lane] = (row, col) of the 8 elements lane gives for
    row lane % 8 of matrix lane / 8. Returns regs[lane, j, 2]: lane's two elements of matrix j."""
    mats = np.stack([np.stack([tile[r, c:c + 8] for r, c in addrs[8 * j:8 * j + 8]]) for j in range(4)])
    if trans:
        mats = mats.transpose(0, 2, 1)
    regs = np.empty((32, 4, 2), dtype=tile.dtype)
    for j in range(4):
        regs[:, j, 0] = mats[j, G, 2 * T]
        regs[:, j, 1] = mats[j, G, 2 * T + 1]
    return regs


def mma(c, a, b):
    """c[lane, 4] += A @ B with a[lane, 4 regs, 2] (A 16x16) and b[lane, 2 regs, 2] (B 16x8), per the ISA."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for i in range(8):
        A[spec_a(i)] = a[:, i // 2, i % 2]
    for i in range(4):
        B[spec_b(i)] = b[:, i // 2, i % 2]
    assert not np.isnan(A).any() and not np.isnan(B).any()  # the layouts cover every element
    D = A.astype(np.float32) @ B.astype(np.float32)
    for i in range(4):
        c[:, i] += D[spec_c(i)]


def quad_reduce(x, op):  # __shfl_xor_sync(.., 1) then (.., 2) across lanes, x[lane, ...]
    x = op(x, x[LANES ^ 1])
    return op(x, x[LANES ^ 2])


def emulate(q, k, v, *, causal, sm_scale, block_m, block_n, tab):
    """attention.cu's algorithm for one (batch, head), warp by warp, with the kernel's index arithmetic."""
    seqlen, dim = q.shape
    scale_log2 = np.float32(sm_scale * math.log2(math.e))
    out = np.full((seqlen, dim), np.nan, dtype=np.float32)

    def tile_of(x, row0, rows):  # shared-memory tile, rows past the end zero-filled
        t = np.zeros((rows, dim), dtype=np.float16)
        n = max(0, min(rows, seqlen - row0))
        t[:n] = x[row0:row0 + n]
        return t

    acc_row, acc_col = tab["acc"][..., 0], tab["acc"][..., 1]  # [lane, i]
    for m0 in range(0, seqlen, block_m):
        q_tile = tile_of(q, m0, block_m)
        n_end = min(seqlen, m0 + block_m) if causal else seqlen
        for warp in range(block_m // 16):
            q_frag = [ldmatrix_x4(q_tile, [(warp * 16 + r, kk * 16 + c) for r, c in tab["a_ldsm"]])
                      for kk in range(dim // 16)]
            acc = np.zeros((dim // 8, 32, 4), dtype=np.float32)
            row_max = np.full((32, 2), -np.inf, dtype=np.float32)
            row_sum = np.zeros((32, 2), dtype=np.float32)
            warp_row0 = m0 + warp * 16
            for n0 in range(0, n_end, block_n):
                k_tile, v_tile = tile_of(k, n0, block_n), tile_of(v, n0, block_n)
                s = np.zeros((block_n // 8, 32, 4), dtype=np.float32)
                for kk in range(dim // 16):
                    for j in range(block_n // 16):
                        kb = ldmatrix_x4(k_tile, [(j * 16 + r, kk * 16 + c) for r, c in tab["k_ldsm"]])
                        mma(s[2 * j], q_frag[kk], kb[:, 0:2])
                        mma(s[2 * j + 1], q_frag[kk], kb[:, 2:4])
                s *= scale_log2
                if n0 + block_n > seqlen or (causal and n0 + block_n - 1 > m0):
                    for j in range(block_n // 8):
                        row = warp_row0 + acc_row
                        col = n0 + j * 8 + acc_col
                        s[j][(col >= seqlen) | (causal & (col > row))] = -np.inf
                new_max = np.stack([s[:, :, 0:2].max(axis=(0, 2)), s[:, :, 2:4].max(axis=(0, 2))], axis=1)
                new_max = quad_reduce(np.maximum(new_max, row_max), np.maximum)
                alpha = np.exp2(row_max - new_max)
                row_max = new_max
                row_sum *= alpha
                s = np.exp2(s - np.repeat(new_max, 2, axis=1)[None])  # element i uses row i // 2
                row_sum += np.stack([s[:, :, 0:2].sum(axis=(0, 2)), s[:, :, 2:4].sum(axis=(0, 2))], axis=1)
                acc *= np.repeat(alpha, 2, axis=1)[None]
                for kk in range(block_n // 16):
                    p_frag = np.empty((32, 4, 2), dtype=np.float16)  # Op::pack rounds to the input type
                    for r in range(4):
                        tile, elem = tab["p"][kk][r]
                        p_frag[:, r, 0] = s[tile][:, elem]
                        p_frag[:, r, 1] = s[tile][:, elem + 1]
                    for dn in range(dim // 16):
                        vb = ldmatrix_x4(v_tile, [(kk * 16 + r, dn * 16 + c) for r, c in tab["v_ldsm"]], trans=True)
                        mma(acc[2 * dn], p_frag, vb[:, 0:2])
                        mma(acc[2 * dn + 1], p_frag, vb[:, 2:4])
            row_sum = quad_reduce(row_sum, np.add)
            for r in range(2):
                for lane in range(32):
                    row = warp_row0 + acc_row[lane, 2 * r]
                    if row < seqlen:
                        for j in range(dim // 8):
                            col = j * 8 + acc_col[lane, 2 * r]
                            out[row, col:col + 2] = acc[j, lane, 2 * r:2 * r + 2] / row_sum[lane, r]
    return out


def test_emulated_ldmatrix_and_mma_multiply_tiles(tables):
    """Q K^T and P V for single tiles, with the kernel's ldmatrix addresses and the ISA's mma layouts."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32)).astype(np.float16)  # Q rows x head_dim
    y = rng.standard_normal((16, 32)).astype(np.float16)  # K or V: keys x head_dim
    s = np.zeros((2, 32, 4), dtype=np.float32)
    for kk in range(2):
        a = ldmatrix_x4(x, [(r, kk * 16 + c) for r, c in tables["a_ldsm"]])
        b = ldmatrix_x4(y, [(r, kk * 16 + c) for r, c in tables["k_ldsm"]])
        mma(s[0], a, b[:, 0:2])
        mma(s[1], a, b[:, 2:4])
    got = np.zeros((16, 16), dtype=np.float32)
    for j in range(2):
        for i in range(4):
            got[tables["acc"][:, i, 0], j * 8 + tables["acc"][:, i, 1]] = s[j][:, i]
    np.testing.assert_allclose(got, x.astype(np.float32) @ y.astype(np.float32).T, rtol=1e-5, atol=1e-4)

    # P (16 x 16 keys) from the accumulators above, times V (16 keys x 32).
    p = np.empty((32, 4, 2), dtype=np.float16)
    for r in range(4):
        tile, elem = tables["p"][0][r]
        p[:, r, 0], p[:, r, 1] = s[tile][:, elem], s[tile][:, elem + 1]
    o = np.zeros((4, 32, 4), dtype=np.float32)
    for dn in range(2):
        b = ldmatrix_x4(y, [(r, dn * 16 + c) for r, c in tables["v_ldsm"]], trans=True)
        mma(o[2 * dn], p, b[:, 0:2])
        mma(o[2 * dn + 1], p, b[:, 2:4])
    got = np.zeros((16, 32), dtype=np.float32)
    for j in range(4):
        for i in range(4):
            got[tables["acc"][:, i, 0], j * 8 + tables["acc"][:, i, 1]] = o[j][:, i]
    want = (x.astype(np.float32) @ y.astype(np.float32).T).astype(np.float16).astype(np.float32) @ y.astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("seqlen, dim, block_m, block_n, causal", [
    (1, 64, 32, 32, True),
    (37, 64, 32, 16, True),
    (37, 64, 16, 32, False),
    (50, 128, 32, 32, True),
    (70, 64, 64, 32, False),
])
def test_emulated_kernel_matches_the_reference(tables, seqlen, dim, block_m, block_n, causal):
    rng = np.random.default_rng(seqlen * 1000 + dim)
    q, k, v = (rng.standard_normal((seqlen, dim)).astype(np.float16) for _ in range(3))
    q[:, :] *= np.float16(3.0)  # peaked: a missing rescale would show
    sm_scale = 1 / math.sqrt(dim)
    got = emulate(q, k, v, causal=causal, sm_scale=sm_scale, block_m=block_m, block_n=block_n, tab=tables)
    scores = (q.astype(np.float64) @ k.astype(np.float64).T) * sm_scale
    if causal:
        scores[np.triu(np.ones((seqlen, seqlen), dtype=bool), 1)] = -np.inf
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    want = (p / p.sum(axis=1, keepdims=True)) @ v.astype(np.float64)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=5e-3, rtol=1e-2)


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_kernel():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return load_kernel()  # builds (or loads from torch's cache) at import


def _check_against_reference(kernel, group, causal, dim, dtype_name, lengths, batch=2, heads_kv=2):
    import torch

    from avo.task import reference_attention

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device="cuda").manual_seed(group * 1000 + dim)
    for seqlen in lengths:
        shape_q, shape_kv = (batch, seqlen, heads_kv * group, dim), (batch, seqlen, heads_kv, dim)
        q = (torch.randn(shape_q, generator=g, device="cuda") * 3).to(dtype)  # peaked softmax
        k = torch.randn(shape_kv, generator=g, device="cuda").to(dtype)
        v = torch.randn(shape_kv, generator=g, device="cuda").to(dtype)
        sm_scale = 1 / math.sqrt(dim)
        out = kernel.attention(q, k, v, causal=causal, sm_scale=sm_scale)
        torch.cuda.synchronize()
        ref = reference_attention(q, k, v, causal=causal, sm_scale=sm_scale)
        assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
        err = (out.float() - ref).abs()
        assert bool(torch.isfinite(out).all()), f"seqlen {seqlen}: NaN/Inf"
        assert bool((err <= 2e-2 + 2e-2 * ref.abs()).all()), f"seqlen {seqlen}: max error {float(err.max()):.4g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_gpu_correct(gpu_kernel, group, causal, dim, dtype_name):
    _check_against_reference(gpu_kernel, group, causal, dim, dtype_name, lengths=[1, 37, 131, 1000])


@pytest.mark.gpu
@pytest.mark.parametrize("block_m, block_n", [(32, 128), (128, 128)])
def test_gpu_other_configs(gpu_kernel, block_m, block_n):
    kernel = load_kernel(config={"BLOCK_M": block_m, "BLOCK_N": block_n})  # a separate build
    for group, causal, dim in [(1, True, 128), (4, False, 64), (8, True, 64)]:
        _check_against_reference(kernel, group, causal, dim, "bfloat16", lengths=[1, 37, 300])


@pytest.mark.gpu
@pytest.mark.parametrize("task_name, heads_q, heads_kv, causal", [
    ("mha_causal", 16, 16, True), ("gqa8_noncausal", 32, 4, False),
])
def test_gpu_through_the_evaluator(gpu_kernel, task_name, heads_q, heads_kv, causal):
    task = Task(name=task_name, heads_q=heads_q, heads_kv=heads_kv, head_dim=128, causal=causal)
    grid = Grid(name="gpu", configs=[GridPoint(2, 1024), GridPoint(1, 4096)])
    res = evaluate(SEED, task, grid, EvalSettings(device="cuda", timeout_s=600))
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None), res["log"]
    assert all(c["tflops"] > 1 for c in res["configs"])


@pytest.mark.gpu
def test_gpu_compile_error_reaches_the_evaluators_result(tmp_path):
    broken = _broken_copy(tmp_path)
    task = Task(name="mha_causal", heads_q=16, heads_kv=16, head_dim=128, causal=True)
    res = evaluate(broken, task, Grid(name="gpu", configs=[GridPoint(1, 1024)]),
                   EvalSettings(device="cuda", timeout_s=600))
    assert (res["stage"], res["correct"]) == ("compile", False), res["log"]
    assert 'error: identifier "heads_kv_misspelt" is undefined' in res["error"]
    assert f"{broken.resolve() / 'attention.cu'}(" in res["error"]
