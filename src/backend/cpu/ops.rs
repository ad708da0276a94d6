//! The CPU twins of the CUDA kernels, by kernel, for the parity tests and
//! benches: RMSNorm (`rmsnorm.cu`), RoPE (`rope.cu`), the gated activation
//! (`silu_mul.cu`) and attention (`attention.cu`). Each lives in the file of
//! its block kind.

pub use super::attention::{
    AttnShape, attention, attention_bf16, attention_reference, softmax_in_place,
};
pub use super::mlp::silu_mul_inplace;
pub use super::norm::{rms_norm, rms_norm_inplace, rms_norm_row};
pub use super::rope::{RopeTable, rope_row};
