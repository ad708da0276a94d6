// attention_driver.cpp — kernels/attention.cu run on the CPU through emu.h
// against a direct f64 attention: the tensor-core kernel and its cp.async
// double-buffered variant (bf16 pool; head dims 32 and 64 with Q in
// registers, 256 with Q in shared memory, 512 with the output columns split
// over two blocks; whole and split key ranges with attention_merge) and the
// SIMT kernel (f32 pool, head dims 64 and 512), GQA, sliding windows,
// sequences continuing a cached prefix (`past`) and a softmax scale other
// than 1/√hd. The kernels at head dims ≤ 128 have passed their parity tests
// on an H200 (docs/gpu-results.md), so they also check the emulator:
// ldmatrix (.trans), mma.sync's fragments and the warp collectives as emu.h
// and mma_emu.h model them. Each launch is also held to the dynamic shared
// memory the launcher gives it (the header's sizes). attention_wg.cu's
// warpgroup (wgmma) kernel runs the same cases at head dims 64 and 128
// (wgmma_emu.h). Exit status 0 when every value is within tolerance. Built
// and run by tests/cuda_emulated.rs.
#include "emu.h"

// The dynamic shared memory of the SIMT kernel and of the tensor-core ones
// that use it (their `extern __shared__` array): up to Hopper's 227 KB.
alignas(16) float smem[1 << 16];

#include "attention.cu"

// attention_wg.cu's dynamic shared memory: 65 KB at hd 128, 1024-aligned.
alignas(1024) unsigned char wg_smem[(4 * 2 * 8192) + 1024];
#include "attention_wg.cu"

