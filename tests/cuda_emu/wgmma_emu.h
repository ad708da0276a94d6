// wgmma_emu.h — kernels/wgmma.cuh's products on the CPU (see emu.h), from
// the PTX ISA's definitions, so a kernel's use of them can be checked
// without a GPU; kernels/wgmma.cuh includes it under PADV_CUDA_EMU and keeps
// its own swizzle and descriptor encoding, which this file decodes:
//   descriptor: bits 0–13 start address >> 4, 16–29 LBO >> 4, 32–45 SBO >> 4,
//     49–51 base offset (must be 0), 62–63 swizzle (must be 1: 128 bytes);
//   K-major element (row, k): start + (row / 8)·SBO + (row % 8)·128 + 2k;
//   MN-major element (k, n): start + (n / 64)·LBO + 2(n % 64) + (k / 8)·SBO + (k % 8)·128;
//   then byte address bits 4–6 XOR bits 7–9 (the 128-byte swizzle);
//   D: d[i] at row 16w + g + 8·((i / 2) % 2), column 8·(i / 4) + 2c + i % 2;
//   A registers: a0 (16w + g, 2c..), a1 (+8 rows), a2 (+8 columns), a3 (both).
// A product is recorded at issue (register A fragments gathered over the
// warpgroup then) and computed at the `wgmma_wait` that completes it,
// reading shared memory and d at that point; a thread that ends with one in
// flight, or a descriptor outside these layouts, aborts.
#pragma once

#include "emu.h"
#include "mma_emu.h"  // emu_b16

inline void fence_proxy_async() {}
inline void wgmma_fence() {}
template <int K> inline void wgmma_fence_operands(float (&)[K]) {}

struct EmuWgmma {
    float* d;
    int regs;  // N / 2
    bool scale_d, trans_b;
    float (*decode)(uint16_t);  // a 16-bit operand's value (emu_b16 of T)
    uint64_t a_desc, b_desc;
    std::vector<float> a;  // 64 × 16 when A came from registers
};
inline thread_local std::vector<EmuWgmma> emu_wg_open;
inline thread_local std::vector<std::vector<EmuWgmma>> emu_wg_groups;

[[noreturn]] inline void emu_wg_fail(const char* why, uint64_t desc) {
    std::fprintf(stderr, "emu: wgmma descriptor %#llx: %s\n", (unsigned long long)desc, why);
    std::abort();
}

// Element (mn, k) of a 128B-swizzled operand, K-major or MN-major, as bits.
inline uint16_t emu_wg_elem(uint64_t desc, bool mn_major, int mn, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4, lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4,
                   sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    if ((desc >> 62) != 1) emu_wg_fail("only the 128-byte swizzle is emulated", desc);
    if ((desc >> 49) & 7) emu_wg_fail("a base offset is not emulated", desc);
    if ((start >> 7) & 7) emu_wg_fail("start is not on row 0 of a swizzle atom", desc);
    if (!mn_major && (start & 127) + 2 * k >= 128) emu_wg_fail("a K-major k-step crosses its 128-byte row", desc);
    uint32_t off = mn_major ? start + (mn / 64) * lbo + 2 * (mn % 64) + (k / 8) * sbo + (k % 8) * 128
                            : start + (mn / 8) * sbo + (mn % 8) * 128 + 2 * k;
    off ^= ((off >> 7) & 7) << 4;
    if (off + 2 > emu_smem_bytes) emu_wg_fail("an element lies past the shared memory", desc);
    uint16_t bits;
    std::memcpy(&bits, emu_smem_origin + off, 2);
    return bits;
}

inline void emu_wg_run(EmuWgmma& op) {
    const int t = threadIdx.x % 128, w = t / 32, g = (t % 32) / 4, c = t % 4;
    for (int i = 0; i < op.regs; ++i) {
        const int row = 16 * w + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * c + i % 2;
        float s = op.scale_d ? op.d[i] : 0.0f;
        for (int k = 0; k < 16; ++k) {
            const float a = op.a.empty() ? op.decode(emu_wg_elem(op.a_desc, false, row, k)) : op.a[row * 16 + k];
            s += a * op.decode(emu_wg_elem(op.b_desc, op.trans_b, col, k));
        }
        op.d[i] = s;
    }
}

template <int K, class T>
inline void emu_wgmma(float (&d)[K], const uint32_t* a, uint64_t a_desc, uint64_t b_desc, int scale_d,
                      bool trans_b, T*) {
    static_assert(K == 32 || K == 64, "m64n64 and m64n128");
    if (emu_block->groups.empty()) {
        std::fprintf(stderr, "emu: wgmma in a block that is not whole warpgroups\n");
        std::abort();
    }
    EmuGroup& grp = *emu_block->groups[threadIdx.x / 128];
    auto& slot = grp.slots[emu_group_phase++ & 1];
    const int t = threadIdx.x % 128;
    if (a)
        for (int r = 0; r < 4; ++r) slot[t][r] = a[r];
    grp.bar.arrive_and_wait();  // a collective of the warpgroup, as .sync.aligned
    EmuWgmma op{d, K, scale_d != 0, trans_b, [](uint16_t b) { return emu_b16(b, (T*)nullptr); }, a_desc, b_desc, {}};
    if (a) {
        op.a.resize(64 * 16);
        for (int u = 0; u < 128; ++u) {
            const int w = u / 32, g = (u % 32) / 4, c = u % 4;
            for (int r = 0; r < 4; ++r) {
                const int row = 16 * w + g + 8 * (r % 2), k = 2 * c + 8 * (r / 2);
                const uint32_t v = slot[u][r];
                op.a[row * 16 + k] = op.decode(v & 0xffff);
                op.a[row * 16 + k + 1] = op.decode(v >> 16);
            }
        }
    }
    emu_wg_open.push_back(std::move(op));
    emu_thread_end = [](unsigned t) {
        if (!emu_wg_open.empty() || !emu_wg_groups.empty()) {
            std::fprintf(stderr, "emu: thread %u ended with wgmma products in flight\n", t);
            std::abort();
        }
    };
}

template <int TRANS_B, int K, class T>
inline void wgmma_ss(float (&d)[K], uint64_t a_desc, uint64_t b_desc, int scale_d, T* tag) {
    emu_wgmma(d, nullptr, a_desc, b_desc, scale_d, TRANS_B != 0, tag);
}
template <int TRANS_B, int K, class T>
inline void wgmma_rs(float (&d)[K], const uint32_t (&a)[4], uint64_t b_desc, int scale_d, T* tag) {
    emu_wgmma(d, a, 0, b_desc, scale_d, TRANS_B != 0, tag);
}

inline void wgmma_commit() {
    emu_wg_groups.push_back(std::move(emu_wg_open));
    emu_wg_open.clear();
}
template <int N> inline void wgmma_wait() {
    while (emu_wg_groups.size() > (size_t)N) {
        for (EmuWgmma& op : emu_wg_groups.front()) emu_wg_run(op);
        emu_wg_groups.erase(emu_wg_groups.begin());
    }
}
