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
//   * a per-thread top-20 (sorted, in registers; a logit is inserted only when
//     it beats the thread's 20th), merged over the block by 20 rounds of
//     block-wide argmax;
//   * the target logit, read once by thread 0.
// Only 16 bytes per row are written. Logits are f32 (bf16 logits would cost
// ~0.06 nats of log-prob at |z| ≈ 20). CPU twin: `score::fused::row_stats`
// (policy row) and `row_logp` (reference row) in src/score/fused.rs.
//
// Launch: one block of FUSED_THREADS per row; rows padded to `ld` floats
// (ld % 4 == 0, so every row starts 16-byte aligned).
#include "common.cuh"

#define TOP_K 20
#define FUSED_THREADS 256

struct Online {
    float m;  // running max
    float s;  // Σ e^{z−m}
    float w;  // Σ e^{z−m}·(z − m) (policy only)
};

__device__ __forceinline__ void online_raise(Online& a, float m_new) {
    if (m_new > a.m) {
        if (a.s > 0.0f) {
            const float d = m_new - a.m, c = expf(-d);
            a.w = c * (a.w - d * a.s);
            a.s *= c;
        }
        a.m = m_new;
    }
}

template <bool W>
__device__ __forceinline__ void online_add(Online& a, float z) {
    const float t = z - a.m, e = expf(t);
    a.s += e;
    if (W) a.w = fmaf(e, t, a.w);
}

__device__ __forceinline__ Online online_merge(Online a, Online b) {
    const float mx = fmaxf(a.m, b.m);
    Online r{mx, 0.0f, 0.0f};
    if (a.s > 0.0f) {
        const float d = mx - a.m, c = expf(-d);
        r.s += c * a.s;
        r.w += c * (a.w - d * a.s);
    }
    if (b.s > 0.0f) {
        const float d = mx - b.m, c = expf(-d);
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

// Insert z into a descending list if it beats the last entry.
__device__ __forceinline__ void topk_push(float (&top)[TOP_K], float z) {
    if (z > top[TOP_K - 1]) {
#pragma unroll
        for (int i = 0; i < TOP_K; ++i) {
            if (z > top[i]) {
                const float t = top[i];
                top[i] = z;
                z = t;
            }
        }
    }
}

// One streaming pass over a row; TOPK also keeps the thread's top-20 (policy).
template <bool POLICY>
__device__ __forceinline__ Online scan_row(const float* __restrict__ row, int vocab,
                                           float (&top)[TOP_K]) {
    Online st{-INFINITY, 0.0f, 0.0f};
    const int n4 = vocab / 4;
#pragma unroll 2
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = load128_stream(row + 4 * (size_t)i);
        const float mx = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
        online_raise(st, mx);
        online_add<POLICY>(st, v.x);
        online_add<POLICY>(st, v.y);
        online_add<POLICY>(st, v.z);
        online_add<POLICY>(st, v.w);
        if (POLICY && mx > top[TOP_K - 1]) {
            topk_push(top, v.x);
            topk_push(top, v.y);
            topk_push(top, v.z);
            topk_push(top, v.w);
        }
    }
    for (int i = 4 * n4 + threadIdx.x; i < vocab; i += blockDim.x) {
        const float z = row[i];
        online_raise(st, z);
        online_add<POLICY>(st, z);
        if (POLICY) topk_push(top, z);
    }
    return st;
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS)
    fused_logprob(const float* __restrict__ logits_p,   // [n, ld] f32 policy logits
                  const float* __restrict__ logits_r,   // [n, ld] f32 reference logits
                  const uint32_t* __restrict__ target,  // [n] token whose log-prob is wanted
                  float4* __restrict__ out,             // [n] (logp_policy, logp_reference, entropy, top_mean)
                  int vocab, int ld) {
    __shared__ Online merge_scratch[32];
    __shared__ float top_v[32];
    __shared__ int top_t[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const size_t row = blockIdx.x;
    const float* zp = logits_p + row * ld;
    const float* zr = logits_r + row * ld;

    float top[TOP_K];
#pragma unroll
    for (int i = 0; i < TOP_K; ++i) top[i] = -INFINITY;

    const Online p = block_merge(scan_row<true>(zp, vocab, top), merge_scratch);
    const Online r = block_merge(scan_row<false>(zr, vocab, top), merge_scratch);

    // Top-20 of the block: 20 rounds, each popping the largest head.
    float top_sum = 0.0f;
    int top_n = 0;
    for (int k = 0; k < TOP_K; ++k) {
        float v = top[0];
        int t = threadIdx.x;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, v, o);
            const int ot = __shfl_xor_sync(FULL_MASK, t, o);
            if (ov > v || (ov == v && ot < t)) { v = ov; t = ot; }
        }
        if (lane == 0) { top_v[warp] = v; top_t[warp] = t; }
        __syncthreads();
        v = lane < warps ? top_v[lane] : -INFINITY;
        t = lane < warps ? top_t[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, v, o);
            const int ot = __shfl_xor_sync(FULL_MASK, t, o);
            if (ov > v || (ov == v && ot < t)) { v = ov; t = ot; }
        }
        __syncthreads();  // top_v / top_t are rewritten next round
        if (threadIdx.x == t) {
#pragma unroll
            for (int i = 0; i < TOP_K - 1; ++i) top[i] = top[i + 1];
            top[TOP_K - 1] = -INFINITY;
        }
        if (v > -INFINITY) {
            top_sum += v;
            ++top_n;
        }
    }

    if (threadIdx.x == 0) {
        const uint32_t tg = target[row];
        const float log_sp = logf(p.s);
        const float lse_p = p.m + log_sp;
        const float lse_r = r.m + logf(r.s);
        out[row] = make_float4(zp[tg] - lse_p, zr[tg] - lse_r, log_sp - p.w / p.s,
                               top_sum / (float)max(top_n, 1) - lse_p);
    }
}
