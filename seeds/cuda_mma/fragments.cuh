// Index arithmetic of the warp-level tensor-core fragments used by attention.cu, in one place.
//
// Plain integer functions of the lane (0..31) and the register/element index, compiled for the device by
// attention.cu and for the host by the seed's tests, which check them against an emulation of ldmatrix and
// mma.m16n8k16 written from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type",
// "Warp-level matrix load instruction: ldmatrix"). Notation of the ISA: groupID = lane / 4,
// threadID_in_group = lane % 4.
//
//   A (16x16, row-major), 4 x .b32 registers of 2 x 16-bit each:
//       reg 0: row g,     cols 2t, 2t+1        reg 2: row g,     cols 2t+8, 2t+9
//       reg 1: row g + 8, cols 2t, 2t+1        reg 3: row g + 8, cols 2t+8, 2t+9
//   B (16x8, "col": element (k, n) at n * ld + k), 2 x .b32:
//       reg 0: k = 2t, 2t+1, n = g             reg 1: k = 2t+8, 2t+9, n = g
//   C/D (16x8, float32), 4 floats:  c0, c1: row g, cols 2t, 2t+1;   c2, c3: row g + 8, cols 2t, 2t+1
//
// ldmatrix .x4 loads four 8x8 matrices of 16-bit elements; lanes 8j..8j+7 give the shared-memory addresses
// of the 8 rows of matrix j (16 contiguous bytes each), and register j of lane l receives row l/4,
// elements 2(l%4) and 2(l%4)+1 of matrix j (.trans: column l/4, rows 2(l%4) and 2(l%4)+1).
#pragma once

#if defined(__CUDACC__)
#define AVO_HD __host__ __device__ __forceinline__
#else
#define AVO_HD inline
#endif

namespace frag {

// --- Q (A operand of S = Q K^T): one ldmatrix.x4 of the 16x16 tile at (row 0, col k0) of a row-major
// [row][d] array gives A registers 0..3 directly: matrix 0 = rows 0-7 / cols 0-7, matrix 1 = rows 8-15 /
// cols 0-7, matrix 2 = rows 0-7 / cols 8-15, matrix 3 = rows 8-15 / cols 8-15.
AVO_HD int a_ldsm_row(int lane) { return lane % 16; }
AVO_HD int a_ldsm_col(int lane) { return (lane / 16) * 8; }

// --- K (B operand of S = Q K^T, B[k = d][n = key] = K[key][d]: K stored row-major [key][d] is B in the
// "col" layout, so no transpose). One ldmatrix.x4 at (key n0, d k0) gives the B registers of two n8 tiles:
// regs 0, 1 = keys n0..n0+7 (d k0..k0+7, k0+8..k0+15), regs 2, 3 = keys n0+8..n0+15.
AVO_HD int k_ldsm_row(int lane) { return (lane % 8) + (lane / 16) * 8; }
AVO_HD int k_ldsm_col(int lane) { return ((lane / 8) % 2) * 8; }

// --- V (B operand of O = P V, B[k = key][n = d] = V[key][d]: V stored row-major is B row-major, so
// ldmatrix .trans). One ldmatrix.x4.trans at (key k0, d n0) gives the B registers of two n8 tiles of d:
// regs 0, 1 = d n0..n0+7 (keys k0..k0+7, k0+8..k0+15), regs 2, 3 = d n0+8..n0+15.
AVO_HD int v_ldsm_row(int lane) { return (lane % 8) + ((lane / 8) % 2) * 8; }
AVO_HD int v_ldsm_col(int lane) { return (lane / 16) * 8; }

// --- C/D accumulator element i (0..3) of a 16x8 tile: its row and column within the tile.
AVO_HD int acc_row(int lane, int i) { return lane / 4 + (i / 2) * 8; }
AVO_HD int acc_col(int lane, int i) { return 2 * (lane % 4) + (i % 2); }

// --- P as the A operand of O = P V, straight from the S accumulators (no shared memory): for key step kk
// (keys 16kk..16kk+15), A register r (0..3) packs accumulator elements (e, e + 1) of n8 tile `p_tile`.
// reg 0: row g, keys 2t.. of tile 2kk; reg 1: row g+8, tile 2kk; reg 2: row g, tile 2kk+1; reg 3: row g+8.
AVO_HD int p_tile(int kk, int r) { return 2 * kk + r / 2; }
AVO_HD int p_elem(int r) { return (r % 2) * 2; }

}  // namespace frag
