// kv_copy.cu — copy fixed-size rows between device buffers by index: the
// prefix cache's K/V blocks and boundary hidden states.
//
// What it is for: the GPU prefix cache keeps each model's cached K/V in
// per-layer arenas `[cache_blocks, KV_BLOCK, kv_heads, head_dim]` and the
// final-norm hidden state of each block's last token `[cache_blocks,
// hidden]`. A forward over a wave works in a wave-local paged pool (the
// layout kernels/attention.cu reads), so per layer it copies the hit blocks
// arena → pool before attention and the blocks it filled pool → arena
// after; the scorer copies boundary hidden states arena → its row list and
// filled blocks' last rows → arena. One launch per list instead of one
// memcpy per block (a 10-step trajectory's step hits hundreds of blocks
// per layer). CPU twin: `kv::ModelKv::gather` and the `last_hidden` copies
// in `backend::cpu`.
//
// Rows are opaque bytes: `row_words` 16-byte words (every K/V block and, for
// hidden sizes that are multiples of 8 bf16/f16 or 4 f32, every hidden row)
// or, through `copy_rows_b2`, 2-byte half-words for other widths.
// Launch: grid (n, 1, 1) blocks of 256 threads; block i copies row
// src_rows[i] of src to row dst_rows[i] of dst. Rows listed twice in
// dst_rows race (the host never lists a row twice).
#include "common.cuh"

template <typename W>
__device__ void copy_rows(const W* __restrict__ src, const int32_t* __restrict__ src_rows,
                          W* __restrict__ dst, const int32_t* __restrict__ dst_rows,
                          int row_words) {
    const size_t s = (size_t)src_rows[blockIdx.x] * row_words;
    const size_t d = (size_t)dst_rows[blockIdx.x] * row_words;
    for (int w = threadIdx.x; w < row_words; w += blockDim.x) dst[d + w] = src[s + w];
}

extern "C" __global__ void copy_rows_b16(const uint4* src, const int32_t* src_rows, uint4* dst,
                                         const int32_t* dst_rows, int row_words) {
    copy_rows<uint4>(src, src_rows, dst, dst_rows, row_words);
}

extern "C" __global__ void copy_rows_b2(const uint16_t* src, const int32_t* src_rows,
                                        uint16_t* dst, const int32_t* dst_rows, int row_words) {
    copy_rows<uint16_t>(src, src_rows, dst, dst_rows, row_words);
}
