// wgmma_probe.cu — one warpgroup runs attention's two products through
// wgmma (wgmma.cuh), without the softmax: S = Q·Kᵀ (64 queries × 64 keys,
// Q and K K-major in 128B-swizzled shared memory, A and B both from shared
// memory) and O = P·V with P = S rounded to T and repacked in registers as
// A fragments, V MN-major (trans-b), the order and layouts an attention
// kernel on wgmma uses. The host (src/backend/cuda/wgmma.rs) runs it once
// per device against its own products: a chip that reads the descriptors
// otherwise than the CPU emulator (tests/cuda_emu/wgmma_emu.h) fails it
// there, before any kernel relies on them.
//
// Inputs row-major: q [64, HD], k [64, HD], v [64, HD] in T (HD = 64 or
// 128). Outputs f32: s [64, 64], o [64, HD]. One block of 128 threads,
// dynamic shared memory 3 · 64 · HD · sizeof(T) + 1024 bytes (the operands
// start on a 1024-byte boundary, as the swizzle atoms must). Each operand
// is stored as HD / 64 regions of 64 rows × 128 bytes (8 KB), region j
// holding columns 64j … 64j + 63.
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

template <typename T, int HD>
__device__ void wgmma_probe(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            float* __restrict__ s_out, float* __restrict__ o_out) {
#if WGMMA_AVAILABLE
    static_assert(HD == 64 || HD == 128, "the probe covers one and two 64-column regions");
    constexpr int REGION = 64 * 128;  // bytes: 64 rows of 128 bytes
    extern __shared__ unsigned char probe_smem[];
    unsigned char* base = align1024(probe_smem);
    unsigned char* qs = base;
    unsigned char* ks = qs + HD / 64 * REGION;
    unsigned char* vs = ks + HD / 64 * REGION;
    const int t = threadIdx.x;
    for (int e = t; e < 64 * HD / 8; e += blockDim.x) {
        const int r = e / (HD / 8), c = e % (HD / 8);
        const int off = c / 8 * REGION + sw128(r, c % 8);
        cp_async16(qs + off, q + r * HD + c * 8, 16);
        cp_async16(ks + off, k + r * HD + c * 8, 16);
        cp_async16(vs + off, v + r * HD + c * 8, 16);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();

    // S = Q·Kᵀ: HD / 16 k-steps, four per 64-column region (32 bytes each).
    float s[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.0f;
    wgmma_fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        const int off = kk / 4 * REGION + kk % 4 * 32;
        wgmma_ss<0>(s, wgmma_desc(qs + off, 16, 1024), wgmma_desc(ks + off, 16, 1024), kk > 0, (T*)nullptr);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(s);

    const int w = t / 32, g = (t % 32) / 4, c = t % 4;
#pragma unroll
    for (int i = 0; i < 32; ++i)
        s_out[(16 * w + g + 8 * ((i / 2) % 2)) * 64 + 8 * (i / 4) + 2 * c + i % 2] = s[i];

    // O = P·V: four k-steps of 16 keys; P's A fragment for keys 16j … 16j + 15
    // is S's registers 8j … 8j + 7 (columns 16j + 2c.. and 16j + 8 + 2c..,
    // rows g and g + 8), rounded to T.
    // All four packed before the fence: registers written between two
    // wgmmas of a group would make ptxas serialise them (warpgroup.arrive).
    uint32_t a[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) a[j][r] = pack2(s[8 * j + 2 * r], s[8 * j + 2 * r + 1], (T*)nullptr);
    float o[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; ++i) o[i] = 0.0f;
    wgmma_fence_operands(o);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        // Keys 16j …: rows 16j … of every region (16 rows of 128 bytes);
        // 8-key groups SBO = 1024 apart, 64-column regions LBO = REGION apart.
        wgmma_rs<1>(o, a[j], wgmma_desc(vs + j * 16 * 128, REGION, 1024), j > 0, (T*)nullptr);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(o);
#pragma unroll
    for (int i = 0; i < HD / 2; ++i)
        o_out[(16 * w + g + 8 * ((i / 2) % 2)) * HD + 8 * (i / 4) + 2 * c + i % 2] = o[i];
#endif
}

#define PROBE(NAME, T, HD)                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        NAME(const T* q, const T* k, const T* v, float* s_out, float* o_out) {                     \
        wgmma_probe<T, HD>(q, k, v, s_out, o_out);                                                 \
    }
PROBE(wgmma_probe_bf16_64, __nv_bfloat16, 64)
PROBE(wgmma_probe_bf16_128, __nv_bfloat16, 128)
PROBE(wgmma_probe_f16_64, __half, 64)
PROBE(wgmma_probe_f16_128, __half, 128)
