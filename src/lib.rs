//! padv: step-level progress advantage `A_t = β·(log π_θ(a_t|s_t) − log π_ref(a_t|s_t))`
//! for LLM-agent trajectories, from a post-trained policy and its reference.
//!
//! Data path: trajectory → render + tokenize ([`trajectory`], [`tokenizer`]) →
//! teacher-forced forward of both models ([`backend`], [`model`]) → fused
//! log-prob difference per token ([`score::fused`]) → step and trajectory scores
//! ([`score::aggregate`], typed as [`score::scored`], with the baselines in
//! [`score::method`]) → applications ([`apps`], and, with the default
//! feature `serve`, the HTTP service `serve`).
//!
//! Embedding: load a pair once with [`Scorer::load`], score whole records
//! with [`Scorer::score`], or follow an agent step by step with a
//! [`Session`] ([`Scorer::append`], [`Scorer::candidates`]).
//!
//! ```
//! use padv::{Scorer, ScorerOptions, Session};
//! use serde_json::json;
//! # fn main() -> padv::Result<()> {
//! let toy = padv::toyworld::dir()?.join("models"); // the bundled pair
//! let mut scorer = Scorer::load(&toy.join("trained"), &toy.join("ref"), ScorerOptions::default())?;
//!
//! let system = json!({"role": "system", "content": "get the key , then open the door ."});
//! let seen = json!({"role": "user", "content": "start . at 1 0 . left 12 . key 1 north . door 1 south . danger none ."});
//! let act = json!({"role": "assistant", "content": "go north"});
//!
//! // A whole trajectory, in any input format `padv score` reads.
//! let record = padv::trajectory::record_from_json(
//!     json!({"id": "t1", "messages": [system, seen, act]}),
//!     "example",
//! )?;
//! for scored in scorer.score(&[record]) {
//!     let scored = scored?;
//!     assert_eq!(scored.steps.len(), 1);
//!     println!("{}", scorer.to_json(&scored)); // the line `padv score` writes
//! }
//!
//! // The same step, online.
//! let mut session = Session::new(vec![system]);
//! let steps = scorer.append(&mut session, vec![seen, act])?;
//! println!("advantage of `go north`: {:?}", steps[0].advantage);
//! # Ok(())
//! # }
//! ```

pub mod apps;
pub mod backend;
pub mod bench;
/// Constants shared with the CUDA kernels (build.rs passes them to nvcc).
pub mod consts;
pub mod error;
pub mod hub;
pub mod kv;
pub mod model;
pub mod pipeline;
pub mod score;
/// The HTTP service (`padv serve`); feature `serve` (on by default).
#[cfg(feature = "serve")]
pub mod serve;
pub mod session;
/// Run-time choice of the CPU kernels (`PADV_CPU_KERNELS`), and `dispatch!`.
pub mod simd;
pub mod tokenizer;
pub mod toyworld;
pub mod trajectory;

pub use error::{Error, Result};
pub use pipeline::{ScoredRecord, Scorer, ScorerOptions};
pub use score::{Method, ScoreSettings, ScoredTrajectory, StepScore};
pub use session::Session;
