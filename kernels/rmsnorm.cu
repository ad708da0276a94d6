// rmsnorm.cu — the residual add fused with the norms around it.
//
// What is fused and why: the output projections (o_proj, down_proj) write
// their product to a separate f32 `delta`; this kernel adds it into the f32
// residual stream `x` — RMS-normalised first when the block has a norm on
// its output (`w_delta`: Olmo 2/3's post-norms, Gemma's sandwich) — and
// writes the next GEMM's input in the same pass: the sum normalised by `w`
// (a pre-norm), or as it is when the next block has no input norm (`w`
// null), in the weights' dtype `T` (bf16/f16 tensor-core GEMMs need both
// operands in one 16-bit type). One read of x and delta, one write of x and
// of the GEMM input, instead of norm, add, norm and cast kernels. The final
// norm also gathers: with `rows`, only the positions whose log-prob is
// wanted are normalised (the LM head never sees the others), and x is left
// untouched. Gemma's layer scalar rides along: the sum is multiplied by
// `x_scale` (1 elsewhere) before it is stored and normalised, as
// transformers scales the residual stream at the end of each layer.
//
// Arithmetic as transformers' LlamaRMSNorm in f32: `w · (v · 1/sqrt(mean(v²) + eps))`.
// CPU twin: `ops::rms_norm` and the residual adds of
// src/backend/cpu/forward.rs (`x += norm(delta)`, then `norm(x)`).
//
// Launch: one block per output row; threads stride over the hidden dimension.
#include "common.cuh"

template <typename T>
__device__ void residual_rmsnorm(float* __restrict__ x,              // [rows_x, hidden] f32, residual stream
                                 const float* __restrict__ delta,    // [rows_x, hidden] f32, or null
                                 const float* __restrict__ w_delta,  // [hidden] f32: norm delta first, or null
                                 const float* __restrict__ w,        // [hidden] f32 norm weight, or null (no norm)
                                 T* __restrict__ out,                // [n, hidden] T
                                 const int32_t* __restrict__ rows,   // [n] rows of x to normalise, or null (= all, in place)
                                 int hidden, float eps, float x_scale) {
    __shared__ float scratch[32];
    const size_t src = rows ? (size_t)rows[blockIdx.x] : (size_t)blockIdx.x;
    float* xr = x + src * hidden;
    const float* dr = delta ? delta + src * hidden : nullptr;
    const bool write_back = dr && !rows;

    float inv_d = 1.0f;  // delta's own norm (block-uniform branch)
    if (dr && w_delta) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += dr[i] * dr[i];
        ss = block_sum(ss, scratch);
        inv_d = 1.0f / sqrtf(ss / (float)hidden + eps);
    }
    // (x[i] + (normalised) delta[i]) · x_scale
    auto sum = [&](int i) {
        const float d = dr ? (w_delta ? w_delta[i] * (dr[i] * inv_d) : dr[i]) : 0.0f;
        return (xr[i] + d) * x_scale;
    };
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = sum(i);
        if (write_back) xr[i] = v;
        ss += v * v;
    }
    float inv = 1.0f;
    if (w) {  // block-uniform
        ss = block_sum(ss, scratch);
        inv = 1.0f / sqrtf(ss / (float)hidden + eps);
    }
    T* o = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        // Each thread re-reads the elements it wrote itself: no barrier needed.
        const float v = write_back ? xr[i] : sum(i);
        o[i] = from_f32<T>(w ? w[i] * (v * inv) : v);
    }
}

#define RESIDUAL_RMSNORM(SUFFIX, T)                                                          \
    extern "C" __global__ void residual_rmsnorm_##SUFFIX(float* x, const float* delta,      \
                                                         const float* w_delta,              \
                                                         const float* w, T* out,            \
                                                         const int32_t* rows, int hidden,   \
                                                         float eps, float x_scale) {        \
        residual_rmsnorm<T>(x, delta, w_delta, w, out, rows, hidden, eps, x_scale);         \
    }
INSTANTIATE_T(RESIDUAL_RMSNORM)
