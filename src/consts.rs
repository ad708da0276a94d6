// Constants the Rust code and the CUDA kernels must agree on. `build.rs`
// includes this file and passes each value to nvcc as `-DNAME=value`; the
// kernels refuse to compile without them, so the two sides cannot drift.

/// Tokens per KV block: the prefix cache's default block size and the CUDA
/// KV pool's block (`kernels/attention.cu`, `kernels/rope.cu`).
pub const KV_BLOCK: usize = 16;
/// Queries per CUDA attention tile.
pub const ATTN_BR: usize = 64;
/// Top log-probs averaged by the self-certainty baseline (CPU fused scorer
/// and `kernels/fused_logprob.cu`).
pub const TOP_K: usize = 20;
