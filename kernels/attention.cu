// attention.cu — causal self-attention for teacher-forced prefill over a paged
// KV cache (GQA/MQA, optional sliding window), FlashAttention-2 style.
//
// What is fused and why: QKᵀ, the causal/window mask, the softmax and P·V run
// in one kernel with an online softmax (running max m and sum l per query
// row, the accumulator rescaled by e^{m_old − m_new} when the max grows), so
// the [T, T] score matrix never exists in memory; K/V tiles are staged in
// shared memory and reused by every query row of the block. Scores,
// softmax and accumulation are f32 whatever the cache dtype. CPU twin:
// `ops::attention` (and the direct f64 `ops::attention_reference`).
//
// Visibility: query at position i attends keys j with i − window < j ≤ i
// (`window` = 0: all j ≤ i), the same rule as transformers' sliding window.
//
// Paged KV layout (written by rope.cu, read here):
//   k_pool, v_pool: [pool_rows, kv_heads, head_dim] in the cache dtype T,
//   pool_rows = num_blocks · KV_BLOCK. The pool is cut into blocks of
//   KV_BLOCK = 16 consecutive token rows. Sequence s owns the blocks listed in
//   block_table[s, 0 .. ceil(len_s / 16)); its key j lives at pool row
//   block_table[s, j / 16] · 16 + j % 16. Blocks need not be contiguous or in
//   order, so a prefix shared by several sequences can be stored once
//   (src/kv's block pool hands out these ids).
//
// Work split: one thread block per (query tile, head). A query tile is
// ATTN_BR = 32 consecutive queries of one sequence (the host lists the tiles of
// all packed sequences in `tiles`, so varlen batches need no padding). 8 warps
// × 4 query rows; for each tile of ATTN_BC = 32 keys a lane computes the score
// of one key for the warp's 4 rows (k rows padded to head_dim + 1 floats so the
// lanes hit distinct banks), then the warp accumulates P·V with lanes over
// head_dim (SLOTS = ceil(head_dim / 32) registers per row). This runs on CUDA
// cores; a tensor-core (mma) version is the next step for long contexts.
//
// Launch: grid (num_tiles, heads), 256 threads, dynamic shared memory
// (ATTN_BR·hd + ATTN_BC·(hd + 1) + ATTN_BC·hd) floats.
#include "common.cuh"

#define KV_BLOCK 16
#define ATTN_BR 32
#define ATTN_BC 32
#define ATTN_WARPS 8
#define ROWS (ATTN_BR / ATTN_WARPS)

