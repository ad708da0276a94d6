// wgmma_driver.cpp — kernels/wgmma_probe.cu run on the CPU through emu.h and
// wgmma_emu.h against direct f64 products: S = Q·Kᵀ, and O = P·V with P the
// kernel's own S rounded to the operand type (as the kernel rounds it), at
// head dims 64 and 128 (one and two 64-column regions: K-major k-steps
// across regions, MN-major V's LBO) in bf16 and f16. The same probe runs on
// a Hopper GPU against the host (`Gpu::wgmma_check`, tests/cuda_kernel_parity.rs),
// which holds this emulator's reading of the layouts to the hardware.
// Exit status 0 when every value is within tolerance. Built and run by
// tests/cuda_emulated.rs.
#include "emu.h"

#include "wgmma_probe.cu"

alignas(1024) unsigned char probe_smem[3 * 64 * 128 * 2 + 1024];

namespace {

template <class T> T to_t(float v);
template <> __nv_bfloat16 to_t(float v) { return __float2bfloat16_rn(v); }
template <> __half to_t(float v) { return __float2half_rn(v); }
float from_t(__nv_bfloat16 v) { return __bfloat162float(v); }
float from_t(__half v) { return __half2float(v); }

template <class T, int HD>
void probe_case(const char* name, void (*kernel)(const T*, const T*, const T*, float*, float*), uint64_t seed) {
    EmuRng rng{seed};
    std::vector<T> q(64 * HD), k(64 * HD), v(64 * HD);
    for (auto* m : {&q, &k, &v})
        for (T& x : *m) x = to_t<T>(rng.next());
    std::vector<float> s(64 * 64, NAN), o(64 * HD, NAN);
    emu_launch(dim3_{1, 1, 1}, 128, probe_smem, sizeof probe_smem,
               [&] { kernel(q.data(), k.data(), v.data(), s.data(), o.data()); });
    std::vector<double> s_want(64 * 64), o_want(64 * HD);
    for (int r = 0; r < 64; ++r)
        for (int j = 0; j < 64; ++j) {
            double acc = 0;
            for (int d = 0; d < HD; ++d) acc += (double)from_t(q[r * HD + d]) * from_t(k[j * HD + d]);
            s_want[r * 64 + j] = acc;
        }
    for (int r = 0; r < 64; ++r)
        for (int col = 0; col < HD; ++col) {
            double acc = 0;
            for (int j = 0; j < 64; ++j) acc += (double)from_t(to_t<T>(s[r * 64 + j])) * from_t(v[j * HD + col]);
            o_want[r * HD + col] = acc;
        }
    char tag[64];
    std::snprintf(tag, sizeof tag, "%s S", name);
    emu_check(tag, s, s_want, 1e-5);
    std::snprintf(tag, sizeof tag, "%s O", name);
    emu_check(tag, o, o_want, 1e-5);
    std::printf("%s: shared memory used %zu of %zu bytes\n", name, emu_smem_used, sizeof probe_smem);
    emu_smem_used = 0;
}

}  // namespace

int main() {
    emu_watchdog(600);
    for (int lazy = 1; lazy >= 0; --lazy) {
        emu_lazy_copies = lazy;
        probe_case<__nv_bfloat16, 64>("wgmma bf16 hd 64", wgmma_probe_bf16_64, 31);
        probe_case<__nv_bfloat16, 128>("wgmma bf16 hd 128", wgmma_probe_bf16_128, 32);
        probe_case<__half, 64>("wgmma f16 hd 64", wgmma_probe_f16_64, 33);
        probe_case<__half, 128>("wgmma f16 hd 128", wgmma_probe_f16_128, 34);
    }
    return emu_failures ? 1 : 0;
}
