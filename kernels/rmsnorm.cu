// rmsnorm.cu — the residual add fused with the norms around it.
//
// What is fused and why: the output projections (o_proj, down_proj; a
// DeltaNet's out_proj; Gemma's per-layer projection) write their product to
// `delta` in the compute dtype T (bf16/f16 for 16-bit checkpoints, as
// transformers rounds each projection; f32 for f32 ones); this kernel adds
// it into the f32 residual stream `x` — RMS-normalised first when the block
// has a norm on its output (`w_delta`: Olmo 2/3's post-norms, Gemma's
// sandwich) — and writes the next GEMM's input in the same pass: the sum
// normalised by `w` (a pre-norm), or as it is when the next block has no
// input norm (`w` null), in T (bf16/f16 tensor-core GEMMs need both
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
// Launch: one block per output row. With `vec` (hidden a multiple of 4, the
// pointers aligned for it, hidden ≤ 4·RMS_CHUNKS·blockDim.x: the launcher
// checks) each thread holds up to RMS_CHUNKS runs of 4 elements in
// registers — 16-byte loads and stores of x, 4·sizeof(T) of delta and out,
// every load of a row in flight before the first reduction, and no second
// read of x — with the block sized to the row (64 threads at hidden 896).
// Otherwise threads stride over the row one element at a time.
#include "common.cuh"

// Runs of 4 elements a thread holds in the vector path.
#define RMS_CHUNKS 4

template <typename T>
__device__ void residual_rmsnorm(float* __restrict__ x,              // [rows_x, hidden] f32, residual stream
                                 const T* __restrict__ delta,        // [rows_x, hidden] T, or null
                                 const float* __restrict__ w_delta,  // [hidden] f32: norm delta first, or null
                                 const float* __restrict__ w,        // [hidden] f32 norm weight, or null (no norm)
                                 T* __restrict__ out,                // [n, hidden] T
                                 const int32_t* __restrict__ rows,   // [n] rows of x to normalise, or null (= all, in place)
                                 int hidden, float eps, float x_scale, int vec) {
    __shared__ float scratch[32];
    const size_t src = rows ? (size_t)rows[blockIdx.x] : (size_t)blockIdx.x;
    float* xr = x + src * hidden;
    const T* dr = delta ? delta + src * hidden : nullptr;
    const bool write_back = dr && !rows;
    T* o = out + (size_t)blockIdx.x * hidden;

    if (vec) {
        // Chunk c = threadIdx.x + k·blockDim.x covers elements [4c, 4c + 4).
        const int chunks = hidden / 4;
        float v[RMS_CHUNKS][4], d[RMS_CHUNKS][4];
#pragma unroll
        for (int k = 0; k < RMS_CHUNKS; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c >= chunks) continue;
            const float4 xv = reinterpret_cast<const float4*>(xr)[c];
            v[k][0] = xv.x, v[k][1] = xv.y, v[k][2] = xv.z, v[k][3] = xv.w;
            if (dr) {
                const Elems<T, 4> dv = reinterpret_cast<const Elems<T, 4>*>(dr)[c];
#pragma unroll
                for (int j = 0; j < 4; ++j) d[k][j] = to_f32(dv.v[j]);
            }
        }
        if (dr && w_delta) {  // block-uniform
            float ss = 0.0f;
#pragma unroll
            for (int k = 0; k < RMS_CHUNKS; ++k)
                if (threadIdx.x + k * blockDim.x < chunks)
#pragma unroll
                    for (int j = 0; j < 4; ++j) ss += d[k][j] * d[k][j];
            ss = block_sum(ss, scratch);
            const float inv_d = 1.0f / sqrtf(ss / (float)hidden + eps);
#pragma unroll
            for (int k = 0; k < RMS_CHUNKS; ++k) {
                const int c = threadIdx.x + k * blockDim.x;
                if (c >= chunks) continue;
                const float4 wd = reinterpret_cast<const float4*>(w_delta)[c];
                d[k][0] = wd.x * (d[k][0] * inv_d), d[k][1] = wd.y * (d[k][1] * inv_d);
                d[k][2] = wd.z * (d[k][2] * inv_d), d[k][3] = wd.w * (d[k][3] * inv_d);
            }
        }
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < RMS_CHUNKS; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c >= chunks) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[k][j] = (v[k][j] + (dr ? d[k][j] : 0.0f)) * x_scale;
                ss += v[k][j] * v[k][j];
            }
            if (write_back) reinterpret_cast<float4*>(xr)[c] = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
        }
        float inv = 1.0f;
        if (w) {  // block-uniform
            ss = block_sum(ss, scratch);
            inv = 1.0f / sqrtf(ss / (float)hidden + eps);
        }
#pragma unroll
        for (int k = 0; k < RMS_CHUNKS; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c >= chunks) continue;
            Elems<T, 4> ov;
            if (w) {
                const float4 wv = reinterpret_cast<const float4*>(w)[c];
                ov.v[0] = from_f32<T>(wv.x * (v[k][0] * inv)), ov.v[1] = from_f32<T>(wv.y * (v[k][1] * inv));
                ov.v[2] = from_f32<T>(wv.z * (v[k][2] * inv)), ov.v[3] = from_f32<T>(wv.w * (v[k][3] * inv));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) ov.v[j] = from_f32<T>(v[k][j]);
            }
            reinterpret_cast<Elems<T, 4>*>(o)[c] = ov;
        }
        return;
    }

    float inv_d = 1.0f;  // delta's own norm (block-uniform branch)
    if (dr && w_delta) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
            const float di = to_f32(dr[i]);
            ss += di * di;
        }
        ss = block_sum(ss, scratch);
        inv_d = 1.0f / sqrtf(ss / (float)hidden + eps);
    }
    // (x[i] + (normalised) delta[i]) · x_scale
    auto sum = [&](int i) {
        const float di = dr ? to_f32(dr[i]) : 0.0f;
        const float dn = dr && w_delta ? w_delta[i] * (di * inv_d) : di;
        return (xr[i] + dn) * x_scale;
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
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        // Each thread re-reads the elements it wrote itself: no barrier needed.
        const float v = write_back ? xr[i] : sum(i);
        o[i] = from_f32<T>(w ? w[i] * (v * inv) : v);
    }
}

#define RESIDUAL_RMSNORM(SUFFIX, T)                                                          \
    extern "C" __global__ void residual_rmsnorm_##SUFFIX(float* x, const T* delta,          \
                                                         const float* w_delta,              \
                                                         const float* w, T* out,            \
                                                         const int32_t* rows, int hidden,   \
                                                         float eps, float x_scale, int vec) { \
        residual_rmsnorm<T>(x, delta, w_delta, w, out, rows, hidden, eps, x_scale, vec);    \
    }
INSTANTIATE_T(RESIDUAL_RMSNORM)
