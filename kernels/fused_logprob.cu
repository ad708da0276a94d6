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
// ~0.06 nats of log-prob at |z| ≈ 20). CPU twin: `score::fused::row_stats`
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

// TOP_K, FUSED_THREADS and FUSED_PARTIAL_FLOATS come from src/consts.rs
// (build.rs passes -D); the host launches and allocates from the same values.
#if !defined(TOP_K) || !defined(FUSED_THREADS) || !defined(FUSED_PARTIAL_FLOATS)
#error "TOP_K, FUSED_THREADS and FUSED_PARTIAL_FLOATS are defined by build.rs from src/consts.rs"
#endif
#define FUSED_UNROLL 4

// One slice's state, written by fused_logprob_partial (FUSED_PARTIAL_FLOATS floats).
struct __align__(16) Partial {
    float m_p, s_p, w_p, m_r, s_r, pad[3];
    float top[TOP_K];  // descending; −inf where the slice had fewer
    float pad2[FUSED_PARTIAL_FLOATS - 8 - TOP_K];
};
static_assert(sizeof(Partial) == FUSED_PARTIAL_FLOATS * sizeof(float),
              "the host allocates FUSED_PARTIAL_FLOATS floats per partial");
static_assert(TOP_K <= 32, "a warp holds the running top-k, one value per lane");

struct Online {
    float m;  // running max
    float s;  // Σ e^{z−m}
    float w;  // Σ e^{z−m}·(z − m) (policy only)
};

__device__ __forceinline__ void online_raise(Online& a, float m_new) {
    if (m_new > a.m) {
        if (a.s > 0.0f) {
            const float d = m_new - a.m, c = __expf(-d);
            a.w = c * (a.w - d * a.s);
            a.s *= c;
        }
        a.m = m_new;
    }
}

template <bool W>
__device__ __forceinline__ void online_add(Online& a, float z) {
    const float t = z - a.m, e = __expf(t);
    a.s += e;
    if (W) a.w = fmaf(e, t, a.w);
}

__device__ __forceinline__ Online online_merge(Online a, Online b) {
    const float mx = fmaxf(a.m, b.m);
    Online r{mx, 0.0f, 0.0f};
    if (a.s > 0.0f) {
        const float d = mx - a.m, c = __expf(-d);
        r.s += c * a.s;
        r.w += c * (a.w - d * a.s);
    }
    if (b.s > 0.0f) {
        const float d = mx - b.m, c = __expf(-d);
        r.s += c * b.s;
        r.w += c * (b.w - d * b.s);
    }
    return r;
}

// Merge the block's states; every thread gets the result.
__device__ Online block_merge(Online a, Online* scratch /* [32] */) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Online b{__shfl_xor_sync(FULL_MASK, a.m, o), __shfl_xor_sync(FULL_MASK, a.s, o),
                 __shfl_xor_sync(FULL_MASK, a.w, o)};
        a = online_merge(a, b);
    }
    __syncthreads();
    if (lane == 0) scratch[warp] = a;
    __syncthreads();
    a = lane < warps ? scratch[lane] : Online{-INFINITY, 0.0f, 0.0f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Online b{__shfl_xor_sync(FULL_MASK, a.m, o), __shfl_xor_sync(FULL_MASK, a.s, o),
                 __shfl_xor_sync(FULL_MASK, a.w, o)};
        a = online_merge(a, b);
    }
    return a;
}

// A warp's running top-20, distributed: lane i < TOP_K holds the i-th largest
// value so far (descending; −inf while fewer), lanes ≥ TOP_K hold −inf, and
// `thr` (warp-uniform) is lane TOP_K−1's value. Every lane offers one
// candidate; only candidates above `thr` cost more than the vote, and after
// the first few hundred values of a row those are rare.
__device__ __forceinline__ void warp_top_offer(float& mine, float& thr, float z) {
    const int lane = threadIdx.x % 32;
    unsigned want = __ballot_sync(FULL_MASK, z > thr);
    while (want) {  // warp-uniform
        const int src = __ffs(want) - 1;
        want &= want - 1;
        const float x = __shfl_sync(FULL_MASK, z, src);
        if (x > thr) {  // warp-uniform: x and thr are
            const int pos = __popc(__ballot_sync(FULL_MASK, lane < TOP_K && mine >= x));
            const float up = __shfl_up_sync(FULL_MASK, mine, 1);
            if (lane < TOP_K && lane >= pos) mine = lane == pos ? x : up;
            thr = __shfl_sync(FULL_MASK, mine, TOP_K - 1);
        }
    }
}

// One streaming pass over float4s [b4, e4) of a row (plus the scalar tail
// [t0, vocab) when t0 < vocab, fewer than 4 values). Loop bounds are
// block-uniform (lanes past the end carry "no value"), so the warp votes of
// POLICY's top-20 always see the full warp.
template <bool POLICY>
__device__ __forceinline__ Online scan_row(const float* __restrict__ row, int b4, int e4, int t0,
                                           int vocab, float& mine, float& thr) {
    Online st{-INFINITY, 0.0f, 0.0f};
    auto take = [&](const float4 v, int valid) {  // the first `valid` components are values
        const float z[4] = {v.x, v.y, v.z, v.w};
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
                          int vocab, int ld) {
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
    const Online p = block_merge(scan_row<true>(zp, b4, e4, t0, vocab, mine, thr), merge_scratch);
    const Online r = block_merge(scan_row<false>(zr, b4, e4, t0, vocab, mine, thr), merge_scratch);
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
                         int n, int splits, int ld) {
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (size_t)n) return;  // warp-uniform
    Online p{-INFINITY, 0.0f, 0.0f}, r{-INFINITY, 0.0f, 0.0f};
    const Partial* mine_part = part + row * splits;
    if (lane < splits) {
        const Partial& q = mine_part[lane];
        p = Online{q.m_p, q.s_p, q.w_p};
        r = Online{q.m_r, q.s_r, 0.0f};
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        p = online_merge(p, Online{__shfl_xor_sync(FULL_MASK, p.m, o),
                                   __shfl_xor_sync(FULL_MASK, p.s, o),
                                   __shfl_xor_sync(FULL_MASK, p.w, o)});
        r = online_merge(r, Online{__shfl_xor_sync(FULL_MASK, r.m, o),
                                   __shfl_xor_sync(FULL_MASK, r.s, o), 0.0f});
    }
    // Top-20 of the splits × 20 candidates.
    float mine = -INFINITY, thr = -INFINITY;
    const int cands = splits * TOP_K;
    for (int i = lane; i < ((cands + 31) & ~31); i += 32)
        warp_top_offer(mine, thr, i < cands ? mine_part[i / TOP_K].top[i % TOP_K] : -INFINITY);
    const bool has = lane < TOP_K && mine > -INFINITY;
    const float top_sum = warp_sum(has ? mine : 0.0f);
    const int top_n = __popc(__ballot_sync(FULL_MASK, has));
    if (lane == 0) {
        const uint32_t tg = target[row];
        const float log_sp = logf(p.s);
        const float lse_p = p.m + log_sp;
        const float lse_r = r.m + logf(r.s);
        out[row] = make_float4(logits_p[row * ld + tg] - lse_p, logits_r[row * ld + tg] - lse_r,
                               log_sp - p.w / p.s, top_sum / (float)max(top_n, 1) - lse_p);
    }
}
