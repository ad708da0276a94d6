// delta_chunk.cu — the gated delta rule in chunks of DN_CHUNK tokens, the
// form the CPU (`cpu::delta_rule::chunked`), transformers and
// flash-linear-attention compute: the same recurrence as deltanet.cu's
// `gated_delta_rule` (S ← e^g S; S ← S + k (β (v − Sᵀk))ᵀ; o = Sᵀq), its
// sums in another order. Launchers: src/backend/cuda/delta_chunk.rs.
//
// Per chunk of C ≤ 64 tokens with cumulative log-decays c_i (the WY/UT form
// of Yang et al.):
//   A_ij = β_i (k_i·k_j) e^{c_i − c_j} (j < i),  P_ij = (q_i·k_j) e^{c_i − c_j} (j ≤ i),
//   [W | U] = (I + A)⁻¹ [β k e^c | β v]   (forward substitution),
//   V' = U − W·S,  o = e^c (q·S) + P·V',  S ← e^{c_C} S + (k e^{c_C − c})ᵀ V'.
// Everything but the last line depends on the chunk alone, so
//   delta_chunk_prep   computes W, U, P and c for every (chunk, value head)
//                      at once (the bulk of the arithmetic, all in parallel);
//   delta_chunk_state  walks each (sequence, value head, column range)
//                      over its chunks with its state columns in registers,
//                      as gated_delta_rule walks tokens: six block-wide
//                      barriers per chunk instead of one per token, and
//                      the arithmetic of a chunk's tokens independent of
//                      each other (no serial chain per token).
// Rows are read 16 bytes at a time: dk and dv multiples of 4, every buffer
// 16-byte aligned (the launcher checks the sizes). Chunks are the host's:
// they end at absolute multiples of DN_CHUNK (a sequence continued from a
// cached state starts at a block boundary, a multiple of it) and after
// every row whose state the prefix cache keeps.
#include "common.cuh"

#if !defined(DN_CHUNK) || !defined(DN_MAX_THREADS)
#error "DN_CHUNK and DN_MAX_THREADS are defined by build.rs from src/consts.rs"
#endif
#define DC_CH DN_CHUNK

// Dynamic shared memory of both kernels (sized at launch).
extern __shared__ float dc_smem[];
#define DC_PREP_THREADS 256
static_assert(DC_CH == 64, "delta_chunk_prep's 16 × 16 threads of 4 × 4 (query, key) pairs and its "
                           "32-lane scan of two tokens each cover a 64-token chunk");

