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
//     j / (v_heads / k_heads);
//   o, z  ──gated_rmsnorm_silu──►  RMSNorm per value head (plain weight)
//     times silu(z), in the weights' dtype for out_proj.
//
// The recurrence runs token by token (the CPU runs it in 64-token chunks:
// the same sums in another order). One block per (sequence, value head)
// holds the state S [dk, dv] in registers: thread (j, p) owns column j and
// rows p·RPT … p·RPT + RPT − 1, the P = dk / RPT threads of a column are
// adjacent lanes and reduce Sᵀk and Sᵀq by shuffles; q, k, v, g, β of the
// token are staged in shared memory. Per token a thread does 3·RPT FMAs.
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

// Sum over the P adjacent lanes of a column (P a power of two ≤ 32).
__device__ __forceinline__ float dn_group_sum(float v, int P) {
    for (int o = 1; o < P; o <<= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Launch: grid (seqs, v_heads), 32·ceil(dv·P / 32) threads (P = dk / RPT),
// dynamic shared memory (2·dk + dv + 2) floats.
template <int RPT>
__device__ void gated_delta_rule(const float* __restrict__ mixed,       // [n, cd]: q | k | v
                                 const float* __restrict__ g,           // [n, vh]
                                 const float* __restrict__ beta,        // [n, vh]
                                 const int32_t* __restrict__ seq_start, // [seqs + 1]
                                 const float* __restrict__ init,        // [seqs, vh, dk, dv], or null (zeros)
                                 float* __restrict__ final_state,       // [seqs, vh, dk, dv], or null
                                 float* __restrict__ out,               // [n, vh·dv]
                                 int cd, int k_heads, int v_heads, int dk, int dv) {
    extern __shared__ float dn_smem[];
    float* qs = dn_smem;   // [dk]
    float* ks = qs + dk;   // [dk]
    float* vs = ks + dk;   // [dv]
    float* gb = vs + dv;   // g, β
    const int P = dk / RPT;
    const int s = blockIdx.x, head = blockIdx.y, kh = head / (v_heads / k_heads);
    const int j = threadIdx.x / P, p = threadIdx.x % P;
    const bool active = j < dv;
    const int kd = k_heads * dk;
    const size_t state = (((size_t)s * v_heads + head) * dk) * dv;

    float S[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
        S[r] = active && init ? init[state + (size_t)(p * RPT + r) * dv + j] : 0.0f;

    for (int row = seq_start[s]; row < seq_start[s + 1]; ++row) {
        __syncthreads();  // the previous token's q, k, v are read
        const float* m = mixed + (size_t)row * cd;
        for (int i = threadIdx.x; i < dk; i += blockDim.x) {
            qs[i] = m[kh * dk + i];
            ks[i] = m[kd + kh * dk + i];
        }
        for (int i = threadIdx.x; i < dv; i += blockDim.x) vs[i] = m[2 * kd + head * dv + i];
        if (threadIdx.x == 0) {
            gb[0] = g[(size_t)row * v_heads + head];
            gb[1] = beta[(size_t)row * v_heads + head];
        }
        __syncthreads();
        const float decay = expf(gb[0]);
        const float* kp = ks + p * RPT;
        const float* qp = qs + p * RPT;
        float kv = 0.0f;
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            S[r] *= decay;
            kv += S[r] * kp[r];
        }
        kv = dn_group_sum(kv, P);
        const float u = active ? (vs[j] - kv) * gb[1] : 0.0f;
        float o = 0.0f;
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            S[r] += kp[r] * u;
            o += S[r] * qp[r];
        }
        o = dn_group_sum(o, P);
        if (active && p == 0) out[(size_t)row * v_heads * dv + (size_t)head * dv + j] = o;
    }
    if (final_state && active) {
#pragma unroll
        for (int r = 0; r < RPT; ++r) final_state[state + (size_t)(p * RPT + r) * dv + j] = S[r];
    }
}

// Entry points `gated_delta_rule_r<RPT>`: dk = P·RPT with P a power of two ≤ 32.
#define GATED_DELTA_RULE(RPT)                                                                  \
    extern "C" __global__ void gated_delta_rule_r##RPT(                                        \
        const float* mixed, const float* g, const float* beta, const int32_t* seq_start,       \
        const float* init, float* final_state, float* out, int cd, int k_heads, int v_heads,  \
        int dk, int dv) {                                                                      \
        gated_delta_rule<RPT>(mixed, g, beta, seq_start, init, final_state, out, cd, k_heads,  \
                              v_heads, dk, dv);                                                \
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
