// wgmma.cuh — Hopper's warpgroup matrix products (wgmma.mma_async, sm_90a)
// over operands staged in 128-byte-swizzled shared memory: the swizzle the
// writers apply, the shared-memory descriptors, and m64nNk16 products with
// f32 accumulators, A from shared memory (`wgmma_ss`) or registers
// (`wgmma_rs`). Only the sm_90a cubin has them (`WGMMA_AVAILABLE`); the host
// launches a kernel built on them only where that cubin is loaded
// (src/backend/cuda/wgmma.rs). The CPU emulator's twin,
// tests/cuda_emu/wgmma_emu.h, reads the same layouts, from the PTX ISA and
// CUTLASS's canonical GMMA layouts:
//
// Shared memory, 128B swizzle: an atom is 8 rows of 128 bytes, 1024-byte
// aligned; 16-byte chunk c of atom row r is stored at chunk c ^ r (`sw128`).
//  K-major (A 64×16, or B with K contiguous per column n): element (row, k)
//    at byte start + (row / 8)·SBO + (row % 8)·128 + 2k, then swizzled; the
//    k-steps of a 64-element-wide region advance start by 32 bytes.
//  MN-major (B with trans-b = 1, N contiguous per k): element (k, n) at byte
//    start + (n / 64)·LBO + 2·(n % 64) + (k / 8)·SBO + (k % 8)·128, swizzled.
// Registers (warp w = thread / 32 of the warpgroup, g = lane / 4, c = lane % 4):
//  D 64×N f32: d[i] at row 16w + g + 8·((i / 2) % 2), column 8·(i / 4) + 2c + i % 2.
//  A 64×16 (wgmma_rs), 16-bit pairs: a0 (16w + g, 2c..), a1 (16w + g + 8, 2c..),
//    a2 (16w + g, 2c + 8..), a3 (16w + g + 8, 2c + 8..) — mma.sync's A fragment per warp.
#pragma once

#include "common.cuh"

#if defined(PADV_CUDA_EMU) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define WGMMA_AVAILABLE 1
#else
#define WGMMA_AVAILABLE 0
#endif

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 1024-byte
// aligned region of 128-byte rows, 128B-swizzled.
__device__ __forceinline__ int sw128(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 1024-byte boundary (in the shared window) at or after `p`:
// where swizzle atoms may start; the caller's allocation has 1 KB spare.
__device__ __forceinline__ unsigned char* align1024(unsigned char* p) {
    return p + ((1024 - (smem_u32(p) & 1023)) & 1023);
}

// A 128B-swizzled operand at `p` (LBO, SBO in bytes, multiples of 16).
__device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((smem_u32(p) & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

#if defined(PADV_CUDA_EMU)
// The CPU emulator's products, fences and waits (tests/cuda_emulated.rs).
#include "wgmma_emu.h"
#elif WGMMA_AVAILABLE

// Shared-memory writes of the generic proxy (st.shared, cp.async) visible
// to wgmma's reads (the async proxy); then a barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Before a warpgroup's first wgmma, and after its registers were written.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Until at most N committed groups of this warpgroup are in flight.
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of `d` across the asynchronous product.
template <int K> __device__ __forceinline__ void wgmma_fence_operands(float (&d)[K]) {
#pragma unroll
    for (int i = 0; i < K; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define WG_REGS32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_REGS64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define WG_OUT32(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define WG_OUT64(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A·B, A and B from shared memory; scale_d = 0 ignores d's value.
#define WGMMA_SS(N, K, REGS, OUTS, A, B, SCALE, TRANS, PTX_TYPE, T)                                \
    template <int TRANS_B>                                                                          \
    __device__ __forceinline__ void wgmma_ss(float (&d)[K], uint64_t a_desc, uint64_t b_desc,       \
                                             int scale_d, T*) {                                     \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n"                            \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "    \
                     REGS ", " A ", " B ", p, 1, 1, 0, " TRANS ";\n}\n"                             \
                     : OUTS(d)                                                                      \
                     : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TRANS_B));                      \
    }
// d (+)= A·B, A from registers, B from shared memory.
#define WGMMA_RS(N, K, REGS, OUTS, A, B, SCALE, TRANS, PTX_TYPE, T)                                \
    template <int TRANS_B>                                                                          \
    __device__ __forceinline__ void wgmma_rs(float (&d)[K], const uint32_t (&a)[4], uint64_t b_desc, \
                                             int scale_d, T*) {                                     \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n"                            \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE " "    \
                     REGS ", " A ", " B ", p, 1, 1, " TRANS ";\n}\n"                                \
                     : OUTS(d)                                                                      \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d),       \
                       "n"(TRANS_B));                                                               \
    }
WGMMA_SS(64, 32, WG_REGS32, WG_OUT32, "%32", "%33", "%34", "%35", "bf16", __nv_bfloat16)
WGMMA_SS(64, 32, WG_REGS32, WG_OUT32, "%32", "%33", "%34", "%35", "f16", __half)
WGMMA_SS(128, 64, WG_REGS64, WG_OUT64, "%64", "%65", "%66", "%67", "bf16", __nv_bfloat16)
WGMMA_SS(128, 64, WG_REGS64, WG_OUT64, "%64", "%65", "%66", "%67", "f16", __half)
WGMMA_RS(64, 32, WG_REGS32, WG_OUT32, "{%32, %33, %34, %35}", "%36", "%37", "%38", "bf16", __nv_bfloat16)
WGMMA_RS(64, 32, WG_REGS32, WG_OUT32, "{%32, %33, %34, %35}", "%36", "%37", "%38", "f16", __half)
WGMMA_RS(128, 64, WG_REGS64, WG_OUT64, "{%64, %65, %66, %67}", "%68", "%69", "%70", "bf16", __nv_bfloat16)
WGMMA_RS(128, 64, WG_REGS64, WG_OUT64, "{%64, %65, %66, %67}", "%68", "%69", "%70", "f16", __half)
#undef WGMMA_SS
#undef WGMMA_RS

#endif  // PADV_CUDA_EMU, WGMMA_AVAILABLE
