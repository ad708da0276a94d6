// attention_wg.cu — the tensor-core attention kernel of attention.cu on
// Hopper's warpgroup products (wgmma.cuh; sm_90a only): the same tiles,
// paged pool, masks, online softmax, key-range splits and outputs as
// `paged_attention_mma2_*`, so the host launches it in their place
// (`AttnKernel::Warpgroup`, src/backend/cuda/attention.rs) and the same
// parity tests hold it.
//
// What changes: one warpgroup (4 warps, 128 threads) per (query tile of
// ATTN_BR = 64, head, split). Per key tile of MMA_BC = 64 keys,
// S = Q·Kᵀ is HD / 16 `wgmma.m64n64k16` products with Q's A fragments held
// in registers for the whole kernel (as the mma kernel holds them) and K
// read by the tensor cores from shared memory (no ldmatrix; each K tile
// read once per block rather than once per warp, as mma.sync's fragments
// were), and O += P·V is four `m64nHDk16` products with P from registers (S's
// accumulators rescaled, exponentiated and rounded, FlashAttention's
// register reuse) and V read MN-major (trans-b) from shared memory. Thread
// (warp w, lane g·4 + c) holds rows 16w + g and 16w + g + 8 of S and O, the
// same rows and column pairs as mma.sync's C fragments, so the softmax is
// the mma kernel's, quad shuffles included.
//
// Shared memory (dynamic, rounded up to a 1024-byte boundary, as the
// 128-byte swizzle's atoms must be): two stages of K and V tiles, each as
// HD / 64 regions of 64 rows × 128 bytes, 16-byte chunk c of row r at chunk
// c ^ (r % 8) (`sw128`): 2·2 · HD / 64 · 8 KB + 1 KB = 33 KB at HD 64,
// 65 KB at 128. K/V tiles are copied by cp.async (zero-filled past the
// keys), the next tile in flight during this one's products; the copies
// reach wgmma's (async-proxy) reads through `fence.proxy.async` before the
// barrier that publishes them.
#include "attention_tile.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

#if !defined(KV_BLOCK) || !defined(ATTN_BR) || !defined(MMA_BC)
#error "KV_BLOCK, ATTN_BR, MMA_BC are defined by build.rs from src/consts.rs"
#endif
static_assert(ATTN_BR == 64 && MMA_BC == 64, "one warpgroup's m64 rows per tile, n64 keys per S product");