template <typename T, int SLOTS>
__device__ void paged_attention(const float* __restrict__ q,          // [n, heads, hd] f32, packed sequences
                                const T* __restrict__ k_pool,         // [pool_rows, kv_heads, hd] T
                                const T* __restrict__ v_pool,         // [pool_rows, kv_heads, hd] T
                                const int32_t* __restrict__ block_table,  // [num_seqs, max_blocks]
                                const int32_t* __restrict__ seq_start,    // [num_seqs + 1] first packed row
                                const int32_t* __restrict__ tiles,        // [num_tiles, 2] (sequence, first query)
                                T* __restrict__ out,                  // [n, heads, hd] T
                                int heads, int kv_heads, int hd, int max_blocks, int window,
                                float scale) {
    extern __shared__ float smem[];
    float* qs = smem;                       // [ATTN_BR][hd], pre-scaled by 1/sqrt(hd)
    float* ks = qs + ATTN_BR * hd;          // [ATTN_BC][hd + 1]
    float* vs = ks + ATTN_BC * (hd + 1);    // [ATTN_BC][hd]

    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads);
    const int base = seq_start[seq];
    const int nq = min(ATTN_BR, seq_start[seq + 1] - base - q0);
    const size_t qd = (size_t)heads * hd, kvd = (size_t)kv_heads * hd;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int32_t* table = block_table + (size_t)seq * max_blocks;

    for (int e = threadIdx.x; e < ATTN_BR * hd; e += blockDim.x) {
        const int r = e / hd, d = e % hd;
        qs[e] = r < nq ? q[(size_t)(base + q0 + r) * qd + h * hd + d] * scale : 0.0f;
    }

    float m[ROWS], l[ROWS], acc[ROWS][SLOTS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int s = 0; s < SLOTS; ++s) acc[i][s] = 0.0f;
    }

    const int k_hi = q0 + nq;  // keys [k_lo, k_hi) can be visible to this tile
    const int k_lo = window > 0 ? max(0, q0 - window + 1) : 0;
    for (int kt = k_lo; kt < k_hi; kt += ATTN_BC) {
        __syncthreads();  // the previous tile is consumed (first pass: qs is stored)
        for (int e = threadIdx.x; e < ATTN_BC * hd; e += blockDim.x) {
            const int r = e / hd, d = e % hd, j = kt + r;
            float kv = 0.0f, vv = 0.0f;
            if (j < k_hi) {
                const size_t row = (size_t)table[j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK;
                const size_t off = row * kvd + (size_t)kvh * hd + d;
                kv = to_f32(k_pool[off]);
                vv = to_f32(v_pool[off]);
            }
            ks[r * (hd + 1) + d] = kv;
            vs[r * hd + d] = vv;
        }
        __syncthreads();

        // Scores of key kt + lane against the warp's rows.
        float s[ROWS];
#pragma unroll
        for (int i = 0; i < ROWS; ++i) s[i] = 0.0f;
        const float* krow = ks + lane * (hd + 1);
        const float* qrow = qs + warp * ROWS * hd;
        for (int d = 0; d < hd; ++d) {
            const float kd = krow[d];
#pragma unroll
            for (int i = 0; i < ROWS; ++i) s[i] = fmaf(qrow[i * hd + d], kd, s[i]);
        }

        const int j = kt + lane;
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            const int r = warp * ROWS + i;
            if (r >= nq) continue;  // warp-uniform
            const int qi = q0 + r;
            const bool vis = j < k_hi && j <= qi && (window <= 0 || j > qi - window);
            const float si = vis ? s[i] : -INFINITY;
            const float mn = fmaxf(m[i], warp_max(si));
            if (mn == -INFINITY) continue;  // warp-uniform: nothing visible yet
            const float p = vis ? expf(si - mn) : 0.0f;
            const float corr = expf(m[i] - mn);  // 0 when m was −inf
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = mn;
#pragma unroll
            for (int sl = 0; sl < SLOTS; ++sl) acc[i][sl] *= corr;
#pragma unroll 8
            for (int jj = 0; jj < ATTN_BC; ++jj) {
                const float pj = __shfl_sync(FULL_MASK, p, jj);
                const float* vrow = vs + jj * hd;
#pragma unroll
                for (int sl = 0; sl < SLOTS; ++sl) {
                    const int d = lane + 32 * sl;
                    if (d < hd) acc[i][sl] = fmaf(pj, vrow[d], acc[i][sl]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
        const int r = warp * ROWS + i;
        if (r >= nq) continue;
        const float inv = 1.0f / l[i];
        T* o = out + (size_t)(base + q0 + r) * qd + (size_t)h * hd;
#pragma unroll
        for (int sl = 0; sl < SLOTS; ++sl) {
            const int d = lane + 32 * sl;
            if (d < hd) o[d] = from_f32<T>(acc[i][sl] * inv);
        }
    }
}

// Entry points `paged_attention_<dtype>_s<SLOTS>`, SLOTS ∈ {1, 2, 4, 8}
// (head_dim ≤ 32, 64, 128, 256).
#define PAGED_ATTENTION_SLOTS(SUFFIX, T, SLOTS)                                               \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32)                             \
        paged_attention_##SUFFIX##_s##SLOTS(                                                  \
            const float* q, const T* k_pool, const T* v_pool, const int32_t* block_table,     \
            const int32_t* seq_start, const int32_t* tiles, T* out, int heads, int kv_heads,  \
            int hd, int max_blocks, int window, float scale) {                                \
        paged_attention<T, SLOTS>(q, k_pool, v_pool, block_table, seq_start, tiles, out,      \
                                  heads, kv_heads, hd, max_blocks, window, scale);            \
    }
#define PAGED_ATTENTION(SUFFIX, T)        \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 1)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 2)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 4)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 8)
INSTANTIATE_T(PAGED_ATTENTION)
