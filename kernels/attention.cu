// attention.cu — causal self-attention for teacher-forced prefill over a paged
// KV cache (GQA/MQA, optional sliding window), FlashAttention-2 style.
//
// What is fused and why: QKᵀ, the causal/window mask, the softmax and P·V run
// in one kernel with an online softmax (running max m and sum l per query
// row, the accumulator rescaled by e^{m_old − m_new} when the max grows), so
// the [T, T] score matrix never exists in memory; K/V tiles are staged in
// shared memory and reused by every query row of the block. Scores,
// softmax and accumulation are f32 whatever the cache dtype; queries come
// in the cache dtype too (rope.cu writes them so). CPU twin:
// `ops::attention` (and the direct f64 `ops::attention_reference`).
//
// Visibility: query at position i attends keys j with i − window < j ≤ i
// (`window` = 0: all j ≤ i), the same rule as transformers' sliding window.
//
// Paged KV layout (written by rope.cu, read here):
//   k_pool, v_pool: [pool_rows, kv_heads, head_dim] in the cache dtype T,
//   pool_rows = num_blocks · KV_BLOCK. The pool is cut into blocks of
//   KV_BLOCK (16, src/consts.rs) consecutive token rows. Sequence s owns the
//   blocks listed in block_table[s, 0 .. ceil(len_s / KV_BLOCK)); its key j
//   lives at pool row block_table[s, j / KV_BLOCK] · KV_BLOCK + j % KV_BLOCK.
//   Blocks need not be contiguous or in
//   order. With the prefix cache (src/backend/cuda/kv.rs), sequence s's first
//   past[s] keys (whole blocks) were copied into the pool from the cache and
//   only the tokens after them are packed as queries: packed query r of s is
//   at position past[s] + r and sees keys 0 … past[s] + r. Without a window,
//   key tiles start at position 0 whatever `past` is, so a row meets the
//   same tiles in the same order cached or not (tiles past its own position
//   add exact zeros): the same bits.
//
// Work split: one thread block per (query tile, head), and in the
// tensor-core kernel per output half at hd 512 and per key range when split
// (split-KV, at the end of the file). A query tile is
// ATTN_BR = 64 consecutive queries of one sequence (the host lists the tiles of
// all packed sequences in `tiles`, so varlen batches need no padding). Two
// kernels read the same tiles and layout:
//
// * `paged_attention_mma_*` (bf16/f16 caches, head_dim 32, 64, 128, 256,
//   512): tensor cores. 4 warps × 16 query rows; per tile of MMA_BC = 64 keys
//   each warp computes S = Q·Kᵀ with mma.sync m16n8k16 (Q pre-scaled by
//   scale·log2(e) and rounded to the cache dtype again), masks, updates the online
//   softmax in registers (each thread owns 2 rows × 16 keys of S; row
//   max/sum over the 4 threads of a quad), and accumulates O += P·V with P
//   re-packed from the S accumulators as A fragments (FlashAttention-2's
//   register reuse). Up to hd 128 Q is held as A fragments for the whole
//   kernel; from hd 256 those hd/4 registers would spill next to O's hd/2,
//   so Q stays in shared memory and each k-step's A fragment comes by
//   ldmatrix (FlashAttention-2's hd-256 layout). At hd 512 O alone would
//   take 256 registers: two blocks share a (tile, head), each computing all
//   of S but O for DV = 256 head dims (staging only those columns of V), at
//   1.5× the ideal tensor work; splitting the keys of S between two warps
//   that trade P through shared memory would avoid it, at a barrier pair
//   per tile. K and V tiles are staged row-major with 16-byte copies and 8
//   elements of row padding (fragment loads hit 32 distinct banks); V's B
//   fragments come transposed through ldmatrix.trans (a first version
//   transposed V with 2-byte stores and ran at 0.66× (hd 64) and 0.47×
//   (hd 128) of this one's speed on an H200). P is rounded to the cache
//   dtype for the product, as FlashAttention does; the sums stay f32.
// * `paged_attention_*_s<SLOTS>` (every dtype and head_dim ≤ 512; f32 models):
//   CUDA cores, each tile as two halves of SIMT_BR = 32 queries: 8 warps × 4
//   query rows; for each tile of ATTN_BC = 32 keys a lane computes the score
//   of one key for the warp's 4 rows (k rows padded to head_dim + 1 floats so
//   the lanes hit distinct banks), then the warp accumulates P·V with lanes
//   over head_dim (SLOTS = ceil(head_dim / 32) registers per row).
//
// Launch: SIMT: grid (num_tiles, heads), 256 threads, dynamic shared memory
// (SIMT_BR·hd + ATTN_BC·(hd + 1) + ATTN_BC·hd) floats (192 KB at hd 512:
// Hopper's 227 KB opt-in holds it, an A100's 163 KB does not). MMA: grid
// (num_tiles, heads · hd / DV, splits), 128 threads; per stage a K tile of
// MMA_BC × (hd + 8) and a V tile of MMA_BC × (DV + 8) 16-bit elements, from
// hd 256 plus the Q tile, ATTN_BR × (hd + 8): static shared memory for one
// stage up to hd 128, else dynamic: one stage 99 KB at hd 256, 163 KB at
// 512; `paged_attention_mma2_*` (two stages through cp.async) 165 KB at hd
// 256 and none at 512 (261 KB).
#include "attention_tile.cuh"
#include "common.cuh"
#include "mma.cuh"

