// mlp_driver.cpp — kernels/act_mul.cu run on the CPU through emu.h against
// direct f64 computations: SwiGLU's and GeGLU's gate (the element-wise and
// the 16-byte paths) and Gemma's per-layer input gate, which rebuilds the
// layer's per-layer input from the embedding's projection and the table
// (`P = (rmsnorm(e · proj_scale) · w + table[tok, l] · embed_scale) ·
// combine_scale`, then `gelu_tanh(gate) · P`). The kernels are otherwise
// checked against the CPU backend on a GPU (tests/cuda_kernel_parity.rs).
// Exit status 0 when every value is within tolerance. Built and run by
// tests/cuda_emulated.rs.
#include "emu.h"

#include "act_mul.cu"

namespace {

double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
double silu(double x) { return x / (1.0 + std::exp(-x)); }

void act_cases() {
    EmuRng rng{21};
    // 512 wide: 16-byte packs of 4 f32; 300: one element per thread.
    for (int gelu_act = 0; gelu_act < 2; ++gelu_act)
        for (int inter : {300, 512}) {
            const int n = 7;
            const auto gu = rng.vec((size_t)n * 2 * inter, 6.0f);
            std::vector<double> want((size_t)n * inter);
            for (int r = 0; r < n; ++r)
                for (int i = 0; i < inter; ++i) {
                    const double g = gu[(size_t)r * 2 * inter + i], u = gu[(size_t)r * 2 * inter + inter + i];
                    want[(size_t)r * inter + i] = (gelu_act ? gelu(g) : silu(g)) * u;
                }
            const int vec = inter % 4 == 0;
            const int threads = vec ? inter / 4 : inter;
            std::vector<float> out((size_t)n * inter, NAN);
            emu_launch(dim3_{(unsigned)n, (unsigned)((threads + 255) / 256), 1}, 256, nullptr, 0, [&] {
                if (gelu_act)
                    act_mul_gelu_tanh_f32(gu.data(), out.data(), inter, vec);
                else
                    act_mul_silu_f32(gu.data(), out.data(), inter, vec);
            });
            char tag[64];
            std::snprintf(tag, sizeof tag, "act_mul %s inter %d", gelu_act ? "gelu_tanh" : "silu", inter);
            emu_check(tag, out, want, 2e-6);
        }
}

void ple_cases() {
    EmuRng rng{22};
    const int n = 11, dim = 40, layers = 3, vocab = 30, width = layers * dim;
    const float eps = 1e-6f, proj_scale = 0.125f, embed_scale = 6.3245554f, combine = 0.70710677f;
    const auto gate = rng.vec((size_t)n * dim, 3.0f), e_proj = rng.vec((size_t)n * dim, 4.0f);
    const auto table = rng.vec((size_t)vocab * width, 1.0f), norm = rng.vec(dim, 1.5f);
    std::vector<uint32_t> tokens(n);
    for (int r = 0; r < n; ++r) tokens[r] = (uint32_t)((r * 7 + 3) % vocab);
    for (int layer = 0; layer < layers; ++layer) {
        std::vector<double> want((size_t)n * dim);
        for (int r = 0; r < n; ++r) {
            double ss = 0;
            for (int i = 0; i < dim; ++i) {
                const double v = (double)e_proj[(size_t)r * dim + i] * proj_scale;
                ss += v * v;
            }
            const double inv = 1.0 / std::sqrt(ss / dim + eps);
            for (int i = 0; i < dim; ++i) {
                const double e = (double)e_proj[(size_t)r * dim + i] * proj_scale * inv * norm[i];
                const double t = table[(size_t)tokens[r] * width + layer * dim + i];
                want[(size_t)r * dim + i] = gelu(gate[(size_t)r * dim + i]) * (e + t * embed_scale) * combine;
            }
        }
        std::vector<float> out((size_t)n * dim, NAN);
        emu_launch(dim3_{(unsigned)n, 1, 1}, 64, nullptr, 0, [&] {
            ple_gate_mul_f32(gate.data(), e_proj.data(), tokens.data(), table.data(), norm.data(), out.data(), dim,
                             width, layer, proj_scale, embed_scale, combine, eps);
        });
        char tag[64];
        std::snprintf(tag, sizeof tag, "ple_gate_mul layer %d", layer);
        emu_check(tag, out, want, 4e-6);
    }
}

}  // namespace

int main() {
    emu_watchdog(300);
    act_cases();
    ple_cases();
    std::printf("%s: %d failures\n", emu_failures ? "FAILED" : "ok", emu_failures);
    return emu_failures ? 1 : 0;
}
