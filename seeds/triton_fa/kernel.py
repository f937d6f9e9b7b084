"""Seed program: a FlashAttention-2-style forward pass in Triton.

One program instance computes BLOCK_M query rows of one (batch, query head) against all keys of its KV head,
with the online softmax in base 2 (exp2, log2(e) folded into the scale, the scale fused with the max
subtraction in the unmasked loop). Keys are visited in BLOCK_N blocks: blocks that need no mask run a lean
loop; only the blocks that straddle the causal diagonal or the end of the sequence pay for masking, and
causal blocks entirely above the diagonal are skipped. GQA maps query head h to KV head h // (heads_q //
heads_kv). On Hopper and newer, tiles move through TMA tensor descriptors over (batch, seqlen, heads * dim)
views (rows past the end read as zeros, stores are clipped); elsewhere, and on the CPU, through pointers.
Nothing is transposed or copied. Any sequence length works.
"""
import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4: host-side TMA descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

# Values the `heuristic` operator may choose from, and the current choice (one key per line, rewritten in place).
# Two block configurations: SHORT_* when a query row visits at most SHORT_KV keys on average (seqlen, halved
# if causal), where many small programs keep all SMs busy; the others for longer rows, where bigger tiles
# amortise the softmax. Measured on the H100 (bf16, head_dim 128, TMA loads): 64x64 with 4 warps is 2-19%
# faster than 128x128 at seqlen 1024 (most when causal), and 128x128 with 8 warps 6-13% faster than 128x64
# from seqlen 4096 up.
TUNABLES = {
    "BLOCK_M": [64, 128, 256],
    "BLOCK_N": [32, 64, 128],
    "num_warps": [4, 8],
    "num_stages": [2, 3, 4],
    "SHORT_KV": [0, 512, 1024, 2048, 4096],
    "SHORT_BLOCK_M": [64, 128],
    "SHORT_BLOCK_N": [32, 64, 128],
    "SHORT_num_warps": [4, 8],
    "SHORT_num_stages": [2, 3, 4],
}
CONFIG = {
    "BLOCK_M": 128,
    "BLOCK_N": 128,
    "num_warps": 8,
    "num_stages": 3,
    "SHORT_KV": 1024,
    "SHORT_BLOCK_M": 64,
    "SHORT_BLOCK_N": 64,
    "SHORT_num_warps": 4,
    "SHORT_num_stages": 3,
}

# Under TRITON_INTERPRET=1 (CPU tensors) block sizes are no longer bound by registers or shared memory, and
# the interpreter's cost is per program instance and per loop iteration, so fewer, larger blocks run several
# times faster. None uses CONFIG on the CPU too (tests do, to cover multi-block paths at small lengths).
INTERPRETER_BLOCKS = {"BLOCK_M": 256, "BLOCK_N": 128}
# TMA descriptors: None decides per call (a CUDA device of compute capability >= 9 and 16-byte aligned
# inputs); True or False forces them (tests run the descriptor path under the interpreter with True).
TMA = None

LOG2E = 1.4426950408889634


