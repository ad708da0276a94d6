// act_mul.cu — the gated MLP's activation: SwiGLU's `silu(gate) · up` or
// GeGLU's `gelu_tanh(gate) · up` (Gemma), and Gemma's per-layer input gate.
//
// What is fused: gate and up come from one GEMM against the concatenated
// [gate; up] weight (output `[n, 2·inter]` in the compute dtype T: bf16/f16
// for 16-bit checkpoints, as transformers rounds each projection, f32 for
// f32 ones); `act_mul` applies the activation and the product in f32 and
// writes the down projection's input in T, so the two halves are read once
// and the product never exists in memory in f32. CPU twin:
// `mlp::act_mul_inplace` in src/backend/cpu/mlp.rs.
//
// `ple_gate_mul` is Gemma's per-layer input for one layer l, built and used
// in one pass per token: P = (rmsnorm(e_proj · proj_scale) · w + table[tok,
// l·dim …] · embed_scale) · combine_scale, where e_proj is the token's
// embedding projected to this layer's `dim` columns (a GEMM the host runs
// per layer), then out = gelu_tanh(gate) · P, the per-layer projection's
// input. Computing P per layer from the embedding instead of once for all
// layers keeps a [tokens, layers·dim] array (1.4 GB at 32k tokens of
// gemma-4-E4B in f32) out of memory for the same GEMM work. CPU twins:
// `embed::per_layer_inputs` and `forward::per_layer_input`.
//
// Launch: act_mul: 2-D grid, x over tokens, y over blocks of the
// intermediate dimension. With `vec` (inter a multiple of 16 / sizeof(T),
// both pointers 16-byte aligned: the launcher checks) each thread moves 16
// bytes per operand, else one element. ple_gate_mul: one block per token,
// threads over dim.
#include "common.cuh"

#define ACT_SILU 0
#define ACT_GELU_TANH 1

// PyTorch's `gelu(approximate="tanh")` in f32 (tanhf, not tanh.approx: the
// CPU twin and transformers use the accurate one).
__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978845608f;  // √(2/π)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

template <int ACT>
__device__ __forceinline__ float act(float x) {
    if constexpr (ACT == ACT_SILU) return x / (1.0f + expf(-x));
    else return gelu_tanh(x);
}

template <typename T, int ACT>
__device__ void act_mul(const T* __restrict__ gate_up,  // [n, 2·inter]: gate | up
                        T* __restrict__ out,            // [n, inter]
                        int inter, int vec) {
    const size_t row = blockIdx.x;
    const T* g = gate_up + row * 2 * inter;
    const T* u = g + inter;
    T* o = out + row * inter;
    const int t = blockIdx.y * blockDim.x + threadIdx.x;
    if (vec) {
        using P = Elems<T, 16 / sizeof(T)>;
        const int i = t * P::N;
        if (i >= inter) return;
        const P gv = *reinterpret_cast<const P*>(g + i);
        const P uv = *reinterpret_cast<const P*>(u + i);
        P ov;
#pragma unroll
        for (int j = 0; j < P::N; ++j) ov.v[j] = from_f32<T>(act<ACT>(to_f32(gv.v[j])) * to_f32(uv.v[j]));
        *reinterpret_cast<P*>(o + i) = ov;
    } else {
        if (t >= inter) return;
        o[t] = from_f32<T>(act<ACT>(to_f32(g[t])) * to_f32(u[t]));
    }
}

template <typename T>
__device__ void ple_gate_mul(const float* __restrict__ gate,      // [n, dim] f32: x · W_gateᵀ
                             const float* __restrict__ e_proj,    // [n, dim] f32: embedding · W_proj[l]ᵀ
                             const uint32_t* __restrict__ tokens, // [n]
                             const T* __restrict__ table,         // [ple_vocab, layers·dim] T
                             const float* __restrict__ norm,      // [dim] f32
                             T* __restrict__ out,                 // [n, dim] T
                             int dim, int width, int layer, float proj_scale, float embed_scale,
                             float combine_scale, float eps) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const float* e = e_proj + row * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = e[i] * proj_scale;
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    const T* tr = table + (size_t)tokens[row] * width + (size_t)layer * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float p = (norm[i] * (e[i] * proj_scale * inv) + to_f32(tr[i]) * embed_scale) * combine_scale;
        out[row * dim + i] = from_f32<T>(gelu_tanh(gate[row * dim + i]) * p);
    }
}

#define ACT_MUL(SUFFIX, T)                                                                        \
    extern "C" __global__ void act_mul_silu_##SUFFIX(const T* gate_up, T* out, int inter, int vec) { \
        act_mul<T, ACT_SILU>(gate_up, out, inter, vec);                                           \
    }                                                                                             \
    extern "C" __global__ void act_mul_gelu_tanh_##SUFFIX(const T* gate_up, T* out, int inter,    \
                                                          int vec) {                              \
        act_mul<T, ACT_GELU_TANH>(gate_up, out, inter, vec);                                      \
    }                                                                                             \
    extern "C" __global__ void ple_gate_mul_##SUFFIX(                                             \
        const float* gate, const float* e_proj, const uint32_t* tokens, const T* table,           \
        const float* norm, T* out, int dim, int width, int layer, float proj_scale,               \
        float embed_scale, float combine_scale, float eps) {                                      \
        ple_gate_mul<T>(gate, e_proj, tokens, table, norm, out, dim, width, layer, proj_scale,    \
                        embed_scale, combine_scale, eps);                                         \
    }
INSTANTIATE_T(ACT_MUL)
