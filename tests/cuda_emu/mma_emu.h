// mma_emu.h — kernels/mma.cuh's functions on the CPU (see emu.h), from the
// PTX ISA's definitions of the fragment layouts, so a kernel's use of them
// can be checked without a GPU. The layouts (g = lane / 4, c = lane % 4):
//   mma.sync.m16n8k16, A 16×16 row-major: a0 (g, 2c..), a1 (g+8, 2c..),
//     a2 (g, 2c+8..), a3 (g+8, 2c+8..); B 16×8 (k × n): b0 (k 2c.., n g),
//     b1 (k 2c+8.., n g); C/D: c0,c1 (g, 2c, 2c+1), c2,c3 (g+8, 2c, 2c+1);
//     each register two consecutive-column elements, the lower in the low half;
//   ldmatrix.m8n8.x4: lanes 8m … 8m+7 address rows 0–7 of matrix m; lane t
//     receives elements 2c, 2c+1 of row g of each (.trans: elements (2c, g)
//     and (2c+1, g)).
#pragma once

#include "emu.h"

inline uint32_t pack2(float lo, float hi, __nv_bfloat16*) {
    return (uint32_t)__float2bfloat16_rn(lo).bits | ((uint32_t)__float2bfloat16_rn(hi).bits << 16);
}
inline uint32_t pack2(float lo, float hi, __half*) {
    return (uint32_t)__float2half_rn(lo).bits | ((uint32_t)__float2half_rn(hi).bits << 16);
}

inline float emu_b16(uint16_t bits, __nv_bfloat16*) { return __bfloat162float(__nv_bfloat16{bits}); }
inline float emu_b16(uint16_t bits, __half*) { return __half2float(__half{bits}); }

// d += a·b over the warp.
template <class T>
inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, T* tag) {
    auto slot = emu_slots();
    const int lane = emu_lane(), g = lane / 4, c = lane % 4;
    uint32_t* mine = reinterpret_cast<uint32_t*>(slot[lane]);
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b0;
    mine[5] = b1;
    emu_warp().bar.arrive_and_wait();
    auto half = [](uint32_t v, int k) { return (uint16_t)(k % 2 ? v >> 16 : v & 0xffff); };
    auto A = [&](int r, int k) {
        const uint32_t* l = reinterpret_cast<const uint32_t*>(slot[(r % 8) * 4 + (k % 8) / 2]);
        return emu_b16(half(l[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k), tag);
    };
    auto B = [&](int k, int n) {
        const uint32_t* l = reinterpret_cast<const uint32_t*>(slot[n * 4 + (k % 8) / 2]);
        return emu_b16(half(l[4 + (k >= 8 ? 1 : 0)], k), tag);
    };
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i / 2), n = 2 * c + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
        out[i] = s;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <bool TRANS> inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    auto slot = emu_slots();
    const int lane = emu_lane(), g = lane / 4, c = lane % 4;
    std::memcpy(slot[lane], &row, sizeof(row));
    emu_warp().bar.arrive_and_wait();
    auto addr = [&](int m, int rr) {
        const void* p;
        std::memcpy(&p, slot[8 * m + rr], sizeof(p));
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
            std::fprintf(stderr, "emu: ldmatrix row address %p not 16-byte aligned\n", p);
            std::abort();
        }
        return static_cast<const uint16_t*>(p);
    };
    for (int m = 0; m < 4; ++m) {
        uint16_t lo, hi;
        if (TRANS) {
            lo = addr(m, 2 * c)[g];
            hi = addr(m, 2 * c + 1)[g];
        } else {
            lo = addr(m, g)[2 * c];
            hi = addr(m, g)[2 * c + 1];
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { emu_ldmatrix_x4<false>(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { emu_ldmatrix_x4<true>(r, row); }

inline void cp_async16(void* smem, const void* gmem, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(smem) % 16 || (src_bytes && reinterpret_cast<uintptr_t>(gmem) % 16)) {
        std::fprintf(stderr, "emu: cp.async of 16 bytes at unaligned %p <- %p\n", smem, gmem);
        std::abort();
    }
    const EmuCopy c{smem, gmem, src_bytes};
    if (emu_lazy_copies)
        emu_open.push_back(c);
    else
        emu_do(c);
}
inline void cp_async_commit() {
    emu_groups.push_back(std::move(emu_open));
    emu_open.clear();
}
template <int N> inline void cp_async_wait() {
    while (emu_groups.size() > (size_t)N) {
        for (const EmuCopy& c : emu_groups.front()) emu_do(c);
        emu_groups.erase(emu_groups.begin());
    }
}
