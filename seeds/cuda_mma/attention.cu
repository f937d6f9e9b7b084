// FlashAttention-2-style forward pass on tensor cores through inline PTX (mma.sync m16n8k16, ldmatrix,
// cp.async). Deliberately simple: one shared-memory stage, no pipelining, no warp specialisation. It is the
// version-0 program that evolution improves, so every step is written to be obviously right.
//
// Work split: one CTA per (block of BLOCK_M query rows, batch * query head); BLOCK_M / 16 warps, each owning
// 16 query rows for the whole key loop. Per key block of BLOCK_N keys:
//   1. all threads stage K and V rows [n0, n0 + BLOCK_N) in shared memory (cp.async; rows past the end of
//      the sequence are zero-filled, so P V never touches garbage);
//   2. each warp computes S = Q K^T for its 16 rows (Q fragments stay in registers for the whole loop),
//      in float32 accumulators, scaled into log2 units;
//   3. blocks that straddle the causal diagonal or the end of the sequence are masked to -inf;
//   4. online softmax in registers: row max over the quad of lanes sharing a row (shuffles), exp2f, the
//      running sum kept per thread (the quad's partial sums are added once at the end);
//   5. O += P V with P taken straight from the S accumulators (the C layout of m16n8k16 is the A layout).
// Causal: key blocks entirely above the diagonal are never loaded or computed.
//
// Layouts: q, o (B, S, Hq, D) and k, v (B, S, Hkv, D), contiguous; element (b, s, h, d) of q at
// ((b * S + s) * Hq + h) * D + d. Query head h reads KV head h / (Hq / Hkv).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "fragments.cuh"

// Set from kernel.py's CONFIG (compile defines); the defaults let the file compile on its own.
#ifndef AVO_BLOCK_M
#define AVO_BLOCK_M 64
#endif
#ifndef AVO_BLOCK_N
#define AVO_BLOCK_N 64
#endif

static_assert(AVO_BLOCK_M % 16 == 0 && AVO_BLOCK_M >= 16 && AVO_BLOCK_M <= 256, "BLOCK_M: a multiple of 16 (16 rows per warp)");
static_assert(AVO_BLOCK_N % 16 == 0 && AVO_BLOCK_N >= 16, "BLOCK_N: a multiple of 16");

namespace {

// Padding of each shared-memory row, in 16-bit elements (16 bytes): rows stay 16-byte aligned (cp.async,
// ldmatrix), and the 8 row addresses of an ldmatrix fall on 8 different groups of 4 banks.
constexpr int PAD = 8;

// --- PTX wrappers ------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// The element type: how to pack two floats into one .b32 register (lower index in the lower half, as the
// fragments of mma expect) and which mma to issue. D = A B + D, float32 accumulators.
struct Fp16 {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

struct Bf16 {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// Rows [row0, row0 + ROWS) of a (S, heads, D) slice whose rows are `row_stride` elements apart, into a
// shared [ROWS][D + PAD] tile, 16 bytes per cp.async; rows at or past `seqlen` are zero-filled.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(uint16_t* tile, const uint16_t* src, size_t row_stride, int row0,
                                          int seqlen) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int r = c / CHUNKS;
        const int col = (c % CHUNKS) * 8;
        uint16_t* dst = tile + r * (D + PAD) + col;
        if (row0 + r < seqlen) {
            cp_async_16(dst, src + (size_t)(row0 + r) * row_stride + col);
        } else {
            *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

template <typename Op, int D, int BLOCK_M, int BLOCK_N, bool CAUSAL>
__global__ void __launch_bounds__(BLOCK_M / 16 * 32)
attn_fwd_kernel(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                uint16_t* __restrict__ o, int seqlen, int heads_q, int heads_kv, float scale_log2) {
    constexpr int THREADS = BLOCK_M / 16 * 32;
    constexpr int LD = D + PAD;  // shared-memory row stride, in elements
    static_assert(D % 16 == 0, "head_dim must be a multiple of 16");

    extern __shared__ __align__(16) uint16_t smem[];
    uint16_t* q_tile = smem;                   // [BLOCK_M][LD]
    uint16_t* k_tile = q_tile + BLOCK_M * LD;  // [BLOCK_N][LD]
    uint16_t* v_tile = k_tile + BLOCK_N * LD;  // [BLOCK_N][LD]

    const int m0 = blockIdx.x * BLOCK_M;
    const int b = blockIdx.y / heads_q;
    const int h = blockIdx.y % heads_q;
    const int kvh = h / (heads_q / heads_kv);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;

    const size_t q_stride = (size_t)heads_q * D;  // between sequence positions
    const size_t kv_stride = (size_t)heads_kv * D;
    const uint16_t* q_bh = q + ((size_t)b * seqlen * heads_q + h) * D;
    const uint16_t* k_bh = k + ((size_t)b * seqlen * heads_kv + kvh) * D;
    const uint16_t* v_bh = v + ((size_t)b * seqlen * heads_kv + kvh) * D;
    uint16_t* o_bh = o + ((size_t)b * seqlen * heads_q + h) * D;

    // Q tile -> shared -> this warp's A fragments, kept in registers for the whole key loop.
    load_tile<BLOCK_M, D, THREADS>(q_tile, q_bh, q_stride, m0, seqlen);
    cp_async_wait_all();
    __syncthreads();
    uint32_t q_frag[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + frag::a_ldsm_row(lane)) * LD + kk * 16 + frag::a_ldsm_col(lane));
    }

