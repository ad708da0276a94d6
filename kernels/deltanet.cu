// deltanet.cu — the gated-DeltaNet mixer's steps between its input GEMMs
// and its output GEMM (Qwen 3.5's `linear_attn`), over packed sequences,
// in transformers' order of operations. CPU twin: src/backend/cpu/deltanet.rs
// (and `delta_rule::recurrent` for the recurrence).
//
//   x [n, cd] (in_proj_qkv, f32)  ──deltanet_conv──►  mixed [n, cd]
//     causal depthwise convolution per channel over each sequence (zero
//     left padding, or the cached prefix's tail of kernel − 1 rows), SiLU;
//   mixed, b, a  ──deltanet_prep──►  q/k L2-normalised per key head
//     (x · rsqrt(Σx² + 1e-6)), q · 1/√dk; β = sigmoid(b),
//     g = −exp(A_log) · softplus(a + dt_bias) (in place);
//   ──gated_delta_rule──►  o [n, v_heads·dv]: per (sequence, value head)
//     the recurrence S ← e^g S; S ← S + k (β (v − Sᵀk))ᵀ; o = Sᵀq, from the
//     zero state or a cached one, value head j reading key head
//     j / (v_heads / k_heads); the state after chosen rows (the last token
//     of each prefix-cache block the wave fills) into the cache's snapshots;
//   o, z  ──gated_rmsnorm_silu──►  RMSNorm per value head (plain weight)
//     times silu(z), in the weights' dtype for out_proj.
//
// The recurrence runs token by token (the CPU runs it in 64-token chunks:
// the same sums in another order). The columns of a head's state S [dk,
// dv] evolve independently, so they are split over blocks of at least 128
// threads where dv allows; a block holds its columns in registers (per
// (sequence, value head, column range)): thread (j, p) owns column j and
// rows p·RPT … p·RPT + RPT − 1, the P = dk / RPT threads of a column are
// adjacent lanes and reduce Sᵀk and Sᵀq by shuffles; q, k, v, g, β of the
// token are staged in shared memory (double-buffered: the next token's
// loads are in flight during this one's compute). Per token a thread does
// 3·RPT FMAs.
#include "common.cuh"

#define DN_L2_EPS 1e-6f

__device__ __forceinline__ float dn_silu(float x) { return x / (1.0f + expf(-x)); }

// Launch: grid (n, ceil(cd / 256)), 256 threads.
extern "C" __global__ void deltanet_conv(const float* __restrict__ x,        // [n, cd]
                                         const float* __restrict__ w_t,      // [K, cd]
                                         const float* __restrict__ tails,    // [seqs, K − 1, cd], or null
                                         const int32_t* __restrict__ seq_start,  // [seqs + 1]
                                         const int32_t* __restrict__ row_seq,    // [n]
                                         float* __restrict__ out,            // [n, cd]
                                         int cd, int K) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    const int row = blockIdx.x, s = row_seq[row], first = seq_start[s], local = row - first;
    float o = 0.0f;
    for (int j = 0; j < K; ++j) {
        const int src = local + j - (K - 1);  // this sequence's row, < 0: the tail
        float v;
        if (src >= 0)
            v = x[(size_t)(first + src) * cd + c];
        else
            v = tails ? tails[((size_t)s * (K - 1) + (src + K - 1)) * cd + c] : 0.0f;
        o += w_t[(size_t)j * cd + c] * v;
    }
    out[(size_t)row * cd + c] = dn_silu(o);
}

// Launch: one block per row, 128 threads.
extern "C" __global__ void deltanet_prep(float* __restrict__ mixed,          // [n, cd], q and k in place
                                         float* __restrict__ b,              // [n, vh]: b → β
                                         float* __restrict__ a,              // [n, vh]: a → g
                                         const float* __restrict__ a_log,    // [vh]
                                         const float* __restrict__ dt_bias,  // [vh]
                                         int cd, int k_heads, int v_heads, int dk, float q_scale) {
    const size_t row = blockIdx.x;
    float* m = mixed + row * cd;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int h = warp; h < 2 * k_heads; h += warps) {  // q heads, then k heads
        float* v = m + (size_t)h * dk;
        float ss = 0.0f;
        for (int d = lane; d < dk; d += 32) ss += v[d] * v[d];
        ss = warp_sum(ss);
        const float inv = 1.0f / sqrtf(ss + DN_L2_EPS), f = h < k_heads ? q_scale : 1.0f;
        for (int d = lane; d < dk; d += 32) v[d] = v[d] * inv * f;
    }
    for (int j = threadIdx.x; j < v_heads; j += blockDim.x) {
        float* bj = b + row * v_heads + j;
        float* aj = a + row * v_heads + j;
        *bj = 1.0f / (1.0f + expf(-*bj));
        const float x = *aj + dt_bias[j];
        const float sp = x > 20.0f ? x : log1pf(expf(x));  // torch's softplus (threshold 20)
        *aj = -expf(a_log[j]) * sp;
    }
}

