// rope.cu — q/k/v post-processing between the QKV GEMM and attention.
//
// What is fused and why: the QKV projection is one GEMM against the
// concatenated [q; k; v] weight, writing `qkv [n, qd + 2·kvd]` in the
// compute dtype T (bf16/f16 as transformers rounds each projection, which
// halves this kernel's read and the GEMM's write against f32; f32 for f32
// models) (with an output gate, Qwen 3.5: `[n, 2·qd + 2·kvd]`, q_proj
// giving per head `[query | gate]`; the gates go to `gate_out` for
// `gate_sigmoid_mul` after attention). Everything
// that happens to those rows before attention is done here in one pass per
// token, with the q and k rows staged in shared memory:
//   1. bias add (Qwen2, or `attention_bias`),
//   2. RMSNorm of q and k: per head (Qwen3's q_norm / k_norm, weights
//      [head_dim]) or over the whole projection (`qk_full`: Olmo 2/3, weights
//      [heads·head_dim] and [kv_heads·head_dim]),
//   3. rotate-half RoPE over the first `rotary_dim` dims of each head (all
//      of them but in partial-rotary models, Qwen 3.5's quarter), with
//      angles `pos · inv_freq` computed in f32 (as transformers does;
//      inv_freq already carries llama3/linear/YaRN scaling, from the layer's
//      `Rope`), cos/sin once per token in shared memory, both multiplied by
//      `rope_scale` (YaRN's attention factor, else 1),
//   4. the write of k and v into the paged KV pool (layout: attention.cu) in
//      the cache dtype T — v RMS-normalised per head without a weight when
//      `v_norm` (Gemma 4) — and of q for attention, also in T (as
//      transformers hands attention 16-bit queries; the tensor-core kernel
//      rounds its operands to T anyway).
// A layer that reads another layer's K/V (Gemma's KV sharing) projects q
// only: it is launched with kv_heads = 0, and steps 1–3 run on q alone.
// Separately these would be four kernels each re-reading the rows.
// CPU twins: the bias loop, `ops::rms_norm_row` and `ops::rope_row` in
// src/backend/cpu/{forward,ops}.rs.
//
// Launch: one block per token; dynamic shared memory (qd + kvd + hd) floats.
// `gate_sigmoid_mul`: grid (n, ceil(qd / 256)), 256 threads.
#include "common.cuh"

