// lm_head_fold.cu — the LM head folded into the scorer: per-token scores
// straight from the final hidden states and the LM-head weights, with no
// logits in memory (Cut-Cross-Entropy's idea, extended to the entropy and
// the top-k).
//
// What is fused and why: the unfused path (cuBLAS GEMM → f32 logits →
// fused_logprob.cu) writes n × vocab × 4 bytes per model and reads them back
// (1.2 GB per model at 1024 rows of a 151,936-token vocabulary). Here each
// block computes logits 128 × 128 at a time with tensor cores (mma.sync
// m16n8k16, f32 accumulate, operands in the model's 16-bit dtype as cuBLAS
// reads them) and folds each tile, still in registers, into per-row running
// statistics: the online logsumexp (m, s = Σ e^{z−m}) and, for the policy,
// w = Σ e^{z−m}·(z − m) (the entropy) and a running top-k (self-certainty).
// The thread that computes a row's target logit stores it. Gemma's final
// soft-cap, z ← cap·tanh(z / cap), is applied to each logit first.
//
// Work split: grid (row tiles of FOLD_BM = 128 hidden rows, vocabulary
// splits). A block sweeps its split's columns in sub-tiles of FOLD_BN = 128;
// the host picks the split count so that the grid fills the device, and
// blocks of one split run together, so each weight sub-tile is read from
// HBM about once and served from L2 to every row tile. Per sub-tile the
// block runs the hidden dimension in FOLD_BK = 32-element steps through a
// FOLD_STAGES-deep cp.async pipeline (hidden and weight rows staged with 8
// elements of padding, so the ldmatrix row reads hit distinct banks).
// Four warps, 2 × 2, each own 64 rows × 64 columns of the sub-tile
// (128 f32 accumulators per thread: rows g, g + 8 of four 16-row tiles,
// columns 2c, 2c + 1 of eight 8-column tiles; g = lane / 4, c = lane % 4).
//
// Statistics per thread and row (no shuffles per sub-tile): each thread
// keeps its own online state for its 8 rows over its columns; the quad's
// four states and the two column halves' merge once, at the end.
//
// Top-k (policy only): each warp keeps a sorted TOP_K list per row of its
// column half in shared memory, and each thread a register copy of the
// list's smallest entry (the threshold) for its 8 rows. A sub-tile costs one
// comparison per logit and one warp vote unless some logit beats its row's
// threshold; each such logit is then inserted by the warp (ballot for its
// place, shift by shuffle), and the row's owners refresh their threshold.
// After the first sub-tile few logits qualify. The first sub-tile would
// insert nearly all of its 64 logits per row, so it filters with a lower
// bound of the row's 20th largest: each thread's 16 logits of the row fall
// into 5 groups, the smallest group maximum has 5 of the thread's logits at
// or above it, and the quad's smallest such value has ≥ 20.
//
// Output: slice partials in fused_logprob.cu's layout (the policy's launch
// writes m_p, s_p, w_p and the top-k, the reference's m_r and s_r) and each
// row's target logit; lm_head_fold_finish merges them per row. CPU twin:
// src/backend/cpu/lm_head.rs (the same statistics, tile by tile).
#include "common.cuh"
#include "mma.cuh"
#include "scoring.cuh"

#if !defined(FOLD_BM) || !defined(FOLD_BN) || !defined(FOLD_BK) || !defined(FOLD_STAGES) || \
    !defined(FOLD_THREADS) || !defined(FOLD_SMEM_BYTES)
#error "the FOLD_* constants are defined by build.rs from src/consts.rs"
#endif
static_assert(FOLD_BM == 128 && FOLD_BN == 128 && FOLD_THREADS == 128,
              "four warps, 2 × 2, of 64 rows × 64 columns");
static_assert(FOLD_BK % 16 == 0 && FOLD_STAGES >= 2, "whole k16 steps, a real pipeline");
#define FOLD_SSTR (FOLD_BK + 8)  // staged row stride, elements (16-byte multiple)
#define FOLD_CHUNKS (FOLD_BK / 8)  // 16-byte chunks per staged row

