// norm_rope_driver.cpp — kernels/rmsnorm.cu and kernels/rope.cu run on the
// CPU through emu.h, against direct f64 computations: the residual add with
// the norms of pre-norm, post-norm (Olmo 3) and sandwich blocks and Gemma's
// layer scalar, in place and gathered, f32 and bf16 deltas, on the vector
// and the strided path; q/k/v post-processing with bias,
// per-head and full-width q/k norms, a RoPE attention factor, Gemma's
// weightless v norm, a K/V-sharing layer's q alone, and bf16 projection
// rows in and bf16 q and pools out. Both kernels are otherwise checked
// against the CPU backend on a GPU (tests/cuda_kernel_parity.rs); this pins
// their logic where there is none. Exit status 0 when every value is within
// tolerance. Built and run by tests/cuda_emulated.rs.
#include "emu.h"

#include <string>
#include <type_traits>

// rope.cu's dynamic shared memory (its `extern __shared__` array).
alignas(16) float smem[1 << 14];

#include "rmsnorm.cu"
#include "rope.cu"

namespace {

void rms(std::vector<double>& v, size_t at, int width, const std::vector<float>& w, double eps) {
    double ss = 0;
    for (int i = 0; i < width; ++i) ss += v[at + i] * v[at + i];
    const double inv = 1.0 / std::sqrt(ss / width + eps);
    for (int i = 0; i < width; ++i) v[at + i] = w[i] * (v[at + i] * inv);
}

// The launcher's choice (Gpu::residual_rmsnorm): runs of 4 held in
// registers when the row allows, in a block sized to it; else 256 threads
// striding. (Pointers here are aligned: vectors of floats and 16-bit pairs.)
struct RmsLaunch {
    unsigned threads;
    int vec;
};
RmsLaunch rms_launch(int h) {
    const int chunks = h / 4;
    if (h % 4 == 0 && chunks <= RMS_CHUNKS * 1024)
        return {(unsigned)(((chunks + RMS_CHUNKS - 1) / RMS_CHUNKS + 31) / 32 * 32), 1};
    return {256, 0};
}

float widen(float v) { return v; }
float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T narrow(float v);
template <> float narrow<float>(float v) { return v; }
template <> __nv_bfloat16 narrow<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
void run_rms(float* x, const T* delta, const float* wd, const float* w, T* out, const int32_t* rows, unsigned n,
             int h, float eps, float scale) {
    const RmsLaunch l = rms_launch(h);
    emu_launch(dim3_{n, 1, 1}, l.threads, nullptr, 0, [&] {
        if constexpr (std::is_same_v<T, float>)
            residual_rmsnorm_f32(x, delta, wd, w, out, rows, h, eps, scale, l.vec);
        else
            residual_rmsnorm_bf16(x, delta, wd, w, out, rows, h, eps, scale, l.vec);
    });
}

// Widths 200 and 2056 take the vector path (up to 2 and 4 runs of 4 per
// thread), 203 the strided one; delta and out in f32 and in bf16 (the
// compute dtype of a bf16 checkpoint), against the sum in f64 of x and the
// delta as stored. delta 0: no residual add (Gemma's scaled embedding).
template <typename T>
void residual_norms(const char* dtype, double out_tol) {
    EmuRng rng{5};
    const int rows = 37;
    const float eps = 1e-6f;
    const std::vector<int32_t> gather = {5, 0, 36, 17, 17};
    for (int h : {200, 2056, 203}) {
        const auto x = rng.vec(rows * h, 3.0f), delta_f = rng.vec(rows * h, 1.0f);
        const auto w = rng.vec(h, 1.5f), wd = rng.vec(h, 1.5f);
        std::vector<T> delta(delta_f.size());
        for (size_t i = 0; i < delta.size(); ++i) delta[i] = narrow<T>(delta_f[i]);
        for (int has_delta = 0; has_delta < 2; ++has_delta)
            for (int post = 0; post < 2; ++post)
                for (int pre = 0; pre < 2; ++pre)
                    for (float scale : {1.0f, 0.83f}) {
                        if (has_delta ? (!post && !pre) : (post || scale != 1.0f)) continue;
                        std::vector<double> sum(rows * h), out(rows * h);
                        for (int r = 0; r < rows; ++r) {
                            std::vector<double> d(h, 0.0);
                            if (has_delta)
                                for (int i = 0; i < h; ++i) d[i] = widen(delta[(size_t)r * h + i]);
                            if (post) rms(d, 0, h, wd, eps);
                            for (int i = 0; i < h; ++i) sum[r * h + i] = (x[r * h + i] + d[i]) * scale;
                        }
                        out = sum;
                        if (pre)
                            for (int r = 0; r < rows; ++r) rms(out, (size_t)r * h, h, w, eps);
                        const T* dp = has_delta ? delta.data() : nullptr;
                        char tag[128];
                        std::snprintf(tag, sizeof tag, "rmsnorm %s h %d delta %d post %d pre %d scale %g", dtype, h,
                                      has_delta, post, pre, scale);
                        const std::string t(tag);
                        // In place.
                        std::vector<float> gx(x);
                        std::vector<T> go(rows * h, narrow<T>(NAN));
                        run_rms<T>(gx.data(), dp, post ? wd.data() : nullptr, pre ? w.data() : nullptr, go.data(),
                                   nullptr, rows, h, eps, scale);
                        std::vector<float> got(go.size());
                        for (size_t i = 0; i < go.size(); ++i) got[i] = widen(go[i]);
                        if (has_delta) emu_check((t + ": x").c_str(), gx, sum, 2e-6);
                        emu_check((t + ": out").c_str(), got, out, out_tol);
                        // Gathered: x untouched.
                        std::vector<float> gx2(x);
                        std::vector<T> go2(gather.size() * h, narrow<T>(NAN));
                        run_rms<T>(gx2.data(), dp, post ? wd.data() : nullptr, pre ? w.data() : nullptr,
                                   go2.data(), gather.data(), (unsigned)gather.size(), h, eps, scale);
                        std::vector<double> want;
                        for (int32_t r : gather) want.insert(want.end(), out.begin() + r * h, out.begin() + (r + 1) * h);
                        std::vector<float> got2(go2.size());
                        for (size_t i = 0; i < go2.size(); ++i) got2[i] = widen(go2[i]);
                        emu_check((t + ": gathered").c_str(), got2, want, out_tol);
                        if (gx2 != x) {
                            std::fprintf(stderr, "FAIL %s: gathered rmsnorm wrote x\n", tag);
                            ++emu_failures;
                        }
                    }
    }
}

void qkv_rope_cases() {
    EmuRng rng{6};
    const int n = 40;
    const float eps = 1e-6f;
    struct Case {
        int heads, kv_heads, hd;
        bool bias, norm, full;
        float factor;
        int rot;      // rotated dims per head
        bool gated;   // q_proj gives per head [query | gate]
        bool v_norm;  // weightless RMSNorm per v head (Gemma 4)
    };
    // kv_heads 0: a K/V-sharing layer, q alone.
    const Case cases[] = {
        {4, 2, 32, true, true, false, 1.0f, 32, false, false},
        {4, 2, 12, false, true, true, 1.2079f, 12, false, false},
        {2, 1, 128, true, false, false, 1.0f, 128, false, false},
        {4, 2, 16, true, true, false, 1.0f, 4, true, false},
        {4, 2, 48, false, true, false, 1.0f, 48, false, true},
        {4, 0, 32, false, true, false, 1.0f, 32, false, false},
    };
    for (const Case& c : cases) {
        const int qd = c.heads * c.hd, kvd = c.kv_heads * c.hd, half = c.rot / 2;
        const int qw = c.gated ? 2 * qd : qd, width = qw + 2 * kvd;
        const auto qkv = rng.vec((size_t)n * width, 2.0f), bias = rng.vec(width, 0.5f);
        const int qn_len = c.full ? qd : c.hd, kn_len = c.full ? kvd : c.hd;
        const auto qn = rng.vec(qn_len, 1.5f), kn = rng.vec(kn_len, 1.5f);
        std::vector<float> inv_freq(half);
        for (int i = 0; i < half; ++i) inv_freq[i] = 1.0f / std::pow(10000.0f, (2.0f * i) / c.rot);
        std::vector<int32_t> pos(n), slots(n);
        for (int t = 0; t < n; ++t) pos[t] = (t * 7) % 53, slots[t] = n - 1 - t;
        // Direct computation.
        std::vector<double> want_q((size_t)n * qd), want_k((size_t)n * kvd), want_v((size_t)n * kvd),
            want_gate((size_t)n * qd);
        for (int t = 0; t < n; ++t) {
            std::vector<double> raw(width), row;
            for (int i = 0; i < width; ++i) raw[i] = qkv[(size_t)t * width + i] + (c.bias ? bias[i] : 0.0f);
            // Queries (de-interleaved from the gates), then k and v.
            for (int i = 0; i < qd; ++i) {
                const int h = i / c.hd, d = i % c.hd;
                row.push_back(c.gated ? raw[h * 2 * c.hd + d] : raw[i]);
                if (c.gated) want_gate[(size_t)t * qd + i] = raw[h * 2 * c.hd + c.hd + d];
            }
            row.insert(row.end(), raw.begin() + qw, raw.end());
            if (c.norm) {
                for (int a = 0; a < qd; a += qn_len) rms(row, a, qn_len, qn, eps);
                for (int a = 0; a < kvd; a += kn_len) rms(row, qd + a, kn_len, kn, eps);
            }
            for (int hh = 0; hh < c.heads + c.kv_heads; ++hh) {
                for (int d = c.rot; d < c.hd; ++d) {  // unrotated dims
                    std::vector<double>& dst = hh < c.heads ? want_q : want_k;
                    const size_t base = hh < c.heads ? (size_t)t * qd + hh * c.hd : (size_t)t * kvd + (hh - c.heads) * c.hd;
                    dst[base + d] = row[hh * c.hd + d];
                }
                for (int i = 0; i < half; ++i) {
                    const float ang = (float)pos[t] * inv_freq[i];  // f32 angles, as transformers
                    const double co = std::cos((double)ang) * c.factor, si = std::sin((double)ang) * c.factor;
                    const double x0 = row[hh * c.hd + i], x1 = row[hh * c.hd + half + i];
                    const double y0 = x0 * co - x1 * si, y1 = x1 * co + x0 * si;
                    std::vector<double>& dst = hh < c.heads ? want_q : want_k;
                    const size_t base = hh < c.heads ? (size_t)t * qd + hh * c.hd : (size_t)t * kvd + (hh - c.heads) * c.hd;
                    dst[base + i] = y0;
                    dst[base + half + i] = y1;
                }
            }
            if (c.v_norm) {
                const std::vector<float> ones(c.hd, 1.0f);
                for (int a = 0; a < kvd; a += c.hd) rms(row, qd + kvd + a, c.hd, ones, eps);
            }
            for (int i = 0; i < kvd; ++i) want_v[(size_t)t * kvd + i] = row[qd + kvd + i];
        }
        // One spare pool row: a q-only layer must leave the pools alone.
        std::vector<float> q(n * qd, NAN), gate(n * qd, NAN), kp((size_t)n * kvd + c.hd, NAN),
            vp((size_t)n * kvd + c.hd, NAN);
        emu_launch(dim3_{(unsigned)n, 1, 1}, 256, nullptr, 0, [&] {
            qkv_rope_f32(qkv.data(), c.bias ? bias.data() : nullptr, c.norm ? qn.data() : nullptr,
                         c.norm && c.kv_heads ? kn.data() : nullptr, pos.data(), slots.data(), inv_freq.data(),
                         q.data(), c.gated ? gate.data() : nullptr, kp.data(), vp.data(), c.heads, c.kv_heads, c.hd,
                         eps, c.full, c.factor, c.rot, c.v_norm);
        });
        // The pool rows are the slots: back to token order.
        std::vector<float> k((size_t)n * kvd), v((size_t)n * kvd);
        for (int t = 0; t < n; ++t)
            for (int i = 0; i < kvd; ++i) {
                k[(size_t)t * kvd + i] = kp[(size_t)slots[t] * kvd + i];
                v[(size_t)t * kvd + i] = vp[(size_t)slots[t] * kvd + i];
            }
        char tag[96];
        for (auto [name, got, want] : {std::tuple{"q", &q, &want_q}, std::tuple{"k", &k, &want_k},
                                       std::tuple{"v", &v, &want_v}}) {
            std::snprintf(tag, sizeof tag, "qkv_rope h%d/%d hd%d norm %d full %d factor %g rot %d gated %d vn %d: %s",
                          c.heads, c.kv_heads, c.hd, c.norm, c.full, c.factor, c.rot, c.gated, c.v_norm, name);
            emu_check(tag, *got, *want, 2e-5);
        }
        if (c.kv_heads == 0 && !std::all_of(kp.begin(), kp.end(), [](float x) { return std::isnan(x); })) {
            std::fprintf(stderr, "FAIL qkv_rope q alone wrote the K pool\n");
            ++emu_failures;
        }
        if (c.gated) emu_check("qkv_rope gated: gate", gate, want_gate, 1e-6);
    }
}


// The compute dtype's path: the QKV GEMM writes bf16 rows, qkv_rope reads
// them (and writes bf16 pools), against the direct computation on the
// rounded rows; Qwen3-style per-head q/k norms, bias, v norm.
void qkv_rope_bf16() {
    EmuRng rng{8};
    const int n = 24, heads = 4, kv_heads = 2, hd = 32, qd = heads * hd, kvd = kv_heads * hd;
    const int width = qd + 2 * kvd, half = hd / 2;
    const float eps = 1e-6f;
    const auto raw = rng.vec((size_t)n * width, 2.0f), bias = rng.vec(width, 0.5f);
    const auto qn = rng.vec(hd, 1.5f), kn = rng.vec(hd, 1.5f);
    std::vector<__nv_bfloat16> qkv(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) qkv[i] = __float2bfloat16_rn(raw[i]);
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) inv_freq[i] = 1.0f / std::pow(10000.0f, (2.0f * i) / hd);
    std::vector<int32_t> pos(n), slots(n);
    for (int t = 0; t < n; ++t) pos[t] = t + 3, slots[t] = (t * 5) % n;
    const std::vector<float> ones(hd, 1.0f);
    std::vector<double> want_q((size_t)n * qd), want_k((size_t)n * kvd), want_v((size_t)n * kvd);
    for (int t = 0; t < n; ++t) {
        std::vector<double> row(width);
        for (int i = 0; i < width; ++i) row[i] = __bfloat162float(qkv[(size_t)t * width + i]) + bias[i];
        for (int h = 0; h < heads + kv_heads; ++h) rms(row, (size_t)h * hd, hd, h < heads ? qn : kn, eps);
        for (int h = 0; h < kv_heads; ++h) rms(row, qd + kvd + (size_t)h * hd, hd, ones, eps);
        for (int h = 0; h < heads + kv_heads; ++h)
            for (int i = 0; i < half; ++i) {
                const float ang = (float)pos[t] * inv_freq[i];
                const double co = std::cos((double)ang), si = std::sin((double)ang);
                const double x0 = row[h * hd + i], x1 = row[h * hd + half + i];
                std::vector<double>& dst = h < heads ? want_q : want_k;
                const size_t base = h < heads ? (size_t)t * qd + h * hd : (size_t)t * kvd + (h - heads) * hd;
                dst[base + i] = x0 * co - x1 * si;
                dst[base + half + i] = x1 * co + x0 * si;
            }
        for (int i = 0; i < kvd; ++i) want_v[(size_t)t * kvd + i] = row[qd + kvd + i];
    }
    std::vector<__nv_bfloat16> qb((size_t)n * qd), kp((size_t)n * kvd), vp((size_t)n * kvd);
    emu_launch(dim3_{(unsigned)n, 1, 1}, 256, nullptr, 0, [&] {
        qkv_rope_bf16(qkv.data(), bias.data(), qn.data(), kn.data(), pos.data(), slots.data(), inv_freq.data(),
                      qb.data(), nullptr, kp.data(), vp.data(), heads, kv_heads, hd, eps, 0, 1.0f, hd, 1);
    });
    std::vector<float> q(qb.size()), k((size_t)n * kvd), v((size_t)n * kvd);
    for (size_t i = 0; i < qb.size(); ++i) q[i] = __bfloat162float(qb[i]);
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < kvd; ++i) {
            k[(size_t)t * kvd + i] = __bfloat162float(kp[(size_t)slots[t] * kvd + i]);
            v[(size_t)t * kvd + i] = __bfloat162float(vp[(size_t)slots[t] * kvd + i]);
        }
    // q, k and v are stored in bf16: half an ulp is 2^-8 of |x|.
    emu_check("qkv_rope bf16 rows: q", q, want_q, 1e-2);
    emu_check("qkv_rope bf16 rows: k", k, want_k, 1e-2);
    emu_check("qkv_rope bf16 rows: v", v, want_v, 1e-2);
}

void gate_cases() {
    EmuRng rng{7};
    const int n = 9, qd = 300;
    const auto attn = rng.vec((size_t)n * qd, 3.0f), gate = rng.vec((size_t)n * qd, 4.0f);
    std::vector<double> want(attn.size());
    for (size_t i = 0; i < attn.size(); ++i) want[i] = attn[i] / (1.0 + std::exp(-(double)gate[i]));
    std::vector<float> got(attn);
    emu_launch(dim3_{(unsigned)n, (unsigned)((qd + 255) / 256), 1}, 256, nullptr, 0,
               [&] { gate_sigmoid_mul_f32(got.data(), gate.data(), qd); });
    emu_check("gate_sigmoid_mul", got, want, 1e-6);
}

}  // namespace

int main() {
    emu_watchdog(300);
    residual_norms<float>("f32", 2e-6);
    // bf16 output: half an ulp is 2^-8 of |x|.
    residual_norms<__nv_bfloat16>("bf16", 4e-3);
    qkv_rope_cases();
    qkv_rope_bf16();
    gate_cases();
    std::printf("%s: %d failures\n", emu_failures ? "FAILED" : "ok", emu_failures);
    return emu_failures ? 1 : 0;
}