// The block and tile sizes come from src/consts.rs (build.rs passes -D); the
// host sizes shared memory and launches from the same values.
#if !defined(KV_BLOCK) || !defined(ATTN_BR) || !defined(SIMT_BR) || !defined(ATTN_BC) || \
    !defined(ATTN_WARPS) || !defined(MMA_WARPS) || !defined(MMA_BC)
#error "KV_BLOCK, ATTN_BR, SIMT_BR, ATTN_BC, ATTN_WARPS, MMA_WARPS, MMA_BC are defined by build.rs from src/consts.rs"
#endif
static_assert(ATTN_BC == 32, "the SIMT kernel gives each lane of a warp one key of a tile");
static_assert(ATTN_BR % SIMT_BR == 0 && SIMT_BR % ATTN_WARPS == 0,
              "a tile is whole SIMT half-tiles of whole rows per warp");
static_assert(ATTN_BR == MMA_WARPS * 16, "the tensor-core kernel's warps take 16 query rows each");
#define ROWS (SIMT_BR / ATTN_WARPS)

template <typename T, int SLOTS>
__device__ void paged_attention(const T* __restrict__ q,              // [n, heads, hd] T, packed sequences
                                const T* __restrict__ k_pool,         // [pool_rows, kv_heads, hd] T
                                const T* __restrict__ v_pool,         // [pool_rows, kv_heads, hd] T
                                const int32_t* __restrict__ block_table,  // [num_seqs, max_blocks]
                                const int32_t* __restrict__ seq_start,    // [num_seqs + 1] first packed row
                                const int32_t* __restrict__ past,         // [num_seqs] cached tokens before the packed ones
                                const int32_t* __restrict__ tiles,        // [num_tiles, 2] (sequence, first query)
                                T* __restrict__ out,                  // [n, heads, hd] T
                                int heads, int kv_heads, int hd, int max_blocks, int window,
                                float scale) {
    extern __shared__ float smem[];
    float* qs = smem;                       // [SIMT_BR][hd], pre-scaled by `scale`
    float* ks = qs + SIMT_BR * hd;          // [ATTN_BC][hd + 1]
    float* vs = ks + ATTN_BC * (hd + 1);    // [ATTN_BC][hd]

    const int seq = tiles[2 * blockIdx.x], tile0 = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads);
    const int base = seq_start[seq], p0 = past[seq];
    const size_t qd = (size_t)heads * hd, kvd = (size_t)kv_heads * hd;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int32_t* table = block_table + (size_t)seq * max_blocks;

    for (int q0 = tile0; q0 < tile0 + ATTN_BR; q0 += SIMT_BR) {
        const int nq = min(SIMT_BR, seq_start[seq + 1] - base - q0);
        if (nq <= 0) break;  // block-uniform
        __syncthreads();  // the previous half is done with qs / ks / vs
        for (int e = threadIdx.x; e < SIMT_BR * hd; e += blockDim.x) {
            const int r = e / hd, d = e % hd;
            qs[e] = r < nq ? to_f32(q[(size_t)(base + q0 + r) * qd + h * hd + d]) * scale : 0.0f;
        }

        float m[ROWS], l[ROWS], acc[ROWS][SLOTS];
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
#pragma unroll
            for (int s = 0; s < SLOTS; ++s) acc[i][s] = 0.0f;
        }

        // Query r of the half is at position p0 + q0 + r; keys [k_lo, k_hi)
        // can be visible to it.
        const int k_hi = p0 + q0 + nq;
        const int k_lo = window > 0 ? max(0, p0 + q0 - window + 1) : 0;
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
                const int qi = p0 + q0 + r;
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
    }  // halves
}

