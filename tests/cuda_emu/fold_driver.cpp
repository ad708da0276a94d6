// fold_driver.cpp — kernels/lm_head_fold.cu run on the CPU through emu.h,
// against a direct computation of the same scores (f64 logits of the
// rounded operands, exact softmax statistics, top-20 by sorting), for both
// 16-bit dtypes, with and without the policy, with cp.async copies deferred
// to their wait and done at issue. Exit status 0 when every score is within
// tolerance. Built and run by tests/cuda_emulated.rs.
#include <algorithm>

#include "emu.h"

// The kernel's dynamic shared memory (its `extern __shared__` array).
alignas(16) unsigned char fold_raw[FOLD_SMEM_BYTES];

#include "lm_head_fold.cu"
#include "direct_scores.h"

namespace {

template <class T> T to16(float v);
template <> __nv_bfloat16 to16<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __half to16<__half>(float v) { return __float2half_rn(v); }

struct Case {
    int n, d, vocab;
    float cap;  // 0: none
    int splits;
};

template <class T>
int run_case(const Case& c, uint64_t seed, const char* dtype, bool lazy,
             void (*fold_p)(const T*, const T*, const uint32_t*, Partial*, float*, int, int, int, int, float),
             void (*fold_r)(const T*, const T*, const uint32_t*, Partial*, float*, int, int, int, int, float)) {
    emu_lazy_copies = lazy;
    const int n = c.n, d = c.d, V = c.vocab;
    EmuRng rng{seed};
    std::vector<float> hp(n * d), wp((size_t)V * d), hr(n * d), wr((size_t)V * d);
    for (auto* v : {&hp, &wp, &hr, &wr})
        for (float& x : *v) x = rng.next();
    // Row 0 all ties; row 1's largest logit in the last column.
    std::fill(hp.begin(), hp.begin() + d, 0.0f);
    for (int k = 0; k < d; ++k) wp[(size_t)(V - 1) * d + k] = 0.25f * hp[d + k];
    std::vector<uint32_t> tg(n);
    for (int r = 0; r < n; ++r) tg[r] = (uint32_t)((rng.next() * 0.5f + 0.5f) * V) % V;
    tg[1] = V - 1;
    tg[2] = 0;
    auto round16 = [](const std::vector<float>& v, std::vector<T>& out) {
        out.resize(v.size());
        for (size_t i = 0; i < v.size(); ++i) out[i] = to16<T>(v[i]);
    };
    std::vector<T> hp16, wp16, hr16, wr16;
    round16(hp, hp16), round16(wp, wp16), round16(hr, hr16), round16(wr, wr16);
    auto logits = [&](const std::vector<T>& h, const std::vector<T>& w, int r) {
        std::vector<double> z(V);
        for (int v = 0; v < V; ++v) {
            double s = 0;
            for (int k = 0; k < d; ++k) s += (double)to_f32(h[r * d + k]) * (double)to_f32(w[(size_t)v * d + k]);
            z[v] = c.cap > 0 ? c.cap * std::tanh(s / c.cap) : s;
        }
        return z;
    };

    const int cols = (V + FOLD_BN - 1) / FOLD_BN;
    const int splits0 = std::min(std::max(c.splits, 1), std::min(32, cols));
    const int per_split = (cols + splits0 - 1) / splits0 * FOLD_BN;
    const int splits = (V + per_split - 1) / per_split;
    int failures = 0;
    for (int has_policy = 1; has_policy >= 0; --has_policy) {
        std::vector<Partial> part((size_t)n * splits);
        std::memset(part.data(), 0xFF, part.size() * sizeof(Partial));
        std::vector<float> zt_p(n, NAN), zt_r(n, NAN);
        std::vector<float4> out(n, float4{NAN, NAN, NAN, NAN});
        const dim3_ grid{(unsigned)((n + FOLD_BM - 1) / FOLD_BM), (unsigned)splits, 1};
        if (has_policy)
            emu_launch(grid, FOLD_THREADS, fold_raw, sizeof(fold_raw), [&] {
                fold_p(hp16.data(), wp16.data(), tg.data(), part.data(), zt_p.data(), n, d, V, per_split, c.cap);
            });
        emu_launch(grid, FOLD_THREADS, fold_raw, sizeof(fold_raw), [&] {
            fold_r(hr16.data(), wr16.data(), tg.data(), part.data(), zt_r.data(), n, d, V, per_split, c.cap);
        });
        emu_launch(dim3_{(unsigned)((n + 7) / 8), 1, 1}, 256, nullptr, 0, [&] {
            lm_head_fold_finish(zt_p.data(), zt_r.data(), part.data(), out.data(), n, splits, has_policy);
        });
        const double abs_tol = 3e-4 * std::max(1.0, d / 256.0);
        double worst = 0;
        for (int r = 0; r < n; ++r) {
            const Want q = direct(logits(hr16, wr16, r), tg[r]);
            const float* g = &out[r].x;
            double want[4];
            if (has_policy) {
                const Want p = direct(logits(hp16, wp16, r), tg[r]);
                want[0] = p.logp, want[1] = q.logp, want[2] = p.entropy, want[3] = p.top_mean;
            } else {
                want[0] = want[1] = q.logp, want[2] = g[2], want[3] = g[3];  // only logp columns
            }
            for (int k = 0; k < 4; ++k) {
                const double e = std::fabs((double)g[k] - want[k]);
                worst = std::max(worst, e);
                if (!(e <= abs_tol + 2e-5 * std::fabs(want[k]))) {
                    if (failures < 12)
                        std::fprintf(stderr, "FAIL %s n %d d %d V %d cap %g splits %d policy %d lazy %d: row %d col %d got %g want %g\n",
                                     dtype, n, d, V, c.cap, splits, has_policy, lazy, r, k, g[k], want[k]);
                    ++failures;
                }
            }
        }
        std::printf("%s n %d d %d vocab %d cap %g splits %d policy %d lazy copies %d: max |Δ| %.2e\n", dtype, n, d, V,
                    c.cap, splits, has_policy, lazy, worst);
    }
    return failures;
}


}  // namespace

int main() {
    emu_watchdog(600);
    // (rows, hidden, vocab, soft-cap, splits): two row tiles, the last one
    // partial; a hidden size ending mid-stage (72 = 2·32 + 8); a vocabulary
    // ending mid-sub-tile and mid-warp-half (1100 = 8·128 + 76); splits that
    // leave the last one short; one split; the soft-cap; a vocabulary
    // smaller than the top-k fills and than half a sub-tile.
    const Case cases[] = {
        {150, 72, 1100, 0.0f, 3},
        {40, 64, 700, 5.0f, 1},
        {9, 32, 2000, 0.0f, 7},
        {3, 8, 21, 0.0f, 1},  // one k-chunk, 21 columns: the second warp half all masked
    };
    int failures = 0;
    uint64_t seed = 11;
    // Every case in both dtypes with copies deferred to their wait; the
    // first also with copies done at issue.
    for (const Case& c : cases) {
        failures += run_case<__nv_bfloat16>(c, seed++, "bf16", true, lm_head_fold_policy_bf16,
                                            lm_head_fold_reference_bf16);
        failures += run_case<__half>(c, seed++, "f16", true, lm_head_fold_policy_f16, lm_head_fold_reference_f16);
    }
    failures += run_case<__nv_bfloat16>(cases[0], seed++, "bf16", false, lm_head_fold_policy_bf16,
                                        lm_head_fold_reference_bf16);
    std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
