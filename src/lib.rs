//! padv: step-level progress advantage `A_t = β·(log π_θ(a_t|s_t) − log π_ref(a_t|s_t))`
//! for LLM-agent trajectories, from a post-trained policy and its reference.
//!
//! Data path: trajectory → render + tokenize ([`trajectory`], [`tokenizer`]) →
//! teacher-forced forward of both models ([`backend`], [`model`]) → fused
//! log-prob difference per token ([`score::fused`]) → step and trajectory scores
//! ([`score::aggregate`]) → applications ([`apps`]).

pub mod apps;
pub mod backend;
pub mod bench;
pub mod error;
pub mod kv;
pub mod model;
pub mod pipeline;
pub mod score;
pub mod session;
pub mod tokenizer;
pub mod trajectory;

pub use error::{Error, Result};