template <typename T>
__device__ void qkv_rope(const T* __restrict__ qkv,           // [n, qw + 2·kvd] T (GEMM output; qw = qd, or 2·qd gated)
                         const float* __restrict__ bias,      // [qw + 2·kvd] f32, or null
                         const float* __restrict__ q_norm,    // [head_dim] or [qd] f32, or null
                         const float* __restrict__ k_norm,    // [head_dim] or [kvd] f32, or null
                         const int32_t* __restrict__ pos,     // [n] position within its sequence
                         const int32_t* __restrict__ slots,   // [n] row of the KV pool for this token
                         const float* __restrict__ inv_freq,  // [rotary_dim / 2] f32
                         T* __restrict__ q_out,               // [n, heads, head_dim] T
                         float* __restrict__ gate_out,        // [n, heads, head_dim] f32: with an output gate, else null
                         T* __restrict__ k_pool,              // [pool_rows, kv_heads, head_dim] T
                         T* __restrict__ v_pool,              // [pool_rows, kv_heads, head_dim] T
                         int heads, int kv_heads, int head_dim, float eps, int qk_full,
                         float rope_scale, int rotary_dim, int v_norm) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    const int qd = heads * head_dim, kvd = kv_heads * head_dim, half = rotary_dim / 2;
    const int qw = gate_out ? 2 * qd : qd;  // q_proj's width in the row
    float* s = smem;                // [qd + kvd]: q then k of this token
    float* cs = smem + qd + kvd;    // [half] cos, then [half] sin
    float* sn = cs + half;
    const size_t row = blockIdx.x;
    const T* src = qkv + row * (size_t)(qw + 2 * kvd);
    const size_t slot = (size_t)slots[row];
    auto at = [&](int j) { return to_f32(src[j]) + (bias ? bias[j] : 0.0f); };

    // q (de-interleaved from the gates when gated), then k.
    for (int i = threadIdx.x; i < qd + kvd; i += blockDim.x) {
        const int j = i >= qd ? qw + (i - qd) : gate_out ? (i / head_dim) * 2 * head_dim + i % head_dim : i;
        s[i] = at(j);
    }
    if (gate_out) {
        for (int i = threadIdx.x; i < qd; i += blockDim.x)
            gate_out[row * qd + i] = at((i / head_dim) * 2 * head_dim + head_dim + i % head_dim);
    }
    if (v_norm) {  // Gemma 4: weightless RMSNorm of each v head; one warp per head
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        for (int h = warp; h < kv_heads; h += warps) {
            const int v0 = qw + kvd + h * head_dim;
            float ss = 0.0f;
            for (int d = lane; d < head_dim; d += 32) ss += at(v0 + d) * at(v0 + d);
            const float inv = 1.0f / sqrtf(warp_sum(ss) / (float)head_dim + eps);
            for (int d = lane; d < head_dim; d += 32)
                v_pool[slot * kvd + h * head_dim + d] = from_f32<T>(at(v0 + d) * inv);
        }
    } else {
        for (int i = threadIdx.x; i < kvd; i += blockDim.x)
            v_pool[slot * kvd + i] = from_f32<T>(at(qw + kvd + i));
    }
    const float p = (float)pos[row];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c, si;
        sincosf(p * inv_freq[i], &si, &c);
        cs[i] = c * rope_scale;
        sn[i] = si * rope_scale;
    }
    __syncthreads();

    if (q_norm && qk_full) {  // over all of q, then all of k (block-uniform)
        float sq = 0.0f, sk = 0.0f;
        for (int i = threadIdx.x; i < qd; i += blockDim.x) sq += s[i] * s[i];
        for (int i = threadIdx.x; i < kvd; i += blockDim.x) sk += s[qd + i] * s[qd + i];
        sq = block_sum(sq, scratch);
        sk = block_sum(sk, scratch);
        const float iq = 1.0f / sqrtf(sq / (float)qd + eps), ik = 1.0f / sqrtf(sk / (float)kvd + eps);
        for (int i = threadIdx.x; i < qd; i += blockDim.x) s[i] = q_norm[i] * (s[i] * iq);
        for (int i = threadIdx.x; i < kvd; i += blockDim.x) s[qd + i] = k_norm[i] * (s[qd + i] * ik);
        __syncthreads();
    } else if (q_norm) {  // q_norm and k_norm come together (Qwen3); one warp per head
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        for (int h = warp; h < heads + kv_heads; h += warps) {
            float* v = s + h * head_dim;
            const float* w = h < heads ? q_norm : k_norm;
            float ss = 0.0f;
            for (int d = lane; d < head_dim; d += 32) ss += v[d] * v[d];
            ss = warp_sum(ss);
            const float inv = 1.0f / sqrtf(ss / (float)head_dim + eps);
            for (int d = lane; d < head_dim; d += 32) v[d] = w[d] * (v[d] * inv);
        }
        __syncthreads();
    }

    // Rotate-half: pair (d, d + half) of every head for d < half; the dims
    // from rotary_dim on pass unrotated (partial rotary).
    const int pass = head_dim - rotary_dim;
    const int per_head = half + pass;
    for (int idx = threadIdx.x; idx < (heads + kv_heads) * per_head; idx += blockDim.x) {
        const int h = idx / per_head, i = idx % per_head;
        // (d0, y0) and, for a rotated pair, (d0 + half, y1).
        int d0 = i;
        float y0, y1 = 0.0f;
        if (i >= half) {  // an unrotated dim
            d0 = rotary_dim + (i - half);
            y0 = s[h * head_dim + d0];
        } else {
            const float x0 = s[h * head_dim + i], x1 = s[h * head_dim + half + i];
            y0 = x0 * cs[i] - x1 * sn[i];
            y1 = x1 * cs[i] + x0 * sn[i];
        }
        if (h < heads) {
            T* q = q_out + row * (size_t)qd + h * head_dim;
            q[d0] = from_f32<T>(y0);
            if (i < half) q[half + i] = from_f32<T>(y1);
        } else {
            T* k = k_pool + slot * kvd + (h - heads) * head_dim;
            k[d0] = from_f32<T>(y0);
            if (i < half) k[half + i] = from_f32<T>(y1);
        }
    }
}

// `attn ← attn · sigmoid(gate)` (Qwen 3.5's gated attention output), in
// the attention output's dtype. CPU twin: `gate_sigmoid` in
// src/backend/cpu/mixer.rs.
template <typename T>
__device__ void gate_sigmoid_mul(T* __restrict__ attn,         // [n, qd]
                                 const float* __restrict__ gate, // [n, qd]
                                 int qd) {
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= qd) return;
    const size_t at = (size_t)blockIdx.x * qd + i;
    attn[at] = from_f32<T>(to_f32(attn[at]) * (1.0f / (1.0f + expf(-gate[at]))));
}

#define QKV_ROPE(SUFFIX, T)                                                                   \
    extern "C" __global__ void qkv_rope_##SUFFIX(                                             \
        const T* qkv, const float* bias, const float* q_norm, const float* k_norm,            \
        const int32_t* pos, const int32_t* slots, const float* inv_freq, T* q_out,            \
        float* gate_out, T* k_pool, T* v_pool, int heads, int kv_heads, int head_dim,          \
        float eps, int qk_full, float rope_scale, int rotary_dim, int v_norm) {               \
        qkv_rope<T>(qkv, bias, q_norm, k_norm, pos, slots, inv_freq, q_out, gate_out, k_pool,  \
                    v_pool, heads, kv_heads, head_dim, eps, qk_full, rope_scale, rotary_dim,   \
                    v_norm);                                                                  \
    }                                                                                         \
    extern "C" __global__ void gate_sigmoid_mul_##SUFFIX(T* attn, const float* gate, int qd) { \
        gate_sigmoid_mul<T>(attn, gate, qd);                                                  \
    }
INSTANTIATE_T(QKV_ROPE)