    float acc[D / 8][4];  // O accumulators: n8 tiles of head_dim
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
    }
    // This thread's two rows: acc_row(lane, 0) (elements 0, 1) and acc_row(lane, 2) = that + 8 (elements 2, 3).
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};  // partial: this thread's columns only
    const int warp_row0 = m0 + warp * 16;

    // Causal: keys past the block's last query row are above the diagonal for every row: never visited.
    const int n_end = CAUSAL ? min(seqlen, m0 + BLOCK_M) : seqlen;
    for (int n0 = 0; n0 < n_end; n0 += BLOCK_N) {
        __syncthreads();  // every warp is done with the previous K and V tiles
        load_tile<BLOCK_N, D, THREADS>(k_tile, k_bh, kv_stride, n0, seqlen);
        load_tile<BLOCK_N, D, THREADS>(v_tile, v_bh, kv_stride, n0, seqlen);
        cp_async_wait_all();
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the BLOCK_N keys: BLOCK_N / 8 tiles of 16 x 8.
        float s[BLOCK_N / 8][4];
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int j = 0; j < BLOCK_N / 16; ++j) {
                uint32_t kb[4];
                ldmatrix_x4(kb, k_tile + (j * 16 + frag::k_ldsm_row(lane)) * LD + kk * 16 + frag::k_ldsm_col(lane));
                Op::mma(s[2 * j], q_frag[kk], kb[0], kb[1]);
                Op::mma(s[2 * j + 1], q_frag[kk], kb[2], kb[3]);
            }
        }

        // Scale into log2 units; mask keys past the end, and (causal) keys after the row's own position.
        const bool masked = (n0 + BLOCK_N > seqlen) || (CAUSAL && n0 + BLOCK_N - 1 > m0);
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[j][i] *= scale_log2;
                if (masked) {
                    const int row = warp_row0 + frag::acc_row(lane, i);
                    const int col = n0 + j * 8 + frag::acc_col(lane, i);
                    if (col >= seqlen || (CAUSAL && col > row)) s[j][i] = -INFINITY;
                }
            }
        }

        // Online softmax. Key 0 is in the first block and no row masks it, so the new max is finite from the
        // first block on, and exp2f(-inf - finite) = 0 handles masked keys and the first rescale.
        float new_max[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) new_max[i / 2] = fmaxf(new_max[i / 2], s[j][i]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // the 4 lanes of a quad hold the same rows
            new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 1));
            new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 2));
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            alpha[r] = exp2f(row_max[r] - new_max[r]);
            row_max[r] = new_max[r];
            row_sum[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < BLOCK_N / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[j][i] = exp2f(s[j][i] - new_max[i / 2]);
                row_sum[i / 2] += s[j][i];
            }
        }
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[j][i] *= alpha[i / 2];
        }

        // O += P V: P (16 x BLOCK_N) from the S accumulators, 16 keys per step; V^T fragments via ldmatrix.trans.