// One token's q, k (each dk, padded by one float per RPT rows so that the P
// row groups of a warp read distinct banks), v (dv), g and β, staged in
// shared memory: DN_STAGE floats.
#define DN_STAGE(dk, dv, RPT) (2 * ((dk) + (dk) / (RPT)) + (dv) + 2)
// DN_PREFETCH (most values one thread prefetches per token; the launcher
// checks 2·dk + dv + 2 ≤ DN_PREFETCH · threads) and DN_MAX_THREADS (the
// launch bounds) come from src/consts.rs.
#if !defined(DN_PREFETCH) || !defined(DN_MAX_THREADS)
#error "DN_PREFETCH and DN_MAX_THREADS are defined by build.rs from src/consts.rs"
#endif

// Element i of the token's [q | k | v | g | β] from global memory, and its
// place in a stage.
__device__ __forceinline__ float dn_fetch(const float* __restrict__ mixed, const float* __restrict__ g,
                                          const float* __restrict__ beta, int row, int i, int cd, int kd,
                                          int kh, int head, int v_heads, int dk, int dv) {
    const float* m = mixed + (size_t)row * cd;
    if (i < dk) return m[kh * dk + i];
    if (i < 2 * dk) return m[kd + kh * dk + i - dk];
    if (i < 2 * dk + dv) return m[2 * kd + head * dv + i - 2 * dk];
    return i == 2 * dk + dv ? g[(size_t)row * v_heads + head] : beta[(size_t)row * v_heads + head];
}
template <int RPT>
__device__ __forceinline__ int dn_slot(int i, int dk) {
    if (i < dk) return i + i / RPT;                   // q
    if (i < 2 * dk) return i + (i - dk) / RPT + dk / RPT;  // k, after q's dk + dk/RPT
    return i + 2 * (dk / RPT);                        // v, g, β
}

// Launch: grid (seqs, v_heads, dv / cols), 32·ceil(cols·P / 32) threads
// (P = dk / RPT), dynamic shared memory 2·DN_STAGE floats. Each token is staged in one of
// two buffers while the previous one is computed from the other: its loads
// are issued into registers before the compute and stored after it, so one
// barrier per token separates them.
template <int RPT>
__device__ void gated_delta_rule(const float* __restrict__ mixed,       // [n, cd]: q | k | v
                                 const float* __restrict__ g,           // [n, vh]
                                 const float* __restrict__ beta,        // [n, vh]
                                 const int32_t* __restrict__ seq_start, // [seqs + 1]
                                 const float* __restrict__ init,        // [seqs, vh, dk, dv], or null (zeros)
                                 float* __restrict__ final_state,       // [seqs, vh, dk, dv], or null
                                 const int32_t* __restrict__ snap_at,   // [n]: snapshot slot after the row, or −1; or null
                                 float* __restrict__ snaps,             // [slots, vh, dk, dv] (the prefix cache's)
                                 float* __restrict__ out,               // [n, vh·dv]
                                 int cd, int k_heads, int v_heads, int dk, int dv, int cols) {
    extern __shared__ float dn_smem[];
    const int stage = DN_STAGE(dk, dv, RPT), L = 2 * dk + dv + 2;
    const int P = dk / RPT;
    const int s = blockIdx.x, head = blockIdx.y, kh = head / (v_heads / k_heads);
    // Columns of S evolve independently: block z owns columns
    // [z·cols, (z + 1)·cols) of the head.
    const int jl = threadIdx.x / P, j = blockIdx.z * cols + jl, p = threadIdx.x % P;
    const bool active = jl < cols && j < dv;
    const int kd = k_heads * dk;
    const size_t state = (((size_t)s * v_heads + head) * dk) * dv;
    const int first = seq_start[s], last = seq_start[s + 1];

    float S[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
        S[r] = active && init ? init[state + (size_t)(p * RPT + r) * dv + j] : 0.0f;

    float pre[DN_PREFETCH];
    auto fetch = [&](int row) {
#pragma unroll
        for (int c = 0; c < DN_PREFETCH; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < L) pre[c] = dn_fetch(mixed, g, beta, row, i, cd, kd, kh, head, v_heads, dk, dv);
        }
    };
    auto put = [&](float* buf) {
#pragma unroll
        for (int c = 0; c < DN_PREFETCH; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < L) buf[dn_slot<RPT>(i, dk)] = pre[c];
        }
    };
    if (first < last) {
        fetch(first);
        put(dn_smem);
    }
    __syncthreads();
    for (int row = first; row < last; ++row) {
        const float* cur = dn_smem + ((row - first) & 1) * stage;
        float* next = dn_smem + ((row - first + 1) & 1) * stage;
        if (row + 1 < last) fetch(row + 1);  // in flight during this token's compute
        const float* qp = cur + p * (RPT + 1);
        const float* kp = cur + dk + dk / RPT + p * (RPT + 1);
        const float* vs = cur + 2 * (dk + dk / RPT);
        const float decay = expf(vs[dv]), bt = vs[dv + 1];
        float kv = 0.0f;
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            S[r] *= decay;
            kv += S[r] * kp[r];
        }
        kv = lane_group_sum(kv, P);
        const float u = active ? (vs[j] - kv) * bt : 0.0f;
        float o = 0.0f;
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            S[r] += kp[r] * u;
            o += S[r] * qp[r];
        }
        o = lane_group_sum(o, P);
        if (active && p == 0) out[(size_t)row * v_heads * dv + (size_t)head * dv + j] = o;
        // The state after this row into its cache block's snapshot (block-uniform).
        const int slot = snap_at ? snap_at[row] : -1;
        if (slot >= 0 && active) {
            float* dst = snaps + (((size_t)slot * v_heads + head) * dk) * dv;
#pragma unroll
            for (int r = 0; r < RPT; ++r) dst[(size_t)(p * RPT + r) * dv + j] = S[r];
        }
        // `next` was last read two tokens ago, before the previous barrier.
        if (row + 1 < last) put(next);
        __syncthreads();
    }
    if (final_state && active) {
#pragma unroll
        for (int r = 0; r < RPT; ++r) final_state[state + (size_t)(p * RPT + r) * dv + j] = S[r];
    }
}

