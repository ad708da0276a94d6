// fused_logprob.cu — the per-token scores of a policy/reference pair from
// their logits, in one pass over each row.
//
// What is fused and why: scoring needs, per scored position, log π_θ(x_t),
// log π_ref(x_t), the policy's entropy and the mean of its top-20 log-probs
// (self-certainty). A framework computes log_softmax over [T, vocab] for each
// model (written, then re-read by gather, entropy and topk: ~6 passes over
// 600 KB rows for a 152k vocabulary). Here one block owns one row pair and
// reads each logit exactly once with 16-byte streaming loads, keeping only
// running statistics in registers:
//   * online logsumexp per thread: running max m, s = Σ e^{z−m}, and for the
//     policy w = Σ e^{z−m}·(z − m), all rescaled when m grows
//     (s ← s·c, w ← c·(w − δ·s), c = e^{−δ}, δ = m_new − m_old); then
//     lse = m + log s and entropy H = lse − E[z] = log s − w/s. Accumulating
//     z − m instead of z keeps every term ≤ 0, so nothing cancels;
//   * a per-warp top-20, spread over lanes 0..19 in descending order; a
//     float4 costs one warp vote unless some lane holds a value above the
//     warp's 20th, and then each such value is inserted with one ballot and
//     one shuffle (per-thread sorted lists were tried first: their divergent
//     insertions cost as much as the memory traffic). The warps' lists merge
//     through shared memory;
//   * the target logit, read once per row by the finishing warp.
// Exponentials use __expf (ex2.approx: ~2 ulp, plus |x|·2⁻²⁴ relative from
// the scaling, negligible on terms e^x that matter); the CPU twin uses its
// own fast exp. Only 16 bytes per row are written. Logits are f32 (bf16 logits would cost
// ~0.06 nats of log-prob at |z| ≈ 20). With `cap` > 0 (Gemma's final
// soft-cap) every logit is read as cap·tanh(z / cap) (tanhf: the accurate
// one, as transformers'), which costs no memory traffic. CPU twin: `score::fused::row_stats`
// (policy row) and `row_logp` (reference row) in src/score/fused.rs.
//
// Work split: one block per row would leave the last wave of a long
// memory-bound launch mostly idle (1024 rows fill ~1.5 waves of an H200), so
// each row pair is cut into `splits` slices of whole float4s:
//   * fused_logprob_partial, grid (rows, splits), FUSED_THREADS threads: one
//     slice of both rows → a Partial (policy m/s/w, reference m/s, the
//     slice's top-20), 128 bytes;
//   * fused_logprob_finish, one warp per row: merges the row's partials
//     (online-softmax merge, top-20 of splits×20 candidates), reads the two
//     target logits and writes the 16-byte result.
// Each thread keeps FUSED_UNROLL 16-byte loads in flight. Rows are padded to
// `ld` floats (ld % 4 == 0, so every row starts 16-byte aligned).
#include "common.cuh"
#include "scoring.cuh"

// TOP_K, FUSED_THREADS and FUSED_PARTIAL_FLOATS come from src/consts.rs
// (build.rs passes -D); the host launches and allocates from the same values.
#if !defined(TOP_K) || !defined(FUSED_THREADS) || !defined(FUSED_PARTIAL_FLOATS)
#error "TOP_K, FUSED_THREADS and FUSED_PARTIAL_FLOATS are defined by build.rs from src/consts.rs"
#endif
#define FUSED_UNROLL 4