template <typename T, int HD>
__device__ void paged_attention_wg(const T* __restrict__ q, const T* __restrict__ k_pool,
                                   const T* __restrict__ v_pool, const int32_t* __restrict__ block_table,
                                   const int32_t* __restrict__ seq_start, const int32_t* __restrict__ past,
                                   const int32_t* __restrict__ tiles, T* __restrict__ out, int heads,
                                   int kv_heads, int max_blocks, int window, float scale,
                                   float* __restrict__ part, int splits) {
#if WGMMA_AVAILABLE
    static_assert(HD == 64 || HD == 128, "S in one m64n64 accumulator per k-step, O in m64n64 or m64n128");
    constexpr int REGION = 64 * 128;            // bytes: 64 rows × 128 bytes
    constexpr int TILE = HD / 64 * REGION;      // one operand tile, bytes
    constexpr int CHUNKS = HD / 8;              // 16-byte chunks per row
    T* const tag = nullptr;
    extern __shared__ unsigned char wg_smem[];
    unsigned char* const ks_all = align1024(wg_smem);  // [2][TILE]
    unsigned char* const vs_all = ks_all + 2 * TILE;                                       // [2][TILE]
    // Byte offset of chunk c (8 elements) of row r of a tile.
    auto chunk_at = [](int r, int c) { return c / 8 * REGION + sw128(r, c % 8); };

    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kvh = h / (heads / kv_heads);
    const int base = seq_start[seq], p0 = past[seq];
    const int nq = min(ATTN_BR, seq_start[seq + 1] - base - q0);
    const size_t qd = (size_t)heads * HD, kvd = (size_t)kv_heads * HD;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, c = lane % 4;
    const int32_t* table = block_table + (size_t)seq * max_blocks;

    // This thread's rows of Q (r_lo = 16·warp + g and r_hi = r_lo + 8),
    // pre-scaled into log2 units and rounded to T, as the A fragments of S's
    // k-steps for the whole kernel (rows past nq zero): the tensor cores
    // read only K from shared memory.
    const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
    const float qscale = scale * 1.4426950408889634f;
    uint32_t qa[HD / 16][4];
    load_q_fragments<T, HD / 16>(qa, q + (size_t)(base + q0 + r_lo) * qd + (size_t)h * HD,
                                 q + (size_t)(base + q0 + r_hi) * qd + (size_t)h * HD, r_lo < nq, r_hi < nq, c,
                                 qscale);

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    // O and S in the mma kernel's fragment shape ([8-column tile][4], see
    // attention_tile.cuh); wgmma's accumulators are the same registers in
    // the same order.
    float acc[HD / 8][4];
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
    float(&o)[HD / 2] = reinterpret_cast<float(&)[HD / 2]>(acc);

    // Positions: packed query r is at p0 + q0 + r, keys count from 0 (row
    // r_lo: accumulators with (i / 2) % 2 = 0, r_hi: the others).
    const int qi_lo = p0 + q0 + r_lo, qi_hi = p0 + q0 + r_hi;
    const int k_hi = p0 + q0 + nq;
    const int k_lo = window > 0 ? max(0, p0 + q0 - window + 1) : 0;
    const int n_tiles = (k_hi - k_lo + MMA_BC - 1) / MMA_BC;
    const int per = (n_tiles + splits - 1) / splits;
    const int kt_begin = k_lo + min(n_tiles, (int)blockIdx.z * per) * MMA_BC;
    const int kt_end = min(k_hi, k_lo + min(n_tiles, ((int)blockIdx.z + 1) * per) * MMA_BC);
    auto load_tile = [&](int kt, int st) {
        unsigned char* ks = ks_all + st * TILE;
        unsigned char* vs = vs_all + st * TILE;
        for (int e = threadIdx.x; e < MMA_BC * CHUNKS; e += blockDim.x) {
            const int r = e / CHUNKS, ch = e % CHUNKS, j = kt + r;
            const bool in = j < k_hi;
            const size_t row = in ? (size_t)table[j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK : 0;
            const size_t off = row * kvd + (size_t)kvh * HD + ch * 8;
            cp_async16(ks + chunk_at(r, ch), k_pool + off, in ? 16 : 0);
            cp_async16(vs + chunk_at(r, ch), v_pool + off, in ? 16 : 0);
        }
    };
    if (kt_begin < kt_end) {
        load_tile(kt_begin, 0);
        cp_async_commit();
    }
    for (int kt = kt_begin, it = 0; kt < kt_end; kt += MMA_BC, ++it) {
        const int st = it & 1;
        // The next tile into the other stage (consumed by the previous
        // tile's products, completed before the barrier that ended it).
        if (kt + MMA_BC < kt_end) load_tile(kt + MMA_BC, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();  // this tile's group has landed
        fence_proxy_async();  // this thread's copies visible to wgmma
        __syncthreads();
        const unsigned char* ks = ks_all + st * TILE;
        const unsigned char* vs = vs_all + st * TILE;

        // S = Q·Kᵀ: k-steps of 16 head dims, four per 64-column region of
        // K (K-major: 32 bytes of each 128-byte row per step).
        float sf[MMA_BC / 8][4];
        float(&s)[32] = reinterpret_cast<float(&)[32]>(sf);
#pragma unroll
        for (int i = 0; i < 32; ++i) s[i] = 0.0f;
        wgmma_fence_operands(s);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk)
            wgmma_rs<0>(s, qa[kk], wgmma_desc(ks + kk / 4 * REGION + kk % 4 * 32, 16, 1024), kk > 0, tag);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operands(s);

        // Mask, then the online softmax of rows lo (sf[][0..1]) and hi; P's
        // A fragments all packed before the fence (registers written
        // between two products of a group would make ptxas serialise them).
        online_softmax_tile<MMA_BC / 8, HD / 8>(sf, acc, kt, c, qi_lo, qi_hi, k_hi, window, m, l);
        uint32_t pa[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) pack_p<T, MMA_BC / 8>(pa[j], sf, j);

        // O += P·V: keys 16j … are rows 16j … of every region; 8-key groups
        // SBO = 1024 bytes apart, 64-column regions LBO = REGION apart.
        wgmma_fence_operands(o);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_rs<1>(o, pa[j], wgmma_desc(vs + j * 16 * 128, REGION, 1024), 1, tag);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operands(o);
        __syncthreads();  // stage st consumed before its refill
    }
    cp_async_wait<0>();  // the last (empty) group

    // Row sums over the quad, then O / l (or this split's partials).
    write_rows<T, HD / 8>(acc, m, l, r_lo, nq, base + q0, qd, heads, h, HD, 0, c, out, part, splits, blockIdx.z);
#endif
}

// Entry points `paged_attention_wg_<dtype>_d<HD>`, HD ∈ {64, 128}, with the
// tensor-core kernel's arguments (attention.cu).
#define PAGED_ATTENTION_WG(SUFFIX, T, HD)                                                          \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_wg_##SUFFIX##_d##HD(         \
        const T* q, const T* k_pool, const T* v_pool, const int32_t* block_table,                  \
        const int32_t* seq_start, const int32_t* past, const int32_t* tiles, T* out, int heads,    \
        int kv_heads, int /* hd = HD */, int max_blocks, int window, float scale, float* part,      \
        int splits) {                                                                               \
        paged_attention_wg<T, HD>(q, k_pool, v_pool, block_table, seq_start, past, tiles, out,     \
                                  heads, kv_heads, max_blocks, window, scale, part, splits);       \
    }
PAGED_ATTENTION_WG(bf16, __nv_bfloat16, 64)
PAGED_ATTENTION_WG(bf16, __nv_bfloat16, 128)
PAGED_ATTENTION_WG(f16, __half, 64)
PAGED_ATTENTION_WG(f16, __half, 128)