@triton.jit
def _load_tile(desc, ptrs, b, row, col, rows, stride_s, seqlen,
               ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """The (ROWS, HEAD_DIM) tile of sequence positions row .. row + ROWS: a TMA load (positions past the end
    read as zeros), or pointer loads, masked only when the tile may cross the end."""
    if USE_TMA:
        tile = desc.load([b, row, col]).reshape(ROWS, HEAD_DIM)
    elif MASKED:
        tile = tl.load(ptrs + row * stride_s, mask=(row + rows)[:, None] < seqlen, other=0.0)
    else:
        tile = tl.load(ptrs + row * stride_s)
    return tile


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, desc_k, desc_v, k_ptrs, v_ptrs, b, kv_col, stride_ks, stride_vs,
                    offs_m, offs_n, lo, hi, seqlen, qk_scale,
                    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = _load_tile(desc_k, k_ptrs, b, start_n, kv_col, offs_n, stride_ks, seqlen, BLOCK_N, HEAD_DIM, USE_TMA,
                       MASKED)
        qk = tl.dot(q, tl.trans(k))
        if MASKED:
            cols = start_n + offs_n
            keep = cols[None, :] < seqlen
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            # Every row sees at least key 0 in its first block, so m_new is finite: no -inf - -inf below.
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            # The scale is applied to the row max and fused with the subtraction (one FMA per score).
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(desc_v, v_ptrs, b, start_n, kv_col, offs_n, stride_vs, seqlen, BLOCK_N, HEAD_DIM, USE_TMA,
                       MASKED)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, desc_q, desc_k, desc_v, desc_o, qk_scale,
              stride_qb, stride_qs, stride_qh,
              stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh,
              stride_ob, stride_os, stride_oh,
              heads_q, group, seqlen,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              USE_TMA: tl.constexpr):
    # Axis 0 (launched fastest) is the query block, so neighbouring programs share one head's K/V in L2
    # (launching heads fastest instead cost 10-20% at seqlen <= 4k on the H100). Causal: the longest query
    # blocks of a head launch first, the short ones fill in behind them.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    off_bh = tl.program_id(1)
    b = off_bh // heads_q
    h = off_bh % heads_q
    kvh = h // group

    rows_m = tl.arange(0, BLOCK_M)
    offs_m = start_m * BLOCK_M + rows_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Pointer tiles at sequence position 0 (the TMA path ignores them); columns of the descriptors' views.
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qs + offs_d[None, :]
    k_ptrs = K + b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]
    v_ptrs = V + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :]
    q_col = h * HEAD_DIM
    kv_col = kvh * HEAD_DIM

    q = _load_tile(desc_q, q_ptrs, b, start_m * BLOCK_M, q_col, rows_m, stride_qs, seqlen, BLOCK_M, HEAD_DIM,
                   USE_TMA, True)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks [0, full_hi) need no mask: entirely below the diagonal (causal) or inside the sequence.
    if CAUSAL:
        full_hi = (start_m * BLOCK_M) // BLOCK_N * BLOCK_N
        end = tl.minimum((start_m + 1) * BLOCK_M, seqlen)  # blocks past the diagonal are skipped
    else:
        full_hi = seqlen // BLOCK_N * BLOCK_N
        end = seqlen
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, desc_k, desc_v, k_ptrs, v_ptrs, b, kv_col, stride_ks,
                                    stride_vs, offs_m, offs_n, 0, full_hi, seqlen, qk_scale,
                                    BLOCK_N, HEAD_DIM, USE_TMA, False, CAUSAL)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, desc_k, desc_v, k_ptrs, v_ptrs, b, kv_col, stride_ks,
                                    stride_vs, offs_m, offs_n, full_hi, end, seqlen, qk_scale,
                                    BLOCK_N, HEAD_DIM, USE_TMA, True, CAUSAL)

    acc = acc / l_i[:, None]
    if USE_TMA:
        desc_o.store([b, start_m * BLOCK_M, q_col], acc.to(desc_o.dtype).reshape(1, BLOCK_M, HEAD_DIM))
    else:
        o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < seqlen)


def choose_blocks(seqlen: int, causal: bool, device_type: str) -> dict:
    """BLOCK_M, BLOCK_N, num_warps and num_stages for one call (CONFIG's short or long set, or the CPU's)."""
    if device_type == "cpu" and INTERPRETER_BLOCKS:
        return {**INTERPRETER_BLOCKS, "num_warps": CONFIG["num_warps"], "num_stages": CONFIG["num_stages"]}
    prefix = "SHORT_" if (seqlen // 2 if causal else seqlen) <= CONFIG["SHORT_KV"] else ""
    return {key: CONFIG[prefix + key] for key in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}


def use_tma(*tensors: torch.Tensor) -> bool:
    if TMA is not None:
        return TMA
    t = tensors[0]
    return (TensorDescriptor is not None and t.device.type == "cuda"
            and torch.cuda.get_device_capability(t.device)[0] >= 9
            and all(x.data_ptr() % 16 == 0 and x.stride(0) * x.element_size() % 16 == 0
                    and x.stride(1) * x.element_size() % 16 == 0 for x in tensors))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, sm_scale: float) -> torch.Tensor:
    batch, seqlen, heads_q, head_dim = q.shape
    heads_kv = k.shape[2]
    if k.shape != v.shape or k.shape[0] != batch or k.shape[1] != seqlen or k.shape[3] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (batch, seqlen, heads_kv, head_dim) "
                         f"matching q {tuple(q.shape)}")
    if heads_q % heads_kv:
        raise ValueError(f"heads_q={heads_q} must be a multiple of heads_kv={heads_kv}")
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim={head_dim} is not supported (powers of two from 16 to 256)")
    # Unit stride along head_dim, and heads adjacent to head_dim for the descriptors' (B, S, H * D) views:
    # true for the contiguous inputs of the contract.
    q, k, v = (t if t.stride(-1) == 1 and t.stride(2) == head_dim else t.contiguous() for t in (q, k, v))

    blocks = choose_blocks(seqlen, causal, q.device.type)
    block_m, block_n = blocks["BLOCK_M"], blocks["BLOCK_N"]
    out = torch.empty_like(q)
    tma = use_tma(q, k, v, out)
    if tma:
        def view(t, rows):
            return TensorDescriptor(t, [batch, seqlen, t.shape[2] * head_dim], [t.stride(0), t.stride(1), 1],
                                    [1, rows, head_dim])
        descs = (view(q, block_m), view(k, block_n), view(v, block_n), view(out, block_m))
    else:
        descs = (q, k, v, out)  # unused by the pointer path
    grid = (triton.cdiv(seqlen, block_m), batch * heads_q)
    _attn_fwd[grid](
        q, k, v, out, *descs, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads_q, heads_q // heads_kv, seqlen,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, USE_TMA=tma,
        num_warps=blocks["num_warps"], num_stages=blocks["num_stages"],
    )
    return out
