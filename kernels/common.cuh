// common.cuh — helpers shared by every kernel in kernels/*.cu.
//
// * Element types: weights and GEMM operands are f32, bf16 or f16 (`T` in the
//   templates); every kernel computes in f32 and converts only at loads and
//   stores (`to_f32` / `from_f32<T>`).
// * Reductions: warp sums / maxima with xor shuffles, block-wide versions
//   through a 32-float shared scratch (blockDim.x a multiple of 32, ≤ 1024).
// * 16-byte loads for rows read exactly once (`load128_stream`), so the
//   memory-bound kernels issue full-width transactions and do not pollute L1;
//   `Elems<T, N>` moves N elements of any type in one access.
// * `INSTANTIATE_T(macro)`: one extern "C" entry point per element type, named
//   `<kernel>_f32`, `<kernel>_bf16`, `<kernel>_f16`; the Rust launchers pick the
//   name from the tensor's dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over aligned groups of `lanes` adjacent lanes (a power of two ≤ 32):
// every lane of a group gets its group's sum.
__device__ __forceinline__ float lane_group_sum(float v, int lanes) {
    for (int o = 1; o < lanes; o <<= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// N consecutive elements of a row, loaded or stored in one access
// (alignas: 16 bytes for 4 floats or 8 bf16s, 8 for 4 bf16s).
template <typename T, int LEN>
struct alignas(LEN * sizeof(T)) Elems {
    static constexpr int N = LEN;
    T v[LEN];
};

// Sum over the block; every thread gets the result. `scratch`: 32 floats of
// shared memory, reusable once this returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warps = (blockDim.x + 31) / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// 16-byte streaming load (evict-first: the row is read once).
__device__ __forceinline__ float4 load128_stream(const float* p) {
    return __ldcs(reinterpret_cast<const float4*>(p));
}

// Deterministic hash of a 64-bit index into [0, 1): SplitMix64 finaliser.
__device__ __forceinline__ float hash_unit(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// Emit `BODY(suffix, T)` for each element type.
#define INSTANTIATE_T(BODY) \
    BODY(f32, float)        \
    BODY(bf16, __nv_bfloat16) \
    BODY(f16, __half)