template <typename T>
struct FoldSmem {
    T a[FOLD_STAGES][FOLD_BM][FOLD_SSTR];  // hidden rows
    T b[FOLD_STAGES][FOLD_BN][FOLD_SSTR];  // LM-head rows (vocabulary entries)
    float tops[2][FOLD_BM][TOP_K];         // per column half and row, descending
    float stats[2][FOLD_BM][3];            // per column half and row: m, s, w
    int tgt[FOLD_BM];                      // the rows' targets (−1 past n)
};
static_assert(sizeof(FoldSmem<__nv_bfloat16>) == FOLD_SMEM_BYTES,
              "the host sizes the dynamic shared memory from FOLD_SMEM_BYTES");

template <typename T, bool POLICY>
__device__ void lm_head_fold(const T* __restrict__ hid,           // [n, d] final hidden states
                             const T* __restrict__ w,             // [vocab, d] LM head
                             const uint32_t* __restrict__ target, // [n] (< vocab)
                             Partial* __restrict__ part,          // [n, splits]
                             float* __restrict__ target_logit,    // [n]
                             int n, int d, int vocab, int per_split, float softcap) {
    extern __shared__ __align__(16) unsigned char fold_raw[];
    FoldSmem<T>& sm = *reinterpret_cast<FoldSmem<T>*>(fold_raw);
    T* const tag = nullptr;  // selects the dtype's mma16816

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp & 1, wn = warp >> 1;  // row half, column half
    const int g = lane >> 2, c = lane & 3;
    const int row0 = blockIdx.x * FOLD_BM;
    const int split = blockIdx.y, splits = gridDim.y;
    const int vbeg = min(vocab, split * per_split), vend = min(vocab, vbeg + per_split);
    const int nsub = (vend - vbeg + FOLD_BN - 1) / FOLD_BN;
    const int kt = (d + FOLD_BK - 1) / FOLD_BK;
    const int total = nsub * kt;

    for (int i = tid; i < FOLD_BM; i += FOLD_THREADS)
        sm.tgt[i] = row0 + i < n ? (int)target[row0 + i] : -1;
    if (POLICY) {  // rows past n: +inf, so that no logit beats their threshold
        float* t = &sm.tops[0][0][0];
        for (int i = tid; i < 2 * FOLD_BM * TOP_K; i += FOLD_THREADS)
            t[i] = row0 + (i / TOP_K) % FOLD_BM < n ? -INFINITY : INFINITY;
    }

    // Step `it` (sub-tile it / kt, k-step it % kt) into stage it % FOLD_STAGES;
    // rows past n or past the split and columns past d read as zeros. Every
    // call commits a group (empty past the end), so the waits count alike.
    auto load = [&](int it) {
        if (it < total) {
            const int st = it % FOLD_STAGES;
            const int v0 = vbeg + (it / kt) * FOLD_BN, k0 = (it % kt) * FOLD_BK;
#pragma unroll
            for (int i = 0; i < FOLD_BM * FOLD_CHUNKS / FOLD_THREADS; ++i) {
                const int e = tid + i * FOLD_THREADS;
                const int r = e / FOLD_CHUNKS, k = (e % FOLD_CHUNKS) * 8;
                const bool kin = k0 + k < d;
                const bool ain = kin && row0 + r < n, bin = kin && v0 + r < vend;
                cp_async16(&sm.a[st][r][k], ain ? hid + (size_t)(row0 + r) * d + k0 + k : hid,
                           ain ? 16 : 0);
                cp_async16(&sm.b[st][r][k], bin ? w + (size_t)(v0 + r) * d + k0 + k : w,
                           bin ? 16 : 0);
            }
        }
        cp_async_commit();
    };

    // This thread's 8 rows: slot i = 2·mt + h is row wm·64 + mt·16 + g + 8h.
    // A row's threshold is the last entry of its list (−inf while the list
    // is not full).
    Online st[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) st[i] = Online{-INFINITY, 0.0f, 0.0f};
    const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
    float acc[4][8][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

    // ldmatrix row addresses: A matrices (rows 0–7, 8–15) × (k 0–7, 8–15);
    // B matrices (k 0–7, 8–15) × (n 0–7, 8–15): two n-tiles per x4.
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
    const int b_row = (lane & 7) + (lane >> 4) * 8, b_col = ((lane >> 3) & 1) * 8;

#pragma unroll
    for (int s = 0; s < FOLD_STAGES - 1; ++s) load(s);
    for (int it = 0; it < total; ++it) {
        cp_async_wait<FOLD_STAGES - 2>();
        __syncthreads();  // step it is staged; step it − 1's stage is free
        load(it + FOLD_STAGES - 1);
        const int stg = it % FOLD_STAGES;
#pragma unroll
        for (int ks = 0; ks < FOLD_BK / 16; ++ks) {
            uint32_t a[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
                ldmatrix_x4(a[mt], &sm.a[stg][wm * 64 + mt * 16 + a_row][ks * 16 + a_col]);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, &sm.b[stg][wn * 64 + np * 16 + b_row][ks * 16 + b_col]);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) {
                    mma16816(acc[mt][2 * np], a[mt], b[0], b[1], tag);
                    mma16816(acc[mt][2 * np + 1], a[mt], b[2], b[3], tag);
                }
            }
        }
        if (it % kt != kt - 1) continue;

        // ---- Epilogue of sub-tile j: fold 64 rows × 64 columns per warp. ----
        const int j = it / kt;
        const int v0 = vbeg + j * FOLD_BN + wn * 64;  // this warp's first column
        const bool full = v0 + 64 <= vend;            // warp-uniform
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int mt = i >> 1, h = i & 1;
            const int lr = wm * 64 + mt * 16 + g + 8 * h;  // this thread's row
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float z = acc[mt][nt][2 * h + e];
                    if (softcap > 0.0f) z = softcap * tanhf(z * inv_cap);
                    if (!full && v0 + nt * 8 + 2 * c + e >= vend) z = -INFINITY;
                    acc[mt][nt][2 * h + e] = z;
                    mx = fmaxf(mx, z);
                }
            online_raise(st[i], mx);
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float z = acc[mt][nt][2 * h + e];
                    if (full || z > -INFINITY) online_add<POLICY>(st[i], z);
                }
            // The target logit, if this thread holds it: column v0 + 8nt + 2c + e.
            const int tg = sm.tgt[lr], tt = tg - v0 - 2 * c;
            if (tg >= 0 && tg < vend && tt >= 0 && tt < 64) {
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        if (tt == nt * 8 + e) target_logit[row0 + lr] = acc[mt][nt][2 * h + e];
            }
            if (!POLICY || !__any_sync(FULL_MASK, mx > sm.tops[wn][lr][TOP_K - 1])) continue;

            // Top-k: the first sub-tile's filter is a lower bound of the row's
            // TOP_K-th largest (see the header); later ones: the threshold.
            float lo = -INFINITY;
            if (j == 0) {
                float gmax[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
                for (int q = 0; q < 16; ++q) {
                    const int grp = q < 4 ? 0 : (q - 1) / 3;  // 4, 3, 3, 3, 3 logits
                    gmax[grp] = fmaxf(gmax[grp], acc[mt][q >> 1][2 * h + (q & 1)]);
                }
                lo = fminf(fminf(fminf(gmax[0], gmax[1]), fminf(gmax[2], gmax[3])), gmax[4]);
                lo = fminf(lo, __shfl_xor_sync(FULL_MASK, lo, 1));
                lo = fminf(lo, __shfl_xor_sync(FULL_MASK, lo, 2));
                // 4 lanes × 5 logits ≥ lo: at least TOP_K of them.
                static_assert(TOP_K <= 20, "the first-tile bound counts 5 logits per lane");
            }
            const float* list = sm.tops[wn][lr];
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float z = acc[mt][nt][2 * h + e];
                    unsigned want = __ballot_sync(FULL_MASK, z >= lo && z > list[TOP_K - 1]);
                    while (want) {  // warp-uniform
                        const int src = __ffs(want) - 1;
                        want &= want - 1;
                        const float x = __shfl_sync(FULL_MASK, z, src);
                        float* row_list = sm.tops[wn][wm * 64 + mt * 16 + (src >> 2) + 8 * h];
                        const float cur = lane < TOP_K ? row_list[lane] : -INFINITY;
                        if (x > __shfl_sync(FULL_MASK, cur, TOP_K - 1)) {  // warp-uniform
                            const int pos =
                                __popc(__ballot_sync(FULL_MASK, lane < TOP_K && cur >= x));
                            const float up = __shfl_up_sync(FULL_MASK, cur, 1);
                            if (lane < TOP_K && lane >= pos) row_list[lane] = lane == pos ? x : up;
                        }
                        __syncwarp();
                    }
                }
        }
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
                acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    }
    cp_async_wait<0>();

    // The quad's states, then the two column halves', per row.
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1)
            st[i] = online_merge(st[i], Online{__shfl_xor_sync(FULL_MASK, st[i].m, o),
                                               __shfl_xor_sync(FULL_MASK, st[i].s, o),
                                               __shfl_xor_sync(FULL_MASK, st[i].w, o)});
        if (c == 0) {
            float* s3 = sm.stats[wn][wm * 64 + (i >> 1) * 16 + g + 8 * (i & 1)];
            s3[0] = st[i].m;
            s3[1] = st[i].s;
            s3[2] = st[i].w;
        }
    }
    __syncthreads();
    {
        const int lr = tid, row = row0 + lr;  // FOLD_THREADS == FOLD_BM: a row each
        const float* x = sm.stats[0][lr];
        const float* y = sm.stats[1][lr];
        const Online s = online_merge(Online{x[0], x[1], x[2]}, Online{y[0], y[1], y[2]});
        if (row < n) {
            Partial& p = part[(size_t)row * splits + split];
            if (POLICY) {
                p.m_p = s.m;
                p.s_p = s.s;
                p.w_p = s.w;
            } else {
                p.m_r = s.m;
                p.s_r = s.s;
            }
        }
    }
    if (POLICY) {
        // Each row's top-k of its two halves' lists; warp w takes rows w, w + 4, ….
        for (int lr = warp; lr < FOLD_BM; lr += FOLD_THREADS / 32) {
            const int row = row0 + lr;
            if (row >= n) break;  // warp-uniform; later rows are past n too
            float mine = -INFINITY, t = -INFINITY;
#pragma unroll
            for (int k = 0; k < 2 * TOP_K; k += 32) {
                const int i = k + lane;
                warp_top_offer(mine, t, i < TOP_K       ? sm.tops[0][lr][i]
                                        : i < 2 * TOP_K ? sm.tops[1][lr][i - TOP_K]
                                                        : -INFINITY);
            }
            if (lane < TOP_K) part[(size_t)row * splits + split].top[lane] = mine;
        }
    }
}