// Entry points `paged_attention_<dtype>_s<SLOTS>`, SLOTS ∈ {1, 2, 4, 8, 16}
// (head_dim ≤ 32, 64, 128, 256, 512). ptxas left to itself holds a 256-thread
// kernel to 128 registers, and s16 then spills; its 192 KB of shared memory
// leaves one block per SM anyway, so it asks for 1 (0: no bound, as before).
#define PAGED_ATTENTION_SLOTS(SUFFIX, T, SLOTS)                                               \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, (SLOTS) >= 16 ? 1 : 0)      \
        paged_attention_##SUFFIX##_s##SLOTS(                                                  \
            const T* q, const T* k_pool, const T* v_pool, const int32_t* block_table,         \
            const int32_t* seq_start, const int32_t* past, const int32_t* tiles, T* out,      \
            int heads, int kv_heads, int hd, int max_blocks, int window, float scale) {       \
        paged_attention<T, SLOTS>(q, k_pool, v_pool, block_table, seq_start, past, tiles, out, \
                                  heads, kv_heads, hd, max_blocks, window, scale);            \
    }
#define PAGED_ATTENTION(SUFFIX, T)        \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 1)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 2)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 4)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 8)   \
    PAGED_ATTENTION_SLOTS(SUFFIX, T, 16)
INSTANTIATE_T(PAGED_ATTENTION)

// ---------------------------------------------------------------------------
// Tensor-core kernel (see the header; fragment layouts in mma.cuh).

