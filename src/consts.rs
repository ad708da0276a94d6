// Constants the Rust code and the CUDA kernels must agree on. `build.rs`
// includes this file and passes every entry of `FOR_NVCC` to nvcc as
// `-DNAME=value`; the kernels refuse to compile without them and check
// the relations between them (`static_assert`), so the two sides cannot
// drift: change a value here and both sides change.

/// Tokens per KV block: the prefix cache's default block size and the CUDA
/// KV pool's block (`kernels/attention.cu` reads it; the host computes the
/// pool slots `kernels/rope.cu` writes).
pub const KV_BLOCK: usize = 16;
/// Queries per CUDA attention tile (both kernels; the tensor-core kernel's
/// `MMA_WARPS` warps take 16 query rows each).
pub const ATTN_BR: usize = 64;
/// Queries per half-tile of the SIMT attention kernel (its shared memory is
/// sized from it on the host).
pub const SIMT_BR: usize = 32;
/// Keys per tile of the SIMT attention kernel: one per lane of a warp.
pub const ATTN_BC: usize = 32;
/// Warps of the SIMT attention kernel (launched with `ATTN_WARPS · 32` threads).
pub const ATTN_WARPS: usize = 8;
/// Warps of the tensor-core attention kernel (launched with `MMA_WARPS · 32` threads).
pub const MMA_WARPS: usize = 4;
/// Keys per tile of the tensor-core attention kernel.
pub const MMA_BC: usize = 64;
/// Top log-probs averaged by the self-certainty baseline (CPU fused scorer
/// and `kernels/fused_logprob.cu`).
pub const TOP_K: usize = 20;
/// Threads of the fused scorer's kernels (`kernels/fused_logprob.cu`).
pub const FUSED_THREADS: usize = 256;
/// Floats per slice partial of the fused scorer (`struct Partial`), which
/// the host allocates.
pub const FUSED_PARTIAL_FLOATS: usize = 32;

/// Hidden rows per block of the folded LM head (`kernels/lm_head_fold.cu`).
pub const FOLD_BM: usize = 128;
/// Vocabulary columns per sub-tile of the folded LM head; each block's
/// vocabulary range is a multiple of it.
pub const FOLD_BN: usize = 128;
/// Hidden-dimension elements per pipeline stage of the folded LM head.
pub const FOLD_BK: usize = 32;
/// Pipeline stages (cp.async) of the folded LM head.
pub const FOLD_STAGES: usize = 3;
/// Threads of the folded LM head: four warps of 64 rows × 64 columns.
pub const FOLD_THREADS: usize = 128;
/// Dynamic shared memory of the folded LM head, bytes: the staged hidden and
/// weight tiles (16-bit, rows padded by 8 elements), each warp's top-k lists
/// per row, the two column halves' row statistics and the rows' targets.
pub const FOLD_SMEM_BYTES: usize = FOLD_STAGES * (FOLD_BM + FOLD_BN) * (FOLD_BK + 8) * 2
    + 2 * FOLD_BM * TOP_K * 4
    + 2 * FOLD_BM * 3 * 4
    + FOLD_BM * 4;

/// Most threads of a gated-delta-rule block (`kernels/deltanet.cu`'s
/// launch bounds: 128 registers a thread, enough for 32 state rows, the
/// next token's prefetch and no spills).
pub const DN_MAX_THREADS: usize = 512;
/// Values of a token one gated-delta-rule thread prefetches at most.
pub const DN_PREFETCH: usize = 8;
/// Tokens per chunk of the chunked delta rule (transformers' and FLA's
/// `chunk_size`; the CPU's and `kernels/delta_chunk.cu`'s). Backends chunk
/// at absolute multiples of it, so a prefix cache of a model with DeltaNet
/// layers reuses states at those boundaries.
pub const DN_CHUNK: usize = 64;

/// Every constant above, by the name the kernels use.
pub const FOR_NVCC: [(&str, usize); 19] = [
    ("KV_BLOCK", KV_BLOCK),
    ("ATTN_BR", ATTN_BR),
    ("SIMT_BR", SIMT_BR),
    ("ATTN_BC", ATTN_BC),
    ("ATTN_WARPS", ATTN_WARPS),
    ("MMA_WARPS", MMA_WARPS),
    ("MMA_BC", MMA_BC),
    ("TOP_K", TOP_K),
    ("FUSED_THREADS", FUSED_THREADS),
    ("FUSED_PARTIAL_FLOATS", FUSED_PARTIAL_FLOATS),
    ("FOLD_BM", FOLD_BM),
    ("FOLD_BN", FOLD_BN),
    ("FOLD_BK", FOLD_BK),
    ("FOLD_STAGES", FOLD_STAGES),
    ("FOLD_THREADS", FOLD_THREADS),
    ("FOLD_SMEM_BYTES", FOLD_SMEM_BYTES),
    ("DN_MAX_THREADS", DN_MAX_THREADS),
    ("DN_PREFETCH", DN_PREFETCH),
    ("DN_CHUNK", DN_CHUNK),
];