// One streaming pass over float4s [b4, e4) of a row (plus the scalar tail
// [t0, vocab) when t0 < vocab, fewer than 4 values). Loop bounds are
// block-uniform (lanes past the end carry "no value"), so the warp votes of
// POLICY's top-20 always see the full warp.
template <bool POLICY>
__device__ __forceinline__ Online scan_row(const float* __restrict__ row, int b4, int e4, int t0,
                                           int vocab, float cap, float& mine, float& thr) {
    Online st{-INFINITY, 0.0f, 0.0f};
    auto take = [&](const float4 v, int valid) {  // the first `valid` components are values
        const float z[4] = {softcap(v.x, cap), softcap(v.y, cap), softcap(v.z, cap), softcap(v.w, cap)};
        if (valid == 4) {
            online_raise(st, fmaxf(fmaxf(z[0], z[1]), fmaxf(z[2], z[3])));
#pragma unroll
            for (int k = 0; k < 4; ++k) online_add<POLICY>(st, z[k]);
        } else {
            for (int k = 0; k < valid; ++k) {
                online_raise(st, z[k]);
                online_add<POLICY>(st, z[k]);
            }
        }
        if (POLICY) {
            float c[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) c[k] = k < valid ? z[k] : -INFINITY;
            const float mx = fmaxf(fmaxf(c[0], c[1]), fmaxf(c[2], c[3]));
            if (__any_sync(FULL_MASK, mx > thr)) {
#pragma unroll
                for (int k = 0; k < 4; ++k) warp_top_offer(mine, thr, c[k]);
            }
        }
    };
    const int step = blockDim.x;
    const float4 none = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    // FUSED_UNROLL independent loads issued before any of them is used.
    for (int i0 = b4; i0 < e4; i0 += FUSED_UNROLL * step) {
        float4 v[FUSED_UNROLL];
#pragma unroll
        for (int u = 0; u < FUSED_UNROLL; ++u) {
            const int i = i0 + u * step + threadIdx.x;
            v[u] = i < e4 ? load128_stream(row + 4 * (size_t)i) : none;
        }
#pragma unroll
        for (int u = 0; u < FUSED_UNROLL; ++u) take(v[u], i0 + u * step + threadIdx.x < e4 ? 4 : 0);
    }
    if (t0 < vocab) {  // block-uniform; vocab − t0 < 4 ≤ blockDim.x
        const int k = t0 + threadIdx.x;
        take(make_float4(k < vocab ? row[k] : -INFINITY, 0, 0, 0), k < vocab ? 1 : 0);
    }
    return st;
}

// Merge the warps' top-20 lists (in `cand`, TOP_K per warp) into warp 0's.
__device__ __forceinline__ void block_top(float& mine, float& thr, float* cand /* [32·TOP_K] */) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    __syncthreads();
    if (lane < TOP_K) cand[warp * TOP_K + lane] = mine;
    __syncthreads();
    if (warp == 0) {
        mine = -INFINITY;
        thr = -INFINITY;
        for (int i = lane; i < ((warps * TOP_K + 31) & ~31); i += 32)
            warp_top_offer(mine, thr, i < warps * TOP_K ? cand[i] : -INFINITY);
    }
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS)
    fused_logprob_partial(const float* __restrict__ logits_p,  // [n, ld] f32 policy logits
                          const float* __restrict__ logits_r,  // [n, ld] f32 reference logits
                          Partial* __restrict__ part,          // [n, splits]
                          int vocab, int ld, float cap) {
    __shared__ Online merge_scratch[32];
    __shared__ float cand[32 * TOP_K];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t row = blockIdx.x;
    const int split = blockIdx.y, splits = gridDim.y;
    const int n4 = vocab / 4, per = (n4 + splits - 1) / splits;
    const int b4 = min(n4, split * per), e4 = min(n4, b4 + per);
    const int t0 = split == splits - 1 ? 4 * n4 : vocab;  // the last slice takes the tail
    const float* zp = logits_p + row * ld;
    const float* zr = logits_r + row * ld;

    float mine = -INFINITY, thr = -INFINITY;
    const Online p = block_merge(scan_row<true>(zp, b4, e4, t0, vocab, cap, mine, thr), merge_scratch);
    const Online r = block_merge(scan_row<false>(zr, b4, e4, t0, vocab, cap, mine, thr), merge_scratch);
    block_top(mine, thr, cand);

    Partial* out = part + row * splits + split;
    if (warp == 0 && lane < TOP_K) out->top[lane] = mine;
    if (threadIdx.x == 0) {
        out->m_p = p.m;
        out->s_p = p.s;
        out->w_p = p.w;
        out->m_r = r.m;
        out->s_r = r.s;
    }
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS)
    fused_logprob_finish(const float* __restrict__ logits_p,  // [n, ld]
                         const float* __restrict__ logits_r,  // [n, ld]
                         const uint32_t* __restrict__ target, // [n] token whose log-prob is wanted
                         const Partial* __restrict__ part,    // [n, splits], splits ≤ 32
                         float4* __restrict__ out,            // [n] (logp_policy, logp_reference, entropy, top_mean)
                         int n, int splits, int ld, float cap) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (size_t)n) return;  // warp-uniform
    Online p, r;
    float top_sum;
    int top_n;
    merge_partials(part + row * splits, splits, true, p, r, top_sum, top_n);
    if (threadIdx.x % 32 == 0) {
        const uint32_t tg = target[row];
        out[row] = finish_scores(p, r, top_sum, top_n, softcap(logits_p[row * ld + tg], cap),
                                 softcap(logits_r[row * ld + tg], cap));
    }
}