template <typename T, int HD, int DV, int STAGES>
__device__ void paged_attention_mma(const T* __restrict__ q, const T* __restrict__ k_pool,
                                    const T* __restrict__ v_pool,
                                    const int32_t* __restrict__ block_table,
                                    const int32_t* __restrict__ seq_start,
                                    const int32_t* __restrict__ past,
                                    const int32_t* __restrict__ tiles, T* __restrict__ out,
                                    int heads, int kv_heads, int max_blocks, int window,
                                    float scale,
                                    float* __restrict__ part,  // split partials (splits > 1)
                                    int splits) {
    // (`hd` is the template's HD; the entry point takes it for a signature
    // shared with the SIMT kernel.)
    constexpr bool QS = HD > 128;      // Q in shared memory, A fragments by ldmatrix
    constexpr int PARTS = HD / DV;     // blocks per (tile, head), DV output columns each
    constexpr int KC = HD / 16;        // k-steps of Q·Kᵀ over head_dim
    constexpr int DT = DV / 8;         // n-tiles of P·V over this block's head dims
    constexpr int NT = MMA_BC / 8;     // n-tiles of S over the keys
    constexpr int KSTR = HD + 8;       // ks (and qs) row stride (elements)
    constexpr int VSTR = DV + 8;       // vs row stride
    constexpr int VEC = 8;             // elements per 16-byte load
    static_assert(STAGES == 1 || STAGES == 2, "one stage, or two filled by cp.async");
    static_assert(HD % DV == 0 && DV % 16 == 0 && (PARTS == 1 || QS),
                  "output columns split in whole k-steps, only with Q in shared memory");
    static_assert(PARTS == 1 || (HD / VEC) % 32 == 0, "a warp's V chunks are all in or all out");
    // [stage][key][KSTR] K and [stage][key][VSTR] V tiles, then (QS) the
    // [ATTN_BR][KSTR] Q tile: static for one stage at HD ≤ 128, else in the
    // dynamic shared memory (past the static 48 KB).
    T* ks_all;
    T* vs_all;
    T* qs = nullptr;
    if constexpr (STAGES == 1 && !QS) {
        __shared__ __align__(16) T ks1[MMA_BC * KSTR];
        __shared__ __align__(16) T vs1[MMA_BC * KSTR];
        ks_all = ks1;
        vs_all = vs1;
    } else {
        extern __shared__ float smem[];
        ks_all = reinterpret_cast<T*>(smem);
        vs_all = ks_all + STAGES * MMA_BC * KSTR;
        qs = vs_all + STAGES * MMA_BC * VSTR;
    }
    T* const tag = nullptr;  // selects the dtype's pack2 / mma16816

    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y / PARTS, kvh = h / (heads / kv_heads);
    const int col0 = (blockIdx.y % PARTS) * DV;  // this block's first output column
    const int base = seq_start[seq], p0 = past[seq];
    const int nq = min(ATTN_BR, seq_start[seq + 1] - base - q0);
    const size_t qd = (size_t)heads * HD, kvd = (size_t)kv_heads * HD;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, c = lane % 4;
    const int32_t* table = block_table + (size_t)seq * max_blocks;

    // This thread's two query rows within the tile; Q pre-scaled into log2
    // units and rounded to T: as A fragments in registers for the whole
    // kernel, or (QS: those HD/4 registers would spill next to O's HD/2)
    // into qs, read by ldmatrix per k-step after the key loop's first
    // barrier.
    const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
    const float qscale = scale * 1.4426950408889634f;
    uint32_t qa[QS ? 1 : KC][4];
    if constexpr (QS) {
        for (int e = threadIdx.x; e < ATTN_BR * (HD / 4); e += blockDim.x) {
            const int r = e / (HD / 4), d = (e % (HD / 4)) * 4;
            float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (r < nq) {
                const Elems<T, 4> e4 =
                    *reinterpret_cast<const Elems<T, 4>*>(q + (size_t)(base + q0 + r) * qd + (size_t)h * HD + d);
#pragma unroll
                for (int j = 0; j < 4; ++j) x[j] = to_f32(e4.v[j]);
            }
            uint32_t* dst = reinterpret_cast<uint32_t*>(qs + r * KSTR + d);
            dst[0] = pack2(x[0] * qscale, x[1] * qscale, tag);
            dst[1] = pack2(x[2] * qscale, x[3] * qscale, tag);
        }
    } else {
        const T* q_lo = q + (size_t)(base + q0 + r_lo) * qd + (size_t)h * HD;
        const T* q_hi = q + (size_t)(base + q0 + r_hi) * qd + (size_t)h * HD;
        load_q_fragments<T, KC>(qa, q_lo, q_hi, r_lo < nq, r_hi < nq, c, qscale);
    }

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

    // Positions: packed query r is at p0 + q0 + r, keys count from 0.
    const int qi_lo = p0 + q0 + r_lo, qi_hi = p0 + q0 + r_hi;
    const int k_hi = p0 + q0 + nq;
    const int k_lo = window > 0 ? max(0, p0 + q0 - window + 1) : 0;
    // Split z of `splits` takes a contiguous run of whole key tiles (an
    // empty run leaves m = −inf, l = 0 for the merge to weigh by 0).
    const int n_tiles = (k_hi - k_lo + MMA_BC - 1) / MMA_BC;
    const int per = (n_tiles + splits - 1) / splits;
    const int kt_begin = k_lo + min(n_tiles, (int)blockIdx.z * per) * MMA_BC;
    const int kt_end = min(k_hi, k_lo + min(n_tiles, ((int)blockIdx.z + 1) * per) * MMA_BC);
    // Tile kt's K rows and V rows (this block's DV columns) into stage st:
    // coalesced 16-byte copies (consecutive threads along head_dim). Keys
    // past the end are zeros, so P·V never meets a NaN. One stage: loads
    // and stores through registers; two: cp.async (zero-filled past the
    // end), waited for a tile later.
    auto load_tile = [&](int kt, int st) {
        T* ks = ks_all + st * MMA_BC * KSTR;
        T* vs = vs_all + st * MMA_BC * VSTR;
        for (int e = threadIdx.x; e < MMA_BC * (HD / VEC); e += blockDim.x) {
            const int r = e / (HD / VEC), d = (e % (HD / VEC)) * VEC, j = kt + r;
            const bool in = j < k_hi, with_v = PARTS == 1 || d < DV;
            const size_t row = in ? (size_t)table[j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK : 0;
            const size_t off = row * kvd + (size_t)kvh * HD + d;
            if constexpr (STAGES == 1) {
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
                if (in) {
                    kv = *reinterpret_cast<const uint4*>(k_pool + off);
                    if (with_v) vv = *reinterpret_cast<const uint4*>(v_pool + off + col0);
                }
                *reinterpret_cast<uint4*>(ks + r * KSTR + d) = kv;
                if (with_v) *reinterpret_cast<uint4*>(vs + r * VSTR + d) = vv;
            } else {
                cp_async16(ks + r * KSTR + d, k_pool + off, in ? 16 : 0);
                if (with_v) cp_async16(vs + r * VSTR + d, v_pool + off + col0, in ? 16 : 0);
            }
        }
    };
    if (STAGES == 2 && kt_begin < kt_end) {
        load_tile(kt_begin, 0);
        cp_async_commit();
    }
    for (int kt = kt_begin, it = 0; kt < kt_end; kt += MMA_BC, ++it) {
        const int st = STAGES == 2 ? it & 1 : 0;
        if constexpr (STAGES == 1) {
            __syncthreads();  // the previous tile's ks / vs are consumed
            load_tile(kt, 0);
        } else {
            // The next tile into the other stage (last read by the previous
            // tile's compute, before the barrier that ended it), in flight
            // during this one's; an empty group at the end keeps the count.
            if (kt + MMA_BC < kt_end) load_tile(kt + MMA_BC, st ^ 1);
            cp_async_commit();
            cp_async_wait<1>();  // this tile's group has landed
        }
        __syncthreads();
        const T* ks = ks_all + st * MMA_BC * KSTR;
        const T* vs = vs_all + st * MMA_BC * VSTR;

        // S = Q·Kᵀ for this warp's 16 rows × 64 keys.
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        if constexpr (QS) {
            // Per k-step one ldmatrix.x4 for Q's A fragment (matrix t / 8 =
            // rows 8·(t & 1)…, columns 8·(t / 2)…) and one per two n-tiles
            // for K's B fragments (keys 8·(t / 2)…, columns 8·(t & 1)…:
            // b0, b1 of n-tile nt, then nt + 1).
            const int m8 = lane / 8;
            const T* qrow = qs + (warp * 16 + (m8 & 1) * 8 + lane % 8) * KSTR + (m8 >> 1) * 8;
            const T* krow = ks + ((m8 >> 1) * 8 + lane % 8) * KSTR + (m8 & 1) * 8;
#pragma unroll 4
            for (int kc = 0; kc < KC; ++kc) {
                uint32_t a[4];
                ldmatrix_x4(a, qrow + kc * 16);
#pragma unroll
                for (int nt = 0; nt < NT; nt += 2) {
                    uint32_t b[4];
                    ldmatrix_x4(b, krow + nt * 8 * KSTR + kc * 16);
                    mma16816(s[nt], a, b[0], b[1], tag);
                    mma16816(s[nt + 1], a, b[2], b[3], tag);
                }
            }
        } else {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const T* krow = ks + (nt * 8 + g) * KSTR + 2 * c;
#pragma unroll
                for (int kc = 0; kc < KC; ++kc) {
                    const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kc * 16);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kc * 16 + 8);
                    mma16816(s[nt], qa[kc], b0, b1, tag);
                }
            }
        }
        // Mask, then the online softmax of rows lo (s[][0..1]) and hi (s[][2..3]).
        online_softmax_tile<NT, DT>(s, acc, kt, c, qi_lo, qi_hi, k_hi, window, m, l);

        // O += P·V, P (16 × 64 keys) re-packed from S as four A fragments.
