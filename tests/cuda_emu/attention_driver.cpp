// attention_driver.cpp — kernels/attention.cu run on the CPU through emu.h
// against a direct f64 attention: the tensor-core kernel and its cp.async
// double-buffered variant (bf16 pool, head dims 32 and 64, whole and split
// key ranges with attention_merge) and the
// SIMT kernel (f32 pool), GQA, a sliding window, and sequences continuing a
// cached prefix (`past`). This kernel has passed its parity tests on an
// H200 (docs/gpu-results.md), so it also checks the emulator: ldmatrix
// (.trans), mma.sync's fragments and the warp collectives as emu.h and
// mma_emu.h model them. Exit status 0 when every value is within
// tolerance. Built and run by tests/cuda_emulated.rs.
#include "emu.h"

// The dynamic shared memory of the SIMT kernel and of the double-buffered
// tensor-core one (their `extern __shared__` array).
alignas(16) float smem[1 << 14];

#include "attention.cu"

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

template <class T>
// `stages`: 0 the SIMT kernel, 1 the tensor-core kernel, 2 its cp.async
// double-buffered variant.
void run(const char* name, int heads, int kv_heads, int hd, int window, int splits, int stages, uint64_t seed) {
    const bool mma = stages > 0;
    EmuRng rng{seed};
    const std::vector<Seq> seqs = {{0, 70}, {32, 5}, {16, 130}};
    const Layout l = layout(seqs);
    const int qd = heads * hd, kvd = kv_heads * hd, n = l.n;
    const auto q = rng.vec((size_t)n * qd, 1.0f);
    std::vector<T> kp((size_t)l.pool_rows * kvd), vp((size_t)l.pool_rows * kvd);
    for (auto* pool : {&kp, &vp})
        for (T& x : *pool) x = from_f32<T>(rng.next());
    const float scale = 1.0f / std::sqrt((float)hd);

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
                        d += (double)q[(size_t)r * qd + h * hd + e] * to_f32(kp[row_of(j) * kvd + kh * hd + e]);
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
    if (mma) {
        auto kernel = stages == 2 ? (hd == 32 ? paged_attention_mma2_bf16_d32 : paged_attention_mma2_bf16_d64)
                                  : (hd == 32 ? paged_attention_mma_bf16_d32 : paged_attention_mma_bf16_d64);
        emu_launch(dim3_{(unsigned)tiles, (unsigned)heads, (unsigned)splits}, MMA_WARPS * 32, nullptr, 0, [&] {
            kernel(q.data(), (const __nv_bfloat16*)kp.data(), (const __nv_bfloat16*)vp.data(), l.block_table.data(),
                   l.seq_start.data(), l.past.data(), l.tiles.data(), (__nv_bfloat16*)out.data(), heads, kv_heads, hd,
                   l.max_blocks, window, scale, part.data(), splits);
        });
        if (splits > 1)
            emu_launch(dim3_{(unsigned)n, (unsigned)heads, 1}, (unsigned)((hd + 31) / 32 * 32), nullptr, 0, [&] {
                attention_merge_bf16(part.data(), (__nv_bfloat16*)out.data(), heads, hd, splits);
            });
    } else {
        emu_launch(dim3_{(unsigned)tiles, (unsigned)heads, 1}, ATTN_WARPS * 32, nullptr, 0, [&] {
            paged_attention_f32_s2((const float*)q.data(), (const float*)kp.data(), (const float*)vp.data(),
                                   l.block_table.data(), l.seq_start.data(), l.past.data(), l.tiles.data(),
                                   (float*)out.data(), heads, kv_heads, hd, l.max_blocks, window, scale);
        });
    }
    std::vector<float> got(out.size());
    for (size_t i = 0; i < out.size(); ++i) got[i] = to_f32(out[i]);
    // bf16: Q·scale·log2e and P rounded to bf16 for the products, O rounded
    // to bf16: ~2.5e-3 measured here (bound 1e-2); f32 (SIMT): sums in
    // another order.
    emu_check(name, got, want, mma ? 1e-2 : 1e-5);
}

}  // namespace

int main() {
    emu_watchdog(600);
    run<__nv_bfloat16>("attention mma hd64 gqa2", 4, 2, 64, 0, 1, 1, 51);
    run<__nv_bfloat16>("attention mma hd32 window 40 split 3", 4, 1, 32, 40, 3, 1, 52);
    // cp.async done at its wait (a read before the wait sees the NaN fill),
    // then at issue (a stage refilled while a warp still reads it).
    for (const bool lazy : {true, false}) {
        emu_lazy_copies = lazy;
        run<__nv_bfloat16>(lazy ? "attention mma2 hd64 gqa2, copies at wait" : "attention mma2 hd64 gqa2, copies at issue",
                           4, 2, 64, 0, 1, 2, 51);
        run<__nv_bfloat16>(lazy ? "attention mma2 hd32 window 40 split 3, copies at wait"
                                : "attention mma2 hd32 window 40 split 3, copies at issue",
                           4, 1, 32, 40, 3, 2, 52);
    }
    run<float>("attention simt f32 hd64", 2, 1, 64, 0, 1, 0, 53);
    std::printf("%s: %d failures\n", emu_failures ? "FAILED" : "ok", emu_failures);
    return emu_failures ? 1 : 0;
}
