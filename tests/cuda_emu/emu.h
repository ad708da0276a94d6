// emu.h — just enough of CUDA to run a kernel from kernels/*.cu on the CPU,
// one OS thread per CUDA thread, for testing a kernel's logic (indexing,
// masks, pipeline stages, warp collectives, merges) where there is no GPU.
//
// * Blocks run one after another; a block's threads run concurrently.
//   `__syncthreads` is a barrier over the block, every warp collective
//   (shuffles, votes, `__syncwarp`, and the emulated ldmatrix / mma.sync of
//   mma_emu.h) a barrier over the warp: lanes exchange values through a
//   per-warp slot array between two barrier phases. A kernel whose lanes
//   reach collectives in different orders deadlocks here; the driver's
//   watchdog turns that into a failure.
// * Shared memory (the kernel's `extern __shared__` array, when the driver
//   passes it) is filled with 0xFF bytes (NaN) before each block, so a read
//   of an unwritten byte shows; after each block the end of what it wrote
//   raises `emu_smem_used`, for the driver to hold to the host's size.
// * cp.async copies are deferred until the `cp.async.wait_group` that must
//   complete them (`EMU_LAZY_COPIES`, the default) or done at issue: the
//   first exposes a read before its wait, the second a stage overwritten
//   while another warp still reads it.
// * wgmma (wgmma_emu.h) is a collective over each warpgroup of 4 warps and
//   runs at the `wgmma.wait_group` that must complete it, reading shared
//   memory then, as the hardware may.
// * Arithmetic is the host's: expf for __expf, f32 sums in a fixed order
//   for mma.sync and wgmma. Results match the device to rounding, not bit
//   for bit.
#pragma once

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <unistd.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Block-shared arrays are statics (blocks run one after another); the
// dynamic `extern __shared__` array is the driver's global of that name
// (tests/cuda_emulated.rs drops the qualifier from `extern __shared__`).
#define __shared__ static
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3_ {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3_ threadIdx;
inline dim3_ blockIdx, blockDim, gridDim;

struct float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }

// 16-bit floats as their bits.
struct __nv_bfloat16 {
    uint16_t bits;
};
struct __half {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
    uint32_t u = (uint32_t)v.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline float __half2float(__half v) {
    _Float16 h;
    std::memcpy(&h, &v.bits, 2);
    return (float)h;
}
inline __half __float2half_rn(float f) {
    _Float16 h = (_Float16)f;
    __half r;
    std::memcpy(&r.bits, &h, 2);
    return r;
}

// CUDA's integer min/max overloads.
using std::max;
using std::min;

inline float __expf(float x) { return std::exp(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldcs(const T* p) { return *p; }

// ---------------------------------------------------------------------------
// Warps and blocks.

// A sense-reversing barrier whose waiters yield the core: many more threads
// than cores pass it far more often than a sleeping (futex) barrier allows.
class EmuBarrier {
  public:
    explicit EmuBarrier(int n) : n_(n) {}
    void arrive_and_wait() {
        const unsigned gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
            count_.store(0, std::memory_order_relaxed);
            gen_.store(gen + 1, std::memory_order_release);
            return;
        }
        while (gen_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }

  private:
    const int n_;
    std::atomic<int> count_{0};
    std::atomic<unsigned> gen_{0};
};

// Lanes publish into one of two slot sets, alternating per collective: a
// lane reuses a set only after the next collective's barrier, which every
// lane reaches after reading this one, so one barrier per collective does.
struct EmuWarp {
    EmuBarrier bar{32};
    alignas(16) uint64_t slots[2][32][4];
};

// A warpgroup (4 warps, 128 threads) publishes A fragments the same way.
struct EmuGroup {
    EmuBarrier bar{128};
    alignas(16) uint32_t slots[2][128][4];
};

struct EmuBlock {
    std::unique_ptr<EmuBarrier> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
    std::vector<std::unique_ptr<EmuGroup>> groups;  // when the block is whole warpgroups
};
inline EmuBlock* emu_block = nullptr;

inline thread_local unsigned emu_phase = 0;  // this lane's collectives so far
inline int emu_lane() { return threadIdx.x % 32; }
inline EmuWarp& emu_warp() { return *emu_block->warps[threadIdx.x / 32]; }
// This collective's slot set; every lane of a warp calls it once per collective.
inline uint64_t (*emu_slots())[4] { return emu_warp().slots[emu_phase++ & 1]; }
inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }

// The passed shared array: shared addresses are offsets into it.
inline unsigned char* emu_smem_origin = nullptr;
inline size_t emu_smem_bytes = 0;
inline size_t __cvta_generic_to_shared(const void* p) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    if (!emu_smem_origin || b < emu_smem_origin || b >= emu_smem_origin + emu_smem_bytes) {
        std::fprintf(stderr, "emu: %p is not in the block's dynamic shared memory\n", p);
        std::abort();
    }
    return (size_t)(b - emu_smem_origin);
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp().bar.arrive_and_wait(); }

// Every lane publishes `v`; each gets lane `src`'s.
template <class T> T emu_exchange(T v, int src) {
    static_assert(sizeof(T) <= sizeof(uint64_t) * 4, "a slot holds 32 bytes");
    auto slot = emu_slots();
    std::memcpy(slot[emu_lane()], &v, sizeof(T));
    emu_warp().bar.arrive_and_wait();
    T r;
    std::memcpy(&r, slot[src & 31], sizeof(T));
    return r;
}
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_exchange(v, src); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return emu_exchange(v, emu_lane() ^ o); }
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d) {
    const int l = emu_lane();
    return emu_exchange(v, l >= (int)d ? l - (int)d : l);
}
inline unsigned __ballot_sync(unsigned, bool p) {
    auto slot = emu_slots();
    slot[emu_lane()][0] = p;
    emu_warp().bar.arrive_and_wait();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (slot[l][0] ? 1u : 0u) << l;
    return r;
}
inline bool __any_sync(unsigned m, bool p) { return __ballot_sync(m, p) != 0; }

