// scoring.cuh — the streaming statistics both scorers fold logits into
// (fused_logprob.cu over logits in memory, lm_head_fold.cu over logits
// computed in registers): the online logsumexp / entropy state, a warp's
// running top-k, and the per-slice `Partial` the finishing kernels merge.
#pragma once

#include "common.cuh"

#if !defined(TOP_K) || !defined(FUSED_PARTIAL_FLOATS)
#error "TOP_K and FUSED_PARTIAL_FLOATS are defined by build.rs from src/consts.rs"
#endif

// One slice's state, written by fused_logprob_partial (FUSED_PARTIAL_FLOATS floats).
struct __align__(16) Partial {
    float m_p, s_p, w_p, m_r, s_r, pad[3];
    float top[TOP_K];  // descending; −inf where the slice had fewer
    float pad2[FUSED_PARTIAL_FLOATS - 8 - TOP_K];
};
static_assert(sizeof(Partial) == FUSED_PARTIAL_FLOATS * sizeof(float),
              "the host allocates FUSED_PARTIAL_FLOATS floats per partial");
static_assert(TOP_K <= 32, "a warp holds the running top-k, one value per lane");

// Gemma's final logit soft-cap, cap·tanh(z / cap); cap ≤ 0: none.
__device__ __forceinline__ float softcap(float z, float cap) {
    return cap > 0.0f ? cap * tanhf(z / cap) : z;
}

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


// Merge one row's `splits` slice partials (splits ≤ 32) across a warp: the
// policy's and the reference's online states and the sum and count of the
// policy's top-k. Every lane gets the result. Without `has_policy` (the
// reference alone) the policy's fields are not read: p is r and there is no
// top-k.
__device__ __forceinline__ void merge_partials(const Partial* __restrict__ parts, int splits,
                                               bool has_policy, Online& p, Online& r,
                                               float& top_sum, int& top_n) {
    const int lane = threadIdx.x % 32;
    p = Online{-INFINITY, 0.0f, 0.0f};
    r = Online{-INFINITY, 0.0f, 0.0f};
    if (lane < splits) {
        const Partial& q = parts[lane];
        if (has_policy) p = Online{q.m_p, q.s_p, q.w_p};
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
    // Top-k of the splits × TOP_K candidates.
    float mine = -INFINITY, thr = -INFINITY;
    const int cands = has_policy ? splits * TOP_K : 0;
    for (int i = lane; i < ((cands + 31) & ~31); i += 32)
        warp_top_offer(mine, thr, i < cands ? parts[i / TOP_K].top[i % TOP_K] : -INFINITY);
    if (!has_policy) p = r;
    const bool has = lane < TOP_K && mine > -INFINITY;
    top_sum = warp_sum(has ? mine : 0.0f);
    top_n = __popc(__ballot_sync(FULL_MASK, has));
}

// The four scores of a row from its merged states and its two target
// logits: (log π_θ(x), log π_ref(x), the policy's entropy, the mean of its
// top-k log-probs).
__device__ __forceinline__ float4 finish_scores(Online p, Online r, float top_sum, int top_n,
                                                float z_p, float z_r) {
    const float log_sp = logf(p.s);
    const float lse_p = p.m + log_sp;
    const float lse_r = r.m + logf(r.s);
    return make_float4(z_p - lse_p, z_r - lse_r, log_sp - p.w / p.s,
                       top_sum / (float)max(top_n, 1) - lse_p);
}