// Launch: grid (chunks, v_heads), DC_PREP_THREADS threads, dynamic shared
// memory (sized by the launcher, `smem_bytes`): q and k rows [CH][dk + 4]
// (16-byte rows; the 8 lanes of a quarter-warp reading 8 rows' 16 bytes at
// one offset hit distinct banks), A [CH][CH + 1], c and β [CH] floats. Writes, per row of the chunk and value
// head, W | U (`wu`), the row of P (`pm`, zeros after the diagonal) and c.
extern "C" __global__ void __launch_bounds__(DC_PREP_THREADS)
    delta_chunk_prep(const float* __restrict__ mixed,        // [n, cd]: q | k | v
                     const float* __restrict__ g,            // [n, vh]
                     const float* __restrict__ beta,         // [n, vh]
                     const int32_t* __restrict__ chunk_start,  // [chunks + 1]
                     float* __restrict__ wu,                 // [n, vh, dk + dv]
                     float* __restrict__ pm,                 // [n, vh, CH]
                     float* __restrict__ cum_out,            // [n, vh]
                     int cd, int k_heads, int v_heads, int dk, int dv) {
    const int head = blockIdx.y, kh = head / (v_heads / k_heads);
    const int r0 = chunk_start[blockIdx.x], C = chunk_start[blockIdx.x + 1] - r0;
    const int kd = k_heads * dk, ks = dk + 4, as = DC_CH + 1, tid = threadIdx.x;
    float* qs = dc_smem;           // [CH][ks]
    float* kss = qs + DC_CH * ks;  // [CH][ks]
    float* As = kss + DC_CH * ks;  // [CH][as]
    float* cum = As + DC_CH * as;  // [CH]
    float* bs = cum + DC_CH;       // [CH]
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int e = tid; e < DC_CH * (dk / 4); e += blockDim.x) {
        const int i = e / (dk / 4), d = e % (dk / 4) * 4;
        const float* m = mixed + (size_t)(r0 + i) * cd + kh * dk + d;
        const float4 qv = i < C ? *reinterpret_cast<const float4*>(m) : zero4;
        const float4 kv = i < C ? *reinterpret_cast<const float4*>(m + kd) : zero4;
        *reinterpret_cast<float4*>(qs + i * ks + d) = qv;
        *reinterpret_cast<float4*>(kss + i * ks + d) = kv;
    }
    if (tid < DC_CH) bs[tid] = tid < C ? beta[(size_t)(r0 + tid) * v_heads + head] : 0.0f;
    if (tid < 32) {
        // The cumulative decays: a scan over warp 0, two tokens a lane
        // (rows ≥ C add nothing).
        const int i0 = 2 * tid;
        const float g0 = i0 < C ? g[(size_t)(r0 + i0) * v_heads + head] : 0.0f;
        const float g1 = i0 + 1 < C ? g[(size_t)(r0 + i0 + 1) * v_heads + head] : 0.0f;
        float incl = g0 + g1;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float up = __shfl_up_sync(FULL_MASK, incl, o);
            if (tid >= o) incl += up;
        }
        float before = __shfl_up_sync(FULL_MASK, incl, 1);
        if (tid == 0) before = 0.0f;
        cum[i0] = before + g0;
        cum[i0 + 1] = incl;
    }
    __syncthreads();
    if (tid < C) cum_out[(size_t)(r0 + tid) * v_heads + head] = cum[tid];

    // A and P: thread (ti, tj) takes rows ti + 16a and columns tj + 16b,
    // four elements of each row per 16-byte load.
    const int ti = tid / 16, tj = tid % 16;
    float ak[4][4] = {}, pq[4][4] = {};
    for (int d = 0; d < dk; d += 4) {
        float4 ki[4], qi[4], kj[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            ki[a] = *reinterpret_cast<const float4*>(kss + (ti + 16 * a) * ks + d);
            qi[a] = *reinterpret_cast<const float4*>(qs + (ti + 16 * a) * ks + d);
            kj[a] = *reinterpret_cast<const float4*>(kss + (tj + 16 * a) * ks + d);
        }
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                ak[a][b] += ki[a].x * kj[b].x + ki[a].y * kj[b].y + ki[a].z * kj[b].z + ki[a].w * kj[b].w;
                pq[a][b] += qi[a].x * kj[b].x + qi[a].y * kj[b].y + qi[a].z * kj[b].z + qi[a].w * kj[b].w;
            }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const int i = ti + 16 * a, j = tj + 16 * b;
            // Rows and columns ≥ C are zero; e^{c_i − c_j} only where j ≤ i.
            const float dec = (i < C && j <= i) ? expf(cum[i] - cum[j]) : 0.0f;
            As[i * as + j] = j < i ? bs[i] * ak[a][b] * dec : 0.0f;
            if (i < C) pm[((size_t)(r0 + i) * v_heads + head) * DC_CH + j] = pq[a][b] * dec;
        }
    __syncthreads();

    // Forward substitution, one column of [W | U] per thread, the column in
    // registers: X_i = B_i − Σ_{j<i} A_ij X_j.
    for (int c = tid; c < dk + dv; c += blockDim.x) {
        // Column c of B: β k e^c (c < dk), else β v.
        const size_t vcol = (size_t)r0 * cd + 2 * kd + head * dv + (c < dk ? 0 : c - dk);
        float x[DC_CH];
#pragma unroll
        for (int i = 0; i < DC_CH; ++i) {
            x[i] = 0.0f;
            if (i < C) x[i] = c < dk ? bs[i] * kss[i * ks + c] * expf(cum[i]) : bs[i] * mixed[vcol + (size_t)i * cd];
        }
        // Column by column: x_j is final once the columns before it are applied.
#pragma unroll
        for (int j = 0; j < DC_CH - 1; ++j)
#pragma unroll
            for (int i = j + 1; i < DC_CH; ++i) x[i] -= As[i * as + j] * x[j];
        float* dst = wu + ((size_t)r0 * v_heads + head) * (dk + dv) + c;
#pragma unroll
        for (int i = 0; i < DC_CH; ++i)
            if (i < C) dst[(size_t)i * v_heads * (dk + dv)] = x[i];
    }
}