#pragma unroll
        for (int kc = 0; kc < MMA_BC / 16; ++kc) {
            uint32_t pa[4];
            pack_p<T, NT>(pa, s, kc);
            // B fragments of two d-tiles per ldmatrix.x4.trans: lane t names
            // row t % 8 of 8×8 matrix t / 8 = (keys kc·16 + 8·(m & 1) …,
            // head dims (dt + m / 2)·8 …); transposed, lane (g, c) receives
            // keys 2c, 2c+1 of head dim g: b0, b1 of d-tile dt, then dt + 1.
            const int m8 = lane / 8;
            const T* vrow = vs + (kc * 16 + (m8 & 1) * 8 + lane % 8) * VSTR + (m8 >> 1) * 8;
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, vrow + dt * 8);
                mma16816(acc[dt], pa, b[0], b[1], tag);
                mma16816(acc[dt + 1], pa, b[2], b[3], tag);
            }
        }
        if constexpr (STAGES == 2) __syncthreads();  // stage st consumed before its refill
    }
    if constexpr (STAGES == 2) cp_async_wait<0>();  // the last (empty) group

    // Row sums over the quad, then O / l (or this split's partials).
    write_rows<T, DT>(acc, m, l, r_lo, nq, base + q0, qd, heads, h, HD, col0, c, out, part, splits,
                      blockIdx.z);
}

