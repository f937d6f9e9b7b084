"""Seed program: blockwise online-softmax attention (FlashAttention-2's algorithm) in plain PyTorch ops.

Queries are processed BLOCK_M positions at a time; for each query block the keys are visited BLOCK_N at a
time with a running row max, a running row sum and a rescaled float32 accumulator (base-2 exponentials with
log2(e) and sm_scale folded into the queries). Causal key blocks entirely above the diagonal are never
computed (the key loop stops at the query block's last row); only blocks that straddle the diagonal are
masked. Any sequence length works: the last blocks are simply shorter.

GQA without repeating K/V: the query heads that share a KV head are computed against that KV head's keys
either packed into the rows of one matrix product (PACK_GQA=True: rows are (position, group member) pairs,
one (rows x D) @ (D x BLOCK_N) product per KV head) or as a broadcast batch dimension (PACK_GQA=False).

It runs on any device torch runs on (it is the CPU default seed of the project); fp16, bf16 and fp32 inputs
are computed in float32 and the result is cast back to q's dtype.
"""
import torch

# Values the `heuristic` operator may choose from, and the current choice (one key per line, rewritten in place).
# On a CPU the block sizes trade per-operation overhead (many small products) against wasted work on the
# causal diagonal; PACK_GQA changes the shape of the matrix products.
TUNABLES = {
    "BLOCK_M": [16, 32, 64, 128, 256],
    "BLOCK_N": [16, 32, 64, 128, 256],
    "PACK_GQA": [True, False],
}
CONFIG = {
    "BLOCK_M": 32,
    "BLOCK_N": 32,
    "PACK_GQA": False,
}

LOG2E = 1.4426950408889634

# Block sizes on a GPU, where CONFIG's CPU-sized blocks would issue millions of small kernels per call on the
# paper grid (S=32k with 32x32 blocks: ~10 launches for each of 10^6 block pairs). Not in TUNABLES: the CPU is
# this seed's device, and GPU keys there would make half the heuristic's mutations no-ops. BLOCK_M halves
# (down to 64) until one float32 score tile, (batch x heads_q x BLOCK_M x BLOCK_N), fits in TILE_BYTES.
# None uses CONFIG on every device.
GPU_BLOCKS = {"BLOCK_M": 1024, "BLOCK_N": 1024, "TILE_BYTES": 1 << 30}


def choose_blocks(batch: int, heads_q: int, device_type: str) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for one call: CONFIG's on the CPU, GPU_BLOCKS' (memory-capped) elsewhere."""
    if device_type == "cpu" or GPU_BLOCKS is None:
        return CONFIG["BLOCK_M"], CONFIG["BLOCK_N"]
    block_m, block_n = GPU_BLOCKS["BLOCK_M"], GPU_BLOCKS["BLOCK_N"]
    while block_m > 64 and batch * heads_q * block_m * block_n * 4 > GPU_BLOCKS["TILE_BYTES"]:
        block_m //= 2
    return block_m, block_n


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, sm_scale: float) -> torch.Tensor:
    batch, seqlen, heads_q, head_dim = q.shape
    heads_kv = k.shape[2]
    if k.shape != v.shape or k.shape[0] != batch or k.shape[1] != seqlen or k.shape[3] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (batch, seqlen, heads_kv, head_dim) "
                         f"matching q {tuple(q.shape)}")
    if heads_q % heads_kv:
        raise ValueError(f"heads_q={heads_q} must be a multiple of heads_kv={heads_kv}")
    group = heads_q // heads_kv
    block_m, block_n = choose_blocks(batch, heads_q, q.device.type)
    pack = CONFIG["PACK_GQA"]

    # Query head h = kvh * group + g reads KV head kvh: view q's heads as (heads_kv, group).
    # qf: (B, Hkv, X, R, D) with rows R = positions x group members (packed, X = 1) or positions (X = group);
    # `rows_per_pos` query rows share one sequence position. Scaled so that scores are in log2 units.
    qf = q.float().view(batch, seqlen, heads_kv, group, head_dim) * (sm_scale * LOG2E)
    if pack:
        qf = qf.permute(0, 2, 1, 3, 4).reshape(batch, heads_kv, 1, seqlen * group, head_dim)
        rows_per_pos = group
    else:
        qf = qf.permute(0, 2, 3, 1, 4)  # (B, Hkv, group, S, D): a strided view; blocks are sliced from it
        rows_per_pos = 1
    kt = k.float().permute(0, 2, 3, 1).unsqueeze(2)  # (B, Hkv, 1, D, S): K^T, broadcast over the group
    vf = v.float().permute(0, 2, 1, 3).unsqueeze(2)  # (B, Hkv, 1, S, D)
    out = torch.empty(qf.shape, dtype=torch.float32, device=q.device)

    for m0 in range(0, seqlen, block_m):
        m1 = min(seqlen, m0 + block_m)
        r0, r1 = m0 * rows_per_pos, m1 * rows_per_pos
        qb = qf[..., r0:r1, :]
        # Causal: keys past the block's last query position are above the diagonal for every row: skipped.
        hi = m1 if causal else seqlen
        if causal:
            row_pos = (torch.arange(r0, r1, device=q.device) // rows_per_pos)[:, None]
        row_max = torch.full((*qb.shape[:-1], 1), float("-inf"), dtype=torch.float32, device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros(qb.shape, dtype=torch.float32, device=q.device)
        for n0 in range(0, hi, block_n):
            n1 = min(hi, n0 + block_n)
            scores = torch.matmul(qb, kt[..., n0:n1])
            if causal and n1 - 1 > m0:  # straddles the diagonal: some key is after some query of the block
                keep = torch.arange(n0, n1, device=q.device)[None, :] <= row_pos
                scores = scores.masked_fill(~keep, float("-inf"))
            # Key block 0 is visited first and every row keeps key 0, so the running max is finite from then on.
            new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
            p = torch.exp2(scores - new_max)
            alpha = torch.exp2(row_max - new_max)
            row_sum = row_sum * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + torch.matmul(p, vf[..., n0:n1, :])
            row_max = new_max
        out[..., r0:r1, :] = acc / row_sum

    if pack:
        out = out.view(batch, heads_kv, seqlen, group, head_dim).permute(0, 2, 1, 3, 4)
    else:
        out = out.permute(0, 3, 1, 2, 4)  # (B, S, Hkv, group, D)
    return out.reshape(batch, seqlen, heads_q, head_dim).to(q.dtype).contiguous()