// A staged row's RPT values (16 bytes a load) against a thread's RPT state
// rows, in four independent chains of RPT / 4 FMAs (one chain would make
// each token's dot product RPT dependent FMAs long).
template <int RPT>
__device__ __forceinline__ float dc_rows_dot(const float4* row, const float* S) {
    float a = 0.0f, b = 0.0f, c = 0.0f, d = 0.0f;
#pragma unroll
    for (int r = 0; r < RPT / 4; ++r) {
        const float4 v = row[r];
        a += v.x * S[4 * r], b += v.y * S[4 * r + 1];
        c += v.z * S[4 * r + 2], d += v.w * S[4 * r + 3];
    }
    return (a + b) + (c + d);
}

// Launch: grid (seqs, v_heads, dv / cols), 32·ceil(cols·P / 32) threads (P
// = dk / RPT; thread (j, p) owns column j and rows p·RPT … p·RPT + RPT − 1
// of the state, as in gated_delta_rule), dynamic shared memory (sized by
// the launcher, `smem_bytes`), floats: one staged [CH][dk + 4·dk/RPT]
// operand (W, then q, then k: each RPT-row group padded by 4 floats, so a
// thread reads its rows 16 bytes at a time and the P groups of a
// quarter-warp hit distinct banks), P [CH][CH], V' [cols][CH + P] (by
// column: the P lanes of a column read distinct banks), c [CH].
template <int RPT>
__device__ void delta_chunk_state(const float* __restrict__ mixed,        // [n, cd]: q | k | v
                                  const float* __restrict__ wu,           // [n, vh, dk + dv]
                                  const float* __restrict__ pm,           // [n, vh, CH]
                                  const float* __restrict__ cumg,         // [n, vh]
                                  const int32_t* __restrict__ chunk_start,  // [chunks + 1]
                                  const int32_t* __restrict__ seq_chunk,  // [seqs + 1]
                                  const float* __restrict__ init,         // [seqs, vh, dk, dv], or null (zeros)
                                  float* __restrict__ final_state,        // [seqs, vh, dk, dv], or null
                                  const int32_t* __restrict__ snap_at,    // [n]: snapshot slot after the row, or −1; or null
                                  float* __restrict__ snaps,              // [slots, vh, dk, dv]
                                  float* __restrict__ out,                // [n, vh·dv]
                                  int cd, int k_heads, int v_heads, int dk, int dv, int cols) {
    const int P = dk / RPT, ks = dk + 4 * (dk / RPT), vs = DC_CH + P, w = dk + dv;
    static_assert(RPT % 4 == 0, "a thread's rows are whole 16-byte groups");
    float* st = dc_smem;           // [CH][ks]
    float* ps = st + DC_CH * ks;   // [CH][CH]
    float* vp = ps + DC_CH * DC_CH;  // [cols][vs]
    float* cum = vp + cols * vs;   // [CH]
    const int s = blockIdx.x, head = blockIdx.y, kh = head / (v_heads / k_heads);
    const int jl = threadIdx.x / P, j = blockIdx.z * cols + jl, p = threadIdx.x % P;
    const bool active = jl < cols && j < dv;
    const int kd = k_heads * dk;
    const size_t state = (((size_t)s * v_heads + head) * dk) * dv;

    float S[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
        S[r] = active && init ? init[state + (size_t)(p * RPT + r) * dv + j] : 0.0f;

    // Rows [r0, r0 + C) of dk values each (at src + row · stride) into
    // `st`, 16 bytes a load and a store (a load's 4 values stay in one
    // RPT-row group), eight loads in flight per thread.
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    auto stage = [&](const float* src, size_t stride, int r0, int C) {
        const int q4 = dk / 4;
#pragma unroll 8
        for (int e = threadIdx.x; e < DC_CH * q4; e += blockDim.x) {
            const int i = e / q4, d = e % q4 * 4;
            const float4 v = i < C ? *reinterpret_cast<const float4*>(src + (size_t)(r0 + i) * stride + d) : zero4;
            *reinterpret_cast<float4*>(st + i * ks + d + 4 * (d / RPT)) = v;
        }
    };
    for (int ch = seq_chunk[s]; ch < seq_chunk[s + 1]; ++ch) {
        const int r0 = chunk_start[ch], C = chunk_start[ch + 1] - r0;
        // W's rows, P, c, and U's columns of this block into V'.
        stage(wu + (size_t)head * w, (size_t)v_heads * w, r0, C);
#pragma unroll 8
        for (int e = threadIdx.x; e < DC_CH * DC_CH / 4; e += blockDim.x) {
            const int i = e / (DC_CH / 4), m = e % (DC_CH / 4) * 4;
            const float* src = pm + ((size_t)(r0 + i) * v_heads + head) * DC_CH + m;
            reinterpret_cast<float4*>(ps)[e] = i < C ? *reinterpret_cast<const float4*>(src) : zero4;
        }
#pragma unroll 8
        for (int e = threadIdx.x; e < DC_CH * cols; e += blockDim.x) {
            const int i = e / cols, c = e % cols, jj = blockIdx.z * cols + c;
            vp[c * vs + i] = i < C && jj < dv ? wu[((size_t)(r0 + i) * v_heads + head) * w + dk + jj] : 0.0f;
        }
        for (int i = threadIdx.x; i < DC_CH; i += blockDim.x)
            cum[i] = i < C ? cumg[(size_t)(r0 + i) * v_heads + head] : 0.0f;
        __syncthreads();
        // V' = U − W·S (tokens independent: four in flight).
#pragma unroll 4
        for (int i = 0; i < C; ++i) {
            const float4* wr = reinterpret_cast<const float4*>(st + i * ks + p * (RPT + 4));
            float acc = dc_rows_dot<RPT>(wr, S);
            acc = lane_group_sum(acc, P);
            if (active && p == 0) vp[jl * vs + i] -= acc;
        }
        __syncthreads();
        stage(mixed + kh * dk, cd, r0, C);  // q
        __syncthreads();
        // o = e^c (q·S) + P·V': the P lanes of a column split P·V''s terms.
#pragma unroll 4
        for (int i = 0; i < C; ++i) {
            const float4* qr = reinterpret_cast<const float4*>(st + i * ks + p * (RPT + 4));
            float acc = dc_rows_dot<RPT>(qr, S) * expf(cum[i]);
            if (active)
                for (int m = p; m <= i; m += P) acc += ps[i * DC_CH + m] * vp[jl * vs + m];
            acc = lane_group_sum(acc, P);
            if (active && p == 0) out[(size_t)(r0 + i) * v_heads * dv + (size_t)head * dv + j] = acc;
        }
        __syncthreads();
        stage(mixed + kd + kh * dk, cd, r0, C);  // k
        __syncthreads();
        // S ← e^{c_C} S + (k e^{c_C − c})ᵀ V'.
        const float last = cum[C - 1], el = expf(last);
#pragma unroll
        for (int r = 0; r < RPT; ++r) S[r] *= el;
        if (active)
            for (int i = 0; i < C; ++i) {
                const float f = expf(last - cum[i]) * vp[jl * vs + i];
                const float4* kr = reinterpret_cast<const float4*>(st + i * ks + p * (RPT + 4));
#pragma unroll
                for (int r = 0; r < RPT / 4; ++r) {
                    const float4 kv = kr[r];
                    S[4 * r] += kv.x * f, S[4 * r + 1] += kv.y * f;
                    S[4 * r + 2] += kv.z * f, S[4 * r + 3] += kv.w * f;
                }
            }
        // The state after the chunk's last row into its cache block's
        // snapshot (the host ends a chunk after every such row).
        const int slot = snap_at ? snap_at[r0 + C - 1] : -1;
        if (slot >= 0 && active) {
            float* dst = snaps + (((size_t)slot * v_heads + head) * dk) * dv;
#pragma unroll
            for (int r = 0; r < RPT; ++r) dst[(size_t)(p * RPT + r) * dv + j] = S[r];
        }
        __syncthreads();  // before the next chunk's staging
    }
    if (final_state && active) {
#pragma unroll
        for (int r = 0; r < RPT; ++r) final_state[state + (size_t)(p * RPT + r) * dv + j] = S[r];
    }
}

// Entry points `delta_chunk_state_r<RPT>`: dk = P·RPT with P a power of two ≤ 32.
#define DELTA_CHUNK_STATE(RPT)                                                                     \
    extern "C" __global__ void __launch_bounds__(DN_MAX_THREADS, 1) delta_chunk_state_r##RPT(         \
        const float* mixed, const float* wu, const float* pm, const float* cumg,                   \
        const int32_t* chunk_start, const int32_t* seq_chunk, const float* init, float* final_state, \
        const int32_t* snap_at, float* snaps, float* out, int cd, int k_heads, int v_heads, int dk, \
        int dv, int cols) {                                                                        \
        delta_chunk_state<RPT>(mixed, wu, pm, cumg, chunk_start, seq_chunk, init, final_state,     \
                               snap_at, snaps, out, cd, k_heads, v_heads, dk, dv, cols);           \
    }
DELTA_CHUNK_STATE(8)
DELTA_CHUNK_STATE(16)
DELTA_CHUNK_STATE(32)