// Entry points `paged_attention_mma_<dtype>_d<HD>`, HD ∈ {32, 64, 128, 256,
// 512} (512: DV = 256 columns per block, two blocks per (tile, head)), and
// `paged_attention_mma2_*` for HD ≤ 256 (at 512 two stages need 261 KB).
// Blocks per SM the register budget must allow (runs 5–8 on an H200: the
// split-KV bounds cost d128 7 registers, 168 → 175, which dropped it from 3
// to 2 blocks per SM and from 145 to 113 TFLOP/s at 2×4096). From HD 256
// shared memory allows at most 2 blocks (1 at 512), and 2 blocks of 128
// threads may use 255 registers each, the hardware's limit.
#define MMA_MIN_BLOCKS(HD) ((HD) >= 512 ? 1 : (HD) >= 256 ? 2 : (HD) >= 128 ? 3 : (HD) >= 64 ? 4 : 5)
// `paged_attention_mma_*` stage K/V through registers (one stage),
// `paged_attention_mma2_*` double-buffer them with cp.async; shared memory
// as in the header.
#define PAGED_ATTENTION_MMA_HD(SUFFIX, T, HD, DV, STAGES, NAME)                               \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, MMA_MIN_BLOCKS(HD))          \
        NAME##_##SUFFIX##_d##HD(                                                              \
            const T* q, const T* k_pool, const T* v_pool, const int32_t* block_table,         \
            const int32_t* seq_start, const int32_t* past, const int32_t* tiles, T* out,      \
            int heads, int kv_heads, int /* hd = HD */, int max_blocks, int window,          \
            float scale, float* part, int splits) {                                           \
        paged_attention_mma<T, HD, DV, STAGES>(q, k_pool, v_pool, block_table, seq_start,     \
                                               past, tiles, out, heads, kv_heads, max_blocks, \
                                               window, scale, part, splits);                  \
    }
#define PAGED_ATTENTION_MMA(SUFFIX, T)                                       \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 32, 32, 1, paged_attention_mma)        \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 64, 64, 1, paged_attention_mma)        \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 128, 128, 1, paged_attention_mma)     \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 256, 256, 1, paged_attention_mma)     \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 512, 256, 1, paged_attention_mma)     \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 32, 32, 2, paged_attention_mma2)       \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 64, 64, 2, paged_attention_mma2)       \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 128, 128, 2, paged_attention_mma2)    \
    PAGED_ATTENTION_MMA_HD(SUFFIX, T, 256, 256, 2, paged_attention_mma2)
PAGED_ATTENTION_MMA(bf16, __nv_bfloat16)
PAGED_ATTENTION_MMA(f16, __half)

// ---------------------------------------------------------------------------
// Split-KV merge (FlashDecoding's reduction): when few query tiles meet long
// key ranges (an agent step of a few hundred tokens after thousands of cached
// ones: tiles × heads blocks would leave most multiprocessors idle while each
// walks every key tile), the tensor-core kernel runs `splits` blocks per
// (tile, head), each over a contiguous run of key tiles, writing its
// unnormalised O, running max m (log2 units) and sum l. Here each row and head
// combines them: M = max m_z, w_z = 2^(m_z − M), O = Σ w_z O_z / Σ w_z l_z.
// Launch: grid (rows, heads), HD threads (one head-dim element each).
template <typename T>
__device__ void attention_merge(const float* __restrict__ part,  // [rows, heads, splits, HD + 2]
                                T* __restrict__ out,             // [rows, heads·HD]
                                int heads, int hd, int splits) {
    const int row = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const float* pp = part + ((size_t)row * heads + h) * splits * (hd + 2);
    float mx = -INFINITY;
    for (int z = 0; z < splits; ++z) mx = fmaxf(mx, pp[z * (hd + 2) + hd]);
    float o = 0.0f, l = 0.0f;
    for (int z = 0; z < splits; ++z) {
        const float* pz = pp + z * (hd + 2);
        const float w = pz[hd] == -INFINITY ? 0.0f : exp2f(pz[hd] - mx);
        l += w * pz[hd + 1];
        if (d < hd) o += w * pz[d];
    }
    if (d < hd) out[(size_t)row * heads * hd + (size_t)h * hd + d] = from_f32<T>(o / l);
}

#define ATTENTION_MERGE(SUFFIX, T)                                                           \
    extern "C" __global__ void attention_merge_##SUFFIX(const float* part, T* out, int heads, \
                                                        int hd, int splits) {                 \
        attention_merge<T>(part, out, heads, hd, splits);                                    \
    }
ATTENTION_MERGE(bf16, __nv_bfloat16)
ATTENTION_MERGE(f16, __half)
