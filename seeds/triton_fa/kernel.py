"""Seed program: a FlashAttention-2-style forward pass in Triton.

One program instance computes BLOCK_M query rows of one (batch, query head) against all keys of its KV head,
with the online softmax in base 2 (exp2 with log2(e) folded into the scale). Keys are visited in BLOCK_N
blocks: blocks that need no mask run a lean loop; only the blocks that straddle the causal diagonal or the
end of the sequence pay for masking, and causal blocks entirely above the diagonal are skipped. GQA maps
query head h to KV head h // (heads_q // heads_kv). Inputs are indexed through their strides, so nothing is
transposed or copied. Any sequence length works (rows and columns past the end are masked).
"""
import torch
import triton
import triton.language as tl

# Values the `heuristic` operator may choose from, and the current choice (one key per line, rewritten in place).
TUNABLES = {
    "BLOCK_M": [64, 128, 256],
    "BLOCK_N": [32, 64, 128],
    "num_warps": [4, 8],
    "num_stages": [2, 3, 4],
}
CONFIG = {
    "BLOCK_M": 128,
    "BLOCK_N": 64,
    "num_warps": 8,
    "num_stages": 3,
}

# Under TRITON_INTERPRET=1 (CPU tensors) block sizes are no longer bound by registers or shared memory, and
# the interpreter's cost is per program instance and per loop iteration, so fewer, larger blocks run several
# times faster. None uses CONFIG on the CPU too (tests do, to cover multi-block paths at small lengths).
INTERPRETER_BLOCKS = {"BLOCK_M": 256, "BLOCK_N": 128}

LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n, lo, hi, seqlen,
                    qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=cols[None, :] < seqlen, other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
        qk = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N), already in log2 units
        if MASKED:
            keep = cols[None, :] < seqlen
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(keep, qk, float("-inf"))
        # Every row sees at least key 0 in its first block, so m_new is finite and exp2 never sees -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vn, mask=cols[:, None] < seqlen, other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vn)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, qk_scale,
              stride_qb, stride_qs, stride_qh,
              stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh,
              stride_ob, stride_os, stride_oh,
              heads_q, group, seqlen,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    # Axis 0 (launched fastest) is the query block, so neighbouring programs share one head's K/V in L2
    # (launching heads fastest instead cost 10-20% at seqlen <= 4k on the H100). Causal: the longest query
    # blocks of a head launch first, the short ones fill in behind them.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    off_bh = tl.program_id(1)
    b = off_bh // heads_q
    h = off_bh % heads_q
    kvh = h // group

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < seqlen, other=0.0)
    # K is read transposed (HEAD_DIM, BLOCK_N) straight from memory, so q @ k needs no tl.trans.
    k_ptrs = K + b * stride_kb + kvh * stride_kh + offs_n[None, :] * stride_ks + offs_d[:, None]
    v_ptrs = V + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :]

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
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_ks, stride_vs, offs_m, offs_n,
                                    0, full_hi, seqlen, qk_scale, BLOCK_N, False, CAUSAL)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_ks, stride_vs, offs_m, offs_n,
                                    full_hi, end, seqlen, qk_scale, BLOCK_N, True, CAUSAL)

    acc = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < seqlen)


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
    # The kernel assumes unit stride along head_dim (true for the contiguous inputs of the contract).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))

    blocks = INTERPRETER_BLOCKS if (q.device.type == "cpu" and INTERPRETER_BLOCKS) else CONFIG
    block_m, block_n = blocks["BLOCK_M"], blocks["BLOCK_N"]
    out = torch.empty_like(q)
    grid = (triton.cdiv(seqlen, block_m), batch * heads_q)
    _attn_fwd[grid](
        q, k, v, out, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads_q, heads_q // heads_kv, seqlen,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
        num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"],
    )
    return out