namespace {

struct Seq {
    int past, len;
};

// The packed batch: sequence s's pool blocks follow one another; its keys
// 0 … past + len − 1 are in the pool, its `len` new tokens are the queries.
struct Layout {
    std::vector<int32_t> seq_start, past, block_table, tiles;
    int max_blocks = 0, pool_rows = 0, n = 0;
    std::vector<int> key_row;  // per (sequence, key): pool row
};

Layout layout(const std::vector<Seq>& seqs) {
    Layout l;
    for (const Seq& s : seqs) l.max_blocks = std::max(l.max_blocks, (s.past + s.len + KV_BLOCK - 1) / KV_BLOCK);
    int block = 0;
    l.seq_start.push_back(0);
    l.block_table.assign(seqs.size() * l.max_blocks, -1);
    for (size_t s = 0; s < seqs.size(); ++s) {
        const int blocks = (seqs[s].past + seqs[s].len + KV_BLOCK - 1) / KV_BLOCK;
        for (int j = 0; j < blocks; ++j) l.block_table[s * l.max_blocks + j] = block + blocks - 1 - j;  // reversed
        block += blocks;
        l.past.push_back(seqs[s].past);
        for (int q0 = 0; q0 < seqs[s].len; q0 += ATTN_BR) l.tiles.insert(l.tiles.end(), {(int)s, q0});
        l.seq_start.push_back(l.seq_start.back() + seqs[s].len);
    }
    l.pool_rows = block * KV_BLOCK;
    l.n = l.seq_start.back();
    return l;
}

using Bf16 = __nv_bfloat16;
using MmaKernel = void (*)(const Bf16*, const Bf16*, const Bf16*, const int32_t*, const int32_t*, const int32_t*,
                           const int32_t*, Bf16*, int, int, int, int, int, float, float*, int);
using SimtKernel = void (*)(const float*, const float*, const float*, const int32_t*, const int32_t*, const int32_t*,
                            const int32_t*, float*, int, int, int, int, int, float);

// The kernel under test, launched as src/backend/cuda/attention.rs does.
struct Kernel {
    MmaKernel mma = nullptr;  // bf16 pool, with `stages` K/V stages
    SimtKernel simt = nullptr;  // f32 pool
    int stages = 1;
    bool wg = false;  // `mma` is attention_wg.cu's warpgroup kernel
};

// Dynamic shared memory the launcher gives it, bytes (the header's sizes;
// `mma_smem` there): SIMT (SIMT_BR·hd + ATTN_BC·(hd + 1) + ATTN_BC·hd)
// floats; tensor cores per stage a K tile of MMA_BC × (hd + 8) and a V tile
// of MMA_BC × (DV + 8) bf16, plus the Q tile ATTN_BR × (hd + 8) from hd 256,
// none for one stage below it (static).
size_t smem_bytes(const Kernel& k, int hd) {
    if (k.wg) return (size_t)2 * 2 * (hd / 64) * 8192 + 1024;  // 2 × (K, V), alignment
    if (k.simt) return (size_t)(SIMT_BR * hd + ATTN_BC * (hd + 1) + ATTN_BC * hd) * 4;
    if (k.stages == 1 && hd <= 128) return 0;
    const int dv = std::min(hd, 256);
    return (size_t)(k.stages * MMA_BC * (hd + 8 + dv + 8) + (hd > 128 ? ATTN_BR * (hd + 8) : 0)) * 2;
}

struct Case {
    int heads, kv_heads, hd, window, splits;
    float scale;  // 0: 1/√hd
    float q_mag;  // q uniform in ±q_mag
};

template <class T> void run(const char* name, const Kernel& k, const Case& c, uint64_t seed) {
    const int heads = c.heads, kv_heads = c.kv_heads, hd = c.hd, window = c.window, splits = c.splits;
    EmuRng rng{seed};
    const std::vector<Seq> seqs = {{0, 70}, {32, 5}, {16, 130}};
    const Layout l = layout(seqs);
    const int qd = heads * hd, kvd = kv_heads * hd, n = l.n;
    // q in the pool's dtype, as rope.cu writes it.
    const auto qf = rng.vec((size_t)n * qd, c.q_mag);
    std::vector<T> q(qf.size());
    for (size_t i = 0; i < q.size(); ++i) q[i] = from_f32<T>(qf[i]);
    std::vector<T> kp((size_t)l.pool_rows * kvd), vp((size_t)l.pool_rows * kvd);
    for (auto* pool : {&kp, &vp})
        for (T& x : *pool) x = from_f32<T>(rng.next());
    const float scale = c.scale != 0 ? c.scale : 1.0f / std::sqrt((float)hd);

    // Direct attention of every packed query.
    std::vector<double> want((size_t)n * qd);
    for (size_t s = 0; s < seqs.size(); ++s) {
        auto row_of = [&](int j) {
            return (size_t)l.block_table[s * l.max_blocks + j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK;
        };
        for (int i = 0; i < seqs[s].len; ++i) {
            const int r = l.seq_start[s] + i, p = seqs[s].past + i;
            for (int h = 0; h < heads; ++h) {
                const int kh = h / (heads / kv_heads);
                std::vector<double> sc;
                double mx = -INFINITY;
                for (int j = 0; j <= p; ++j) {
                    if (window > 0 && j <= p - window) {
                        sc.push_back(-INFINITY);
                        continue;
                    }
                    double d = 0;
                    for (int e = 0; e < hd; ++e)
                        d += (double)to_f32(q[(size_t)r * qd + h * hd + e]) * to_f32(kp[row_of(j) * kvd + kh * hd + e]);
                    sc.push_back(d * scale);
                    mx = std::max(mx, sc.back());
                }
                double sum = 0;
                for (double& x : sc) sum += (x = std::exp(x - mx));
                for (int e = 0; e < hd; ++e) {
                    double o = 0;
                    for (int j = 0; j <= p; ++j) o += sc[j] * to_f32(vp[row_of(j) * kvd + kh * hd + e]);
                    want[(size_t)r * qd + h * hd + e] = o / sum;
                }
            }
        }
    }

    std::vector<T> out((size_t)n * qd, from_f32<T>(NAN));
    std::vector<float> part((size_t)n * heads * splits * (hd + 2), NAN);
    const int tiles = (int)l.tiles.size() / 2;
    const size_t bytes = smem_bytes(k, hd);
    emu_smem_used = 0;
    if (k.mma) {
        // Blocks per (tile, head): one per DV = 256 output columns.
        const int parts = hd > 256 ? hd / 256 : 1;
        unsigned char* dyn = k.wg ? wg_smem : reinterpret_cast<unsigned char*>(smem);
        const size_t dyn_bytes = k.wg ? sizeof wg_smem : sizeof smem;
        emu_launch(dim3_{(unsigned)tiles, (unsigned)(heads * parts), (unsigned)splits}, MMA_WARPS * 32, dyn,
                   dyn_bytes, [&] {
                       k.mma((const Bf16*)q.data(), (const Bf16*)kp.data(), (const Bf16*)vp.data(), l.block_table.data(),
                             l.seq_start.data(), l.past.data(), l.tiles.data(), (Bf16*)out.data(), heads, kv_heads,
                             hd, l.max_blocks, window, scale, part.data(), splits);
                   });
        if (splits > 1)
            emu_launch(dim3_{(unsigned)n, (unsigned)heads, 1}, (unsigned)((hd + 31) / 32 * 32), nullptr, 0, [&] {
                attention_merge_bf16(part.data(), (Bf16*)out.data(), heads, hd, splits);
            });
    } else {
        emu_launch(dim3_{(unsigned)tiles, (unsigned)heads, 1}, ATTN_WARPS * 32, reinterpret_cast<unsigned char*>(smem),
                   sizeof smem, [&] {
                       k.simt((const float*)q.data(), (const float*)kp.data(), (const float*)vp.data(),
                              l.block_table.data(), l.seq_start.data(), l.past.data(), l.tiles.data(),
                              (float*)out.data(), heads, kv_heads, hd, l.max_blocks, window, scale);
                   });
    }
    if (emu_smem_used > bytes) {
        std::fprintf(stderr, "FAIL %s: wrote %zu bytes of dynamic shared memory, the launcher gives %zu\n", name,
                     emu_smem_used, bytes);
        ++emu_failures;
    }
    std::vector<float> got(out.size());
    for (size_t i = 0; i < out.size(); ++i) got[i] = to_f32(out[i]);
    // bf16: Q·scale·log2e and P rounded to bf16 for the products, O rounded
    // to bf16: ~2.5e-3 measured here (bound 1e-2); f32 (SIMT): sums in
    // another order.
    emu_check(name, got, want, k.mma ? 1e-2 : 1e-5);
}

}  // namespace

int main() {
    emu_watchdog(1200);
    const Kernel d32{paged_attention_mma_bf16_d32}, d64{paged_attention_mma_bf16_d64};
    const Kernel d256{paged_attention_mma_bf16_d256}, d512{paged_attention_mma_bf16_d512};
    const Kernel p32{paged_attention_mma2_bf16_d32, nullptr, 2}, p64{paged_attention_mma2_bf16_d64, nullptr, 2};
    const Kernel p256{paged_attention_mma2_bf16_d256, nullptr, 2};
    // Q of ±1/16 keeps the unscaled (scale 1) scores of hd 256 / 512 around
    // ±0.5, so the softmax does not saturate to one key.
    run<Bf16>("attention mma hd64 gqa2", d64, {4, 2, 64, 0, 1, 0, 1}, 51);
    run<Bf16>("attention mma hd32 window 40 split 3", d32, {4, 1, 32, 40, 3, 0, 1}, 52);
    run<Bf16>("attention mma hd256 gqa2 window 80", d256, {4, 2, 256, 80, 1, 0, 1}, 54);
    run<Bf16>("attention mma hd256 split 3 scale 1", d256, {2, 1, 256, 0, 3, 1.0f, 1.0f / 16}, 55);
    run<Bf16>("attention mma hd512 gqa2 window 80", d512, {4, 2, 512, 80, 1, 0, 1}, 56);
    run<Bf16>("attention mma hd512 split 3 scale 1", d512, {2, 1, 512, 0, 3, 1.0f, 1.0f / 16}, 57);
    const Kernel w64{paged_attention_wg_bf16_d64, nullptr, 2, true};
    const Kernel w128{paged_attention_wg_bf16_d128, nullptr, 2, true};
    struct Staged {
        const char* label;
        const Kernel& kernel;
        Case c;
        uint64_t seed;
    };
    const Staged staged[] = {
        {"mma2 hd64 gqa2", p64, {4, 2, 64, 0, 1, 0, 1}, 51},
        {"mma2 hd32 window 40 split 3", p32, {4, 1, 32, 40, 3, 0, 1}, 52},
        {"mma2 hd256 gqa2 window 80 split 2", p256, {4, 2, 256, 80, 2, 0, 1}, 58},
        {"wg hd64 gqa2", w64, {4, 2, 64, 0, 1, 0, 1}, 51},
        {"wg hd64 window 40 split 3", w64, {4, 1, 64, 40, 3, 0, 1}, 52},
        {"wg hd128 gqa2 window 80 split 2", w128, {4, 2, 128, 80, 2, 0, 1}, 58},
        {"wg hd128 scale 1", w128, {2, 2, 128, 0, 1, 1.0f, 1.0f / 8}, 60},
    };
    // cp.async done at its wait (a read before the wait sees the NaN fill),
    // then at issue (a stage refilled while a warp still reads it).
    for (const bool lazy : {true, false}) {
        emu_lazy_copies = lazy;
        for (const Staged& k : staged) {
            char name[128];
            std::snprintf(name, sizeof name, "attention %s, %s", k.label, lazy ? "copies at wait" : "copies at issue");
            run<Bf16>(name, k.kernel, k.c, k.seed);
        }
    }
    run<float>("attention simt f32 hd64", Kernel{nullptr, paged_attention_f32_s2}, {2, 1, 64, 0, 1, 0, 1}, 53);
    run<float>("attention simt f32 hd512 gqa2 window 80 scale 1", Kernel{nullptr, paged_attention_f32_s16},
               {4, 2, 512, 80, 1, 1.0f, 1.0f / 16}, 59);
    std::printf("%s: %d failures\n", emu_failures ? "FAILED" : "ok", emu_failures);
    return emu_failures ? 1 : 0;
}