#define LM_HEAD_FOLD(SUFFIX, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(FOLD_THREADS, 2) lm_head_fold_policy_##SUFFIX(  \
        const T* hid, const T* w, const uint32_t* target, Partial* part, float* target_logit,   \
        int n, int d, int vocab, int per_split, float softcap) {                                \
        lm_head_fold<T, true>(hid, w, target, part, target_logit, n, d, vocab, per_split,       \
                              softcap);                                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOLD_THREADS, 2) lm_head_fold_reference_##SUFFIX( \
        const T* hid, const T* w, const uint32_t* target, Partial* part, float* target_logit,   \
        int n, int d, int vocab, int per_split, float softcap) {                                \
        lm_head_fold<T, false>(hid, w, target, part, target_logit, n, d, vocab, per_split,      \
                               softcap);                                                        \
    }
LM_HEAD_FOLD(bf16, __nv_bfloat16)
LM_HEAD_FOLD(f16, __half)

// One warp per row: merge the row's split partials (as fused_logprob_finish)
// and write its four scores; the target logits come from the fold launches.
// Without `has_policy` (the reference alone) the policy's columns repeat the
// reference's and are to be ignored.
extern "C" __global__ void __launch_bounds__(FUSED_THREADS)
    lm_head_fold_finish(const float* __restrict__ target_p,  // [n] the policy's target logits
                        const float* __restrict__ target_r,  // [n] the reference's
                        const Partial* __restrict__ part,    // [n, splits], splits ≤ 32
                        float4* __restrict__ out,            // [n]
                        int n, int splits, int has_policy) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (size_t)n) return;  // warp-uniform
    Online p, r;
    float top_sum;
    int top_n;
    merge_partials(part + row * splits, splits, has_policy != 0, p, r, top_sum, top_n);
    if (threadIdx.x % 32 == 0) {
        const float zr = target_r[row];
        out[row] = finish_scores(p, r, top_sum, top_n, has_policy ? target_p[row] : zr, zr);
    }
}
