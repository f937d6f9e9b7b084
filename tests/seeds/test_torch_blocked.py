"""The seed program `seeds/torch_blocked` (blockwise online softmax in plain PyTorch ops, the CPU default):
correct against avo.task.reference_attention over head groups, causal modes, head dims, dtypes, odd lengths
and every CONFIG within its TUNABLES; and through the evaluator end to end on the smoke grid.
CPU timings of CONFIGs are reported in the seed's README, not asserted (they are noisy on shared machines).
"""
import importlib.util
import itertools
import math
import uuid

import pytest
import torch

from avo import PROJECT_ROOT
from avo.evaluate import EvalSettings, evaluate
from avo.program import read_tunables
from avo.task import Grid, GridPoint, Task, reference_attention

SEED = PROJECT_ROOT / "seeds" / "torch_blocked"


@pytest.fixture(scope="module")
def kernel():
    name = f"torch_blocked_test_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, SEED / "kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved, threads = dict(module.CONFIG), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the evaluator's CPU worker; many small ops run faster than with threads
    yield module
    torch.set_num_threads(threads)
    module.CONFIG.clear()
    module.CONFIG.update(saved)


def inputs(batch, seqlen, heads_kv, group, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen, heads_kv * group, dim, generator=g)
    q[:, :, ::2] *= 6.0  # peaked heads: a missing rescale or max subtraction shows
    k = torch.randn(batch, seqlen, heads_kv, dim, generator=g)
    v = torch.randn(batch, seqlen, heads_kv, dim, generator=g)
    return q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous()


def check(kernel, batch, seqlen, heads_kv, group, dim, dtype, causal, seed=0):
    q, k, v = inputs(batch, seqlen, heads_kv, group, dim, dtype, seed)
    clones = [t.clone() for t in (q, k, v)]
    sm_scale = 1 / math.sqrt(dim)
    out = kernel.attention(q, k, v, causal=causal, sm_scale=sm_scale)
    assert type(out) is torch.Tensor and out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), clones))
    ref = reference_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    err = (out.float() - ref).abs()
    assert bool((err <= tol + tol * ref.abs()).all()), f"max error {float(err.max()):.3g}"
    return float(err.max())


# Every group size with both causal modes; head dims and dtypes paired across them (each appears with each).
CASES = [
    (1, True, 128, torch.float16), (1, False, 64, torch.float32),
    (4, True, 64, torch.float32), (4, False, 128, torch.float16),
    (8, True, 128, torch.float32), (8, False, 64, torch.float16),
]


@pytest.mark.parametrize("group, causal, dim, dtype", CASES)
def test_correct(kernel, group, causal, dim, dtype):
    # Small blocks so several query and key blocks, the diagonal mask and short last blocks all occur,
    # with BLOCK_M > BLOCK_N and BLOCK_M < BLOCK_N.
    for (bm, bn), pack in itertools.product([(32, 16), (16, 32)], [True, False]):
        kernel.CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, PACK_GQA=pack)
        for seqlen in (1, 37, 131):
            check(kernel, 2, seqlen, 2, group, dim, dtype, causal, seed=seqlen)


def test_bf16(kernel):
    kernel.CONFIG.update(BLOCK_M=16, BLOCK_N=32, PACK_GQA=True)
    for causal in (True, False):
        check(kernel, 1, 50, 2, 4, 128, torch.bfloat16, causal)


def test_every_config_within_tunables_is_correct(kernel):
    tunables, _ = read_tunables(SEED)
    keys = sorted(tunables)
    for i, values in enumerate(itertools.product(*(tunables[k] for k in keys))):
        kernel.CONFIG.update(zip(keys, values))
        check(kernel, 1, 45, 1, 4, 64, torch.float16, causal=i % 2 == 0, seed=i)


def test_gpu_blocks_are_large_and_capped_by_tile_memory(kernel):
    # CONFIG is the CPU's; a GPU call uses GPU_BLOCKS, BLOCK_M halved until a float32 score tile fits.
    kernel.CONFIG.update(BLOCK_M=32, BLOCK_N=16)
    assert kernel.choose_blocks(32, 32, "cpu") == (32, 16)
    assert kernel.choose_blocks(1, 16, "cuda") == (1024, 1024)
    block_m, block_n = kernel.choose_blocks(32, 32, "cuda")
    assert (block_m, block_n) == (256, 1024) and 32 * 32 * block_m * block_n * 4 <= kernel.GPU_BLOCKS["TILE_BYTES"]
    assert kernel.choose_blocks(10_000, 64, "cuda")[0] == 64  # never below 64 rows
    # The sizes GPU_BLOCKS yields are correct through the same code: several 256-row and 1024-key blocks.
    kernel.CONFIG.update(BLOCK_M=256, BLOCK_N=1024, PACK_GQA=False)
    for causal in (True, False):
        check(kernel, 1, 2100, 1, 2, 64, torch.float16, causal)


def test_config_is_a_literal_within_tunables():
    tunables, config = read_tunables(SEED)
    assert set(config) == set(tunables) and all(config[k] in tunables[k] for k in config)
    source = (SEED / "kernel.py").read_text()
    block = source[source.index("CONFIG = {\n"):]
    block = block[:block.index("}\n")]
    assert all(line.count(":") == 1 for line in block.splitlines()[1:])  # one key per line


def test_seed_through_the_evaluator_on_the_smoke_grid():
    task = Task(name="gqa4_causal", heads_q=32, heads_kv=8, head_dim=128, causal=True)
    grid = Grid(name="smoke", configs=[GridPoint(1, 128), GridPoint(2, 64)], dtype="float16", max_heads_kv=2)
    res = evaluate(SEED, task, grid, EvalSettings(device="cpu", trials=1, warmup=1, repeats=3, timeout_s=120))
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None), res["log"]
    assert res["score"] > 0 and all(c["ms"] > 0 for c in res["configs"])


@pytest.mark.gpu
@pytest.mark.parametrize("group, causal", [(1, True), (4, False), (8, True)])
def test_correct_on_gpu_bf16(group, causal):
    name = f"torch_blocked_gpu_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, SEED / "kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    g = torch.Generator(device="cuda").manual_seed(group)
    for seqlen in (1, 37, 1000, 2500):  # 2500: several GPU blocks, and the causal diagonal inside them
        q = torch.randn(2, seqlen, 2 * group, 128, generator=g, device="cuda").bfloat16()
        k = torch.randn(2, seqlen, 2, 128, generator=g, device="cuda").bfloat16()
        v = torch.randn(2, seqlen, 2, 128, generator=g, device="cuda").bfloat16()
        out = module.attention(q, k, v, causal=causal, sm_scale=128 ** -0.5)
        ref = reference_attention(q, k, v, causal=causal, sm_scale=128 ** -0.5)
        assert out.dtype == torch.bfloat16 and out.device == q.device
        assert bool(((out.float() - ref).abs() <= 2e-2 + 2e-2 * ref.abs()).all())
