// attention_tile.cuh — what both tensor-core attention kernels do per
// thread with the same fragments: the mma.sync kernel (attention.cu, a
// warp's 16 rows) and the wgmma one (attention_wg.cu, a warpgroup's 64).
// In both, a thread (g = lane / 4, c = lane % 4) holds two query rows,
// r_lo and r_lo + 8, and of S and O the column pairs 8·n + 2c, 8·n + 2c + 1
// of every 8-column tile n: `x[n][0..1]` in row r_lo, `x[n][2..3]` in row
// r_lo + 8 (mma.sync's C fragment, which wgmma's accumulators repeat).
#pragma once

#include "common.cuh"
#include "mma.cuh"

// Q's A fragments for rows r_lo (`q_lo`, present when `lo`) and r_lo + 8,
// KC k-steps of 16 head dims, pre-scaled by `qscale` and rounded to T; rows
// past the sequence are zeros.
template <typename T, int KC>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qa)[KC][4], const T* q_lo, const T* q_hi, bool lo,
                                                 bool hi, int c, float qscale) {
    T* const tag = nullptr;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int d = kc * 16 + half * 8 + 2 * c;
            float x[2] = {0.0f, 0.0f}, y[2] = {0.0f, 0.0f};
            if (lo) {
                const Elems<T, 2> e2 = *reinterpret_cast<const Elems<T, 2>*>(q_lo + d);
                x[0] = to_f32(e2.v[0]), x[1] = to_f32(e2.v[1]);
            }
            if (hi) {
                const Elems<T, 2> e2 = *reinterpret_cast<const Elems<T, 2>*>(q_hi + d);
                y[0] = to_f32(e2.v[0]), y[1] = to_f32(e2.v[1]);
            }
            qa[kc][2 * half] = pack2(x[0] * qscale, x[1] * qscale, tag);
            qa[kc][2 * half + 1] = pack2(y[0] * qscale, y[1] * qscale, tag);
        }
    }
}

// One key tile's online softmax (scores in log2 units): keys kt + 8·n + 2c
// (+1) hidden unless visible to query position qi_lo / qi_hi (before k_hi,
// causal, inside the window), each row's running max m raised, S turned
// into P = 2^(S − m) in place, l and O's rows `acc` rescaled, l added to.
template <int NT, int DT>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NT][4], float (&acc)[DT][4], int kt, int c,
                                                    int qi_lo, int qi_hi, int k_hi, int window, float (&m)[2],
                                                    float (&l)[2]) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int j = kt + nt * 8 + 2 * c + (e & 1);
            const int qi = e < 2 ? qi_lo : qi_hi;
            const bool vis = j < k_hi && j <= qi && (window <= 0 || j > qi - window);
            s[nt][e] = vis ? s[nt][e] : -INFINITY;
            mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
        }
    }
    float corr[2], mb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 2));
        const float mn = fmaxf(m[i], mx[i]);
        mb[i] = mn == -INFINITY ? 0.0f : mn;  // nothing visible yet: p = 0, no NaN
        corr[i] = exp2f(m[i] - mb[i]);        // 0 when m was −inf
        m[i] = mn;
        l[i] *= corr[i];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[nt][e] = exp2f(s[nt][e] - mb[e / 2]);
            l[e / 2] += s[nt][e];
        }
    }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
        acc[dt][0] *= corr[0];
        acc[dt][1] *= corr[0];
        acc[dt][2] *= corr[1];
        acc[dt][3] *= corr[1];
    }
}

// P's A fragment for keys 16·kc … 16·kc + 15 (S's tiles 2kc and 2kc + 1),
// rounded to T.
template <typename T, int NT>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[4], const float (&s)[NT][4], int kc) {
    T* const tag = nullptr;
    pa[0] = pack2(s[2 * kc][0], s[2 * kc][1], tag);
    pa[1] = pack2(s[2 * kc][2], s[2 * kc][3], tag);
    pa[2] = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1], tag);
    pa[3] = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3], tag);
}

// The end of a (tile, head) block: the row sums over the quad, then for
// rows r_lo and r_lo + 8 below nq either O / l into `out` (columns col0 …
// of head h; `row0` the tile's first packed row, `qd` a row's width) or,
// with splits > 1, the unnormalised O, m and l of split z for
// attention_merge: part[((row · heads + h) · splits + z) · (hd + 2) …]
// (m and l from the block holding column 0).
template <typename T, int DT>
__device__ __forceinline__ void write_rows(const float (&acc)[DT][4], const float (&m)[2], float (&l)[2], int r_lo,
                                           int nq, int row0, size_t qd, int heads, int h, int hd, int col0,
                                           int c, T* __restrict__ out, float* __restrict__ part, int splits,
                                           unsigned z) {
    T* const tag = nullptr;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(FULL_MASK, l[i], 1);
        l[i] += __shfl_xor_sync(FULL_MASK, l[i], 2);
    }
    if (splits > 1) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = r_lo + 8 * i;
            if (r >= nq) continue;
            float* pp = part + (((size_t)(row0 + r) * heads + h) * splits + z) * (hd + 2);
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                *reinterpret_cast<float2*>(pp + col0 + dt * 8 + 2 * c) = make_float2(acc[dt][2 * i], acc[dt][2 * i + 1]);
            if (c == 0 && col0 == 0) {
                pp[hd] = m[i];
                pp[hd + 1] = l[i];
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = r_lo + 8 * i;
        if (r >= nq) continue;
        const float inv = 1.0f / l[i];
        T* o = out + (size_t)(row0 + r) * qd + (size_t)h * hd + col0 + 2 * c;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(o + dt * 8) = pack2(acc[dt][2 * i] * inv, acc[dt][2 * i + 1] * inv, tag);
    }
}