// Entry points `gated_delta_rule_r<RPT>`: dk = P·RPT with P a power of two ≤ 32.
#define GATED_DELTA_RULE(RPT)                                                                  \
    extern "C" __global__ void __launch_bounds__(DN_MAX_THREADS) gated_delta_rule_r##RPT(      \
        const float* mixed, const float* g, const float* beta, const int32_t* seq_start,       \
        const float* init, float* final_state, const int32_t* snap_at, float* snaps, float* out, \
        int cd, int k_heads, int v_heads, int dk, int dv, int cols) {                          \
        gated_delta_rule<RPT>(mixed, g, beta, seq_start, init, final_state, snap_at, snaps, out, \
                              cd, k_heads, v_heads, dk, dv, cols);                             \
    }
GATED_DELTA_RULE(8)
GATED_DELTA_RULE(16)
GATED_DELTA_RULE(32)

// Launch: grid (n, ceil(v_heads / 8)), 256 threads: one warp per (row, value head).
template <typename T>
__device__ void gated_rmsnorm_silu(const float* __restrict__ o,  // [n, vh·dv]
                                   const float* __restrict__ z,  // [n, vh·dv]
                                   const float* __restrict__ w,  // [dv]
                                   T* __restrict__ out,          // [n, vh·dv]
                                   int v_heads, int dv, float eps) {
    const int lane = threadIdx.x % 32;
    const int head = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32;
    if (head >= v_heads) return;  // warp-uniform
    const size_t at = (size_t)blockIdx.x * v_heads * dv + (size_t)head * dv;
    float ss = 0.0f;
    for (int d = lane; d < dv; d += 32) ss += o[at + d] * o[at + d];
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dv + eps);
    for (int d = lane; d < dv; d += 32)
        out[at + d] = from_f32<T>(w[d] * (o[at + d] * inv) * dn_silu(z[at + d]));
}

#define GATED_RMSNORM_SILU(SUFFIX, T)                                                          \
    extern "C" __global__ void gated_rmsnorm_silu_##SUFFIX(const float* o, const float* z,     \
                                                           const float* w, T* out,             \
                                                           int v_heads, int dv, float eps) {   \
        gated_rmsnorm_silu<T>(o, z, w, out, v_heads, dv, eps);                                 \
    }
INSTANTIATE_T(GATED_RMSNORM_SILU)
