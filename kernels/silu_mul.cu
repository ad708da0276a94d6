// silu_mul.cu — SwiGLU activation.
//
// What is fused: gate and up come from one GEMM against the concatenated
// [gate; up] weight (output `[n, 2·inter]` in the compute dtype T: bf16/f16
// for 16-bit checkpoints, as transformers rounds each projection, f32 for
// f32 ones); this kernel applies `silu(gate) · up` in f32 and writes the down
// projection's input in T, so the two halves are read once and the product
// never exists in memory in f32. CPU twin: `ops::silu_mul_inplace` in
// src/backend/cpu/mlp.rs.
//
// Launch: 2-D grid, x over tokens, y over blocks of the intermediate
// dimension. With `vec` (inter a multiple of 16 / sizeof(T), both pointers
// 16-byte aligned: the launcher checks) each thread moves 16 bytes per
// operand, else one element.
#include "common.cuh"

template <typename T>
struct alignas(16) Pack16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

template <typename T>
__device__ void silu_mul(const T* __restrict__ gate_up,  // [n, 2·inter]: gate | up
                         T* __restrict__ out,            // [n, inter]
                         int inter, int vec) {
    const size_t row = blockIdx.x;
    const T* g = gate_up + row * 2 * inter;
    const T* u = g + inter;
    T* o = out + row * inter;
    const int t = blockIdx.y * blockDim.x + threadIdx.x;
    if (vec) {
        using P = Pack16<T>;
        const int i = t * P::N;
        if (i >= inter) return;
        const P gv = *reinterpret_cast<const P*>(g + i);
        const P uv = *reinterpret_cast<const P*>(u + i);
        P ov;
#pragma unroll
        for (int j = 0; j < P::N; ++j) {
            const float x = to_f32(gv.v[j]);
            ov.v[j] = from_f32<T>(x / (1.0f + expf(-x)) * to_f32(uv.v[j]));
        }
        *reinterpret_cast<P*>(o + i) = ov;
    } else {
        if (t >= inter) return;
        const float x = to_f32(g[t]);
        o[t] = from_f32<T>(x / (1.0f + expf(-x)) * to_f32(u[t]));
    }
}

#define SILU_MUL(SUFFIX, T)                                                                   \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gate_up, T* out, int inter, int vec) { \
        silu_mul<T>(gate_up, out, inter, vec);                                                \
    }
INSTANTIATE_T(SILU_MUL)