#pragma unroll
        for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
            uint32_t p_frag[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float* src = s[frag::p_tile(kk, r)];
                p_frag[r] = Op::pack(src[frag::p_elem(r)], src[frag::p_elem(r) + 1]);
            }
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, v_tile + (kk * 16 + frag::v_ldsm_row(lane)) * LD + dn * 16 + frag::v_ldsm_col(lane));
                Op::mma(acc[2 * dn], p_frag, vb[0], vb[1]);
                Op::mma(acc[2 * dn + 1], p_frag, vb[2], vb[3]);
            }
        }
    }

    // Normalise and store (rows past the end are not written). Two adjacent columns per 32-bit store.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = warp_row0 + frag::acc_row(lane, 2 * r);
        if (row < seqlen) {
            const float inv = 1.f / row_sum[r];
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                const int col = j * 8 + frag::acc_col(lane, 2 * r);
                *reinterpret_cast<uint32_t*>(o_bh + (size_t)row * q_stride + col) =
                    Op::pack(acc[j][2 * r] * inv, acc[j][2 * r + 1] * inv);
            }
        }
    }
}

template <typename Op, int D, bool CAUSAL>
cudaError_t launch(const void* q, const void* k, const void* v, void* o, int batch, int seqlen, int heads_q,
                   int heads_kv, float scale_log2, cudaStream_t stream) {
    constexpr int BLOCK_M = AVO_BLOCK_M;
    constexpr int BLOCK_N = AVO_BLOCK_N;
    auto kernel = attn_fwd_kernel<Op, D, BLOCK_M, BLOCK_N, CAUSAL>;
    const size_t smem = (size_t)(BLOCK_M + 2 * BLOCK_N) * (D + PAD) * sizeof(uint16_t);
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    const dim3 grid((seqlen + BLOCK_M - 1) / BLOCK_M, batch * heads_q);
    kernel<<<grid, BLOCK_M / 16 * 32, smem, stream>>>(
        static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v),
        static_cast<uint16_t*>(o), seqlen, heads_q, heads_kv, scale_log2);
    return cudaGetLastError();
}

template <typename Op>
cudaError_t dispatch(const void* q, const void* k, const void* v, void* o, int batch, int seqlen, int heads_q,
                     int heads_kv, int head_dim, bool causal, float scale_log2, cudaStream_t stream) {
    if (head_dim == 64) {
        return causal ? launch<Op, 64, true>(q, k, v, o, batch, seqlen, heads_q, heads_kv, scale_log2, stream)
                      : launch<Op, 64, false>(q, k, v, o, batch, seqlen, heads_q, heads_kv, scale_log2, stream);
    }
    if (head_dim == 128) {
        return causal ? launch<Op, 128, true>(q, k, v, o, batch, seqlen, heads_q, heads_kv, scale_log2, stream)
                      : launch<Op, 128, false>(q, k, v, o, batch, seqlen, heads_q, heads_kv, scale_log2, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

// Called by binding.cpp (which checks shapes, dtypes and devices). is_bf16: bfloat16, else float16.
// scale_log2 = sm_scale * log2(e). Returns the launch's error (cudaErrorInvalidValue for an unsupported
// head_dim or grid).
cudaError_t avo_cuda_mma_forward(const void* q, const void* k, const void* v, void* o, bool is_bf16, int batch,
                                 int seqlen, int heads_q, int heads_kv, int head_dim, bool causal,
                                 float scale_log2, cudaStream_t stream) {
    if ((long long)batch * heads_q > 65535) return cudaErrorInvalidValue;  // grid.y limit
    return is_bf16 ? dispatch<Bf16>(q, k, v, o, batch, seqlen, heads_q, heads_kv, head_dim, causal, scale_log2, stream)
                   : dispatch<Fp16>(q, k, v, o, batch, seqlen, heads_q, heads_kv, head_dim, causal, scale_log2, stream);
}
