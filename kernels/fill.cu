// fill.cu — deterministic pseudo-random fill, for benchmark weights.
//
// What is fused: generation and conversion to the stored dtype, on the device,
// so a 7B-parameter random model costs no host RNG time and no PCIe upload.
// Values are `lo + (hi − lo)·u`, u = SplitMix64(seed, index) in [0, 1): the
// same (seed, index) gives the same value on every GPU. CPU twin: none needed
// (the benches only need plausible weights; tests use real checkpoints).
//
// Launch: 1-D grid-stride loop over the n elements.
#include "common.cuh"

template <typename T>
__device__ void fill_uniform(T* __restrict__ out,  // [n] T
                             uint64_t n, uint64_t seed, float lo, float hi) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        out[i] = from_f32<T>(lo + (hi - lo) * hash_unit(seed, i));
    }
}

#define FILL_UNIFORM(SUFFIX, T)                                                         \
    extern "C" __global__ void fill_uniform_##SUFFIX(T* out, uint64_t n, uint64_t seed, \
                                                     float lo, float hi) {              \
        fill_uniform<T>(out, n, seed, lo, hi);                                          \
    }
INSTANTIATE_T(FILL_UNIFORM)
