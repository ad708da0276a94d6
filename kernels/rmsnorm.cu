// rmsnorm.cu — residual add fused with RMSNorm.
//
// What is fused and why: the output projections (o_proj, down_proj) write
// their product to a separate f32 `delta`; this kernel adds it into the f32
// residual stream `x` and normalises the sum in the same pass, producing the
// next GEMM's input directly in the weights' dtype `T` (bf16/f16 tensor-core
// GEMMs need both operands in one 16-bit type). One read of x and delta, one
// write of x and of the normalised row, instead of an add kernel plus a norm
// kernel plus a cast. The final norm also gathers: with `rows`, only the
// positions whose log-prob is wanted are normalised (the LM head never sees
// the others), and x is left untouched.
//
// Arithmetic as transformers' LlamaRMSNorm in f32: `w · (v · 1/sqrt(mean(v²) + eps))`.
// CPU twin: `ops::rms_norm` (after `x += delta`) in src/backend/cpu/ops.rs.
//
// Launch: one block per output row; threads stride over the hidden dimension.
#include "common.cuh"

template <typename T>
__device__ void residual_rmsnorm(float* __restrict__ x,            // [rows_x, hidden] f32, residual stream
                                 const float* __restrict__ delta,  // [rows_x, hidden] f32, or null
                                 const float* __restrict__ w,      // [hidden] f32 norm weight
                                 T* __restrict__ out,              // [n, hidden] T
                                 const int32_t* __restrict__ rows, // [n] rows of x to normalise, or null (= all, in place)
                                 int hidden, float eps) {
    __shared__ float scratch[32];
    const size_t src = rows ? (size_t)rows[blockIdx.x] : (size_t)blockIdx.x;
    float* xr = x + src * hidden;
    const float* dr = delta ? delta + src * hidden : nullptr;
    const bool write_back = dr && !rows;

    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = xr[i];
        if (dr) v += dr[i];
        if (write_back) xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)hidden + eps);
    T* o = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        // Each thread re-reads the elements it wrote itself: no barrier needed.
        float v = xr[i];
        if (dr && !write_back) v += dr[i];
        o[i] = from_f32<T>(w[i] * (v * inv));
    }
}

#define RESIDUAL_RMSNORM(SUFFIX, T)                                                          \
    extern "C" __global__ void residual_rmsnorm_##SUFFIX(float* x, const float* delta,      \
                                                         const float* w, T* out,            \
                                                         const int32_t* rows, int hidden,   \
                                                         float eps) {                       \
        residual_rmsnorm<T>(x, delta, w, out, rows, hidden, eps);                           \
    }
INSTANTIATE_T(RESIDUAL_RMSNORM)
