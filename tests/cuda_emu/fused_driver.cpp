// fused_driver.cpp — kernels/fused_logprob.cu run on the CPU through emu.h,
// against a direct f64 computation of the four scores (log-probs of both
// rows, the policy's entropy and top-20 mean), with and without Gemma's
// logit soft-cap, whole rows and rows cut into slices, a vocabulary ending
// mid-float4, a late maximum and a row of ties. The kernel is otherwise
// checked against the CPU backend on a GPU (tests/cuda_kernel_parity.rs).
// Exit status 0 when every score is within tolerance. Built and run by
// tests/cuda_emulated.rs.
#include <algorithm>

#include "emu.h"

#include "fused_logprob.cu"
#include "direct_scores.h"

namespace {

// The scores of a row of f32 logits, soft-capped first when `cap` > 0.
Want direct(const float* row, int vocab, int target, float cap) {
    std::vector<double> z(vocab);
    for (int v = 0; v < vocab; ++v) z[v] = cap > 0 ? cap * std::tanh((double)row[v] / cap) : row[v];
    return ::direct(z, target);
}

int run(int vocab, float scale, float cap, int splits, uint64_t seed) {
    EmuRng rng{seed};
    const int rows = 5, ld = (vocab + 3) / 4 * 4 + 4;
    std::vector<float> lp((size_t)rows * ld, NAN), lr((size_t)rows * ld, NAN);
    for (int r = 0; r < rows; ++r)
        for (int v = 0; v < vocab; ++v) {
            lp[(size_t)r * ld + v] = rng.next() * scale;
            lr[(size_t)r * ld + v] = rng.next() * scale;
        }
    lp[(size_t)ld + vocab - 1] = 2.0f * scale;                          // a late maximum
    std::fill(lp.begin() + 2 * ld, lp.begin() + 2 * ld + vocab, 0.5f);  // ties everywhere
    std::vector<uint32_t> tg(rows);
    for (int r = 0; r < rows; ++r) tg[r] = (uint32_t)(r * 977 + 13) % vocab;
    tg[1] = vocab - 1;
    std::vector<Partial> part((size_t)rows * splits);
    std::memset(part.data(), 0xFF, part.size() * sizeof(Partial));
    std::vector<float4> out(rows, float4{NAN, NAN, NAN, NAN});
    emu_launch(dim3_{(unsigned)rows, (unsigned)splits, 1}, FUSED_THREADS, nullptr, 0, [&] {
        fused_logprob_partial(lp.data(), lr.data(), part.data(), vocab, ld, cap);
    });
    emu_launch(dim3_{(unsigned)((rows + 7) / 8), 1, 1}, FUSED_THREADS, nullptr, 0, [&] {
        fused_logprob_finish(lp.data(), lr.data(), tg.data(), part.data(), out.data(), rows, splits, ld, cap);
    });
    int failures = 0;
    double worst = 0;
    for (int r = 0; r < rows; ++r) {
        const Want p = direct(&lp[(size_t)r * ld], vocab, tg[r], cap);
        const Want q = direct(&lr[(size_t)r * ld], vocab, tg[r], cap);
        const double want[4] = {p.logp, q.logp, p.entropy, p.top_mean};
        const float* g = &out[r].x;
        for (int k = 0; k < 4; ++k) {
            const double e = std::fabs((double)g[k] - want[k]);
            worst = std::max(worst, e);
            if (!(e <= 3e-5 + 2e-5 * std::fabs(want[k]))) {
                if (failures < 12)
                    std::fprintf(stderr, "FAIL vocab %d cap %g splits %d: row %d col %d got %g want %g\n", vocab,
                                 cap, splits, r, k, g[k], want[k]);
                ++failures;
            }
        }
    }
    std::printf("fused vocab %d scale %g cap %g splits %d: max |Δ| %.2e\n", vocab, scale, cap, splits, worst);
    return failures;
}

}  // namespace

int main() {
    emu_watchdog(300);
    int failures = 0;
    uint64_t seed = 31;
    // (vocab, logit scale, soft-cap, slices): a vocabulary ending mid-float4;
    // Gemma's cap at 30 on logits that reach past it.
    for (int splits : {1, 3})
        for (float cap : {0.0f, 30.0f}) failures += run(4099, cap > 0 ? 40.0f : 10.0f, cap, splits, seed++);
    failures += run(7, 3.0f, 0.0f, 1, seed++);
    std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
