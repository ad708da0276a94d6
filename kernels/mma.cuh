// mma.cuh — tensor-core building blocks shared by the kernels that use
// mma.sync (attention.cu, lm_head_fold.cu): operand packing, the m16n8k16
// product, ldmatrix loads of fragments from shared memory, and cp.async
// copies global → shared. sm_80 and later.
//
// Fragment layouts of mma.sync.m16n8k16 (g = lane / 4, c = lane % 4; each
// register holds two consecutive-column elements, the lower column in the
// low half):
//   A 16×16 row-major: a0 (g, 2c..), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B 16×8 (k × n):    b0 (k 2c.., n g), b1 (k 2c+8.., n g)
//   C 16×8 f32:        c0,c1 (g, 2c, 2c+1), c2,c3 (g+8, 2c, 2c+1)
#pragma once

#include "common.cuh"

__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16*) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half*) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// d += a·b (16×16 · 16×8, f32 accumulate), one overload per operand type.
#define MMA16816(T, PTX_TYPE)                                                                  \
    __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4],            \
                                             uint32_t b0, uint32_t b1, T*) {                   \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "    \
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                 \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                          \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));          \
    }
MMA16816(__nv_bfloat16, "bf16")
MMA16816(__half, "f16")

// Four 8×8 b16 matrices from shared memory, transposed (row addresses from
// lanes 8m … 8m + 7 for matrix m; 16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// Four 8×8 b16 matrices from shared memory, as stored (row addresses from
// lanes 8m … 8m + 7 for matrix m; 16-byte aligned): lane (g, c) receives
// elements 2c, 2c+1 of row g of each matrix, an A or B fragment register.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// 16 bytes global → shared without passing through registers; the first
// `src_bytes` (0 or 16) are read, the rest of the 16 zero-filled.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N committed groups of this thread are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
