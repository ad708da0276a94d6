// silu_mul.cu — SwiGLU activation.
//
// What is fused: gate and up come from one GEMM against the concatenated
// [gate; up] weight (f32 output `[n, 2·inter]`); this kernel applies
// `silu(gate) · up` and writes the down projection's input in the weights'
// dtype T, so the two halves are read once and the product never exists in
// f32 in memory. CPU twin: `ops::silu_mul_inplace` in src/backend/cpu/ops.rs.
//
// Launch: 2-D grid, x over tokens, y over blocks of the intermediate dimension.
#include "common.cuh"

template <typename T>
__device__ void silu_mul(const float* __restrict__ gate_up,  // [n, 2·inter] f32: gate | up
                         T* __restrict__ out,                // [n, inter] T
                         int inter) {
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= inter) return;
    const size_t row = blockIdx.x;
    const float g = gate_up[row * 2 * inter + i];
    const float u = gate_up[row * 2 * inter + inter + i];
    out[row * inter + i] = from_f32<T>(g / (1.0f + expf(-g)) * u);
}

#define SILU_MUL(SUFFIX, T)                                                                  \
    extern "C" __global__ void silu_mul_##SUFFIX(const float* gate_up, T* out, int inter) { \
        silu_mul<T>(gate_up, out, inter);                                                    \
    }
INSTANTIATE_T(SILU_MUL)