// ---------------------------------------------------------------------------
// Deferred cp.async (per thread: pending copies, grouped by commit).

struct EmuCopy {
    void* dst;
    const void* src;
    int bytes;  // 0 or 16: the rest zero-filled
};
inline bool emu_lazy_copies = true;
inline thread_local std::vector<EmuCopy> emu_open;                // not yet committed
inline thread_local std::vector<std::vector<EmuCopy>> emu_groups;  // committed, oldest first

// Checks at a thread's end that headers add (wgmma_emu.h: no product in flight).
inline thread_local void (*emu_thread_end)(unsigned) = nullptr;
inline thread_local unsigned emu_group_phase = 0;  // this thread's warpgroup collectives so far

inline void emu_do(const EmuCopy& c) {
    std::memset(c.dst, 0, 16);
    if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
}

// ---------------------------------------------------------------------------
// Test inputs: a deterministic generator, uniform in [-1, 1).

struct EmuRng {
    uint64_t s;
    float next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (float)(s >> 40) / (float)(1ull << 24) * 2.0f - 1.0f;
    }
    std::vector<float> vec(size_t n, float scale) {
        std::vector<float> v(n);
        for (float& x : v) x = next() * scale;
        return v;
    }
};

// Failed values so far, over every emu_check.
inline int emu_failures = 0;

// Compare `got` with `want` within `tol` relative to max(1, |want|); print
// the worst difference and the first few failures.
inline void emu_check(const char* what, const std::vector<float>& got, const std::vector<double>& want,
                      double tol) {
    double worst = 0;
    int bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double e = std::fabs((double)got[i] - want[i]);
        worst = std::max(worst, e);
        if (!(e <= tol * std::max(1.0, std::fabs(want[i])))) {
            if (bad++ < 5) std::fprintf(stderr, "FAIL %s[%zu]: got %g want %g\n", what, i, got[i], want[i]);
        }
    }
    emu_failures += bad;
    std::printf("%s: max |Δ| %.2e%s\n", what, worst, bad ? " FAILED" : "");
}

// ---------------------------------------------------------------------------
// Launch: every block of `grid`, `threads` threads each, one block at a time.

// Bytes of the passed shared array up to its last written (not 0xFF) byte,
// the most over the blocks launched since the driver last reset it. A value
// whose last byte is 0xFF is a NaN (f32, 16-bit floats little-endian), which
// no kernel stores.
inline size_t emu_smem_used = 0;

inline void emu_launch(dim3_ grid, unsigned threads, unsigned char* smem, size_t smem_bytes,
                       const std::function<void()>& kernel) {
    if (threads % 32 != 0) {
        std::fprintf(stderr, "emu: %u threads is not whole warps\n", threads);
        std::abort();
    }
    gridDim = grid;
    blockDim = dim3_{threads, 1, 1};
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = dim3_{x, y, z};
                if (smem) std::memset(smem, 0xFF, smem_bytes);
                EmuBlock b;
                b.bar = std::make_unique<EmuBarrier>((int)threads);
                for (unsigned w = 0; w < threads / 32; ++w) b.warps.push_back(std::make_unique<EmuWarp>());
                if (threads % 128 == 0)
                    for (unsigned g = 0; g < threads / 128; ++g) b.groups.push_back(std::make_unique<EmuGroup>());
                emu_block = &b;
                emu_smem_origin = smem;
                emu_smem_bytes = smem ? smem_bytes : 0;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([t, &kernel] {
                        threadIdx = dim3_{t, 0, 0};
                        emu_phase = 0;
                        emu_group_phase = 0;
                        emu_open.clear();
                        emu_groups.clear();
                        emu_thread_end = nullptr;
                        kernel();
                        if (!emu_open.empty() || !emu_groups.empty()) {
                            std::fprintf(stderr, "emu: thread %u ended with cp.async copies in flight\n", t);
                            std::abort();
                        }
                        if (emu_thread_end) emu_thread_end(t);
                    });
                for (auto& t : ts) t.join();
                emu_block = nullptr;
                size_t used = smem ? smem_bytes : 0;
                while (used > emu_smem_used && smem[used - 1] == 0xFF) --used;
                emu_smem_used = std::max(emu_smem_used, used);
            }
}

// A kernel whose lanes wait at different collectives never finishes: end the
// process with status 3 after `seconds`.
inline void emu_watchdog(unsigned seconds) {
    std::signal(SIGALRM, [](int) {
        const char msg[] = "emu: watchdog: a kernel did not finish (a warp collective reached by part of a warp?)\n";
        (void)!write(2, msg, sizeof(msg) - 1);
        _exit(3);
    });
    alarm(seconds);
}
