//! Applications of step scores, following the paper's three scenarios
//! (deeplearning-wisc/progress-advantage: `runners/tau2_uq.py`,
//! `runners/tau2_bon.py`, `runners/fa.py`):
//!
//! - [`scored`], [`method`]: re-exported from [`crate::score`], where the
//!   output types live (the typed form of `padv score` output; progress
//!   advantage and the baselines as trajectory scores).
//! - [`metrics`]: AUROC (Mann–Whitney) and Spearman ρ (average ranks).
//! - [`select`]: best-of-N — keep the highest-scoring rollout per group.
//! - [`attribute`]: the decisive-error step by three predictors.
//! - [`eval`]: all metrics for every method, as JSON or Markdown, and the
//!   token × step aggregation sweep.
//! - [`report`]: one self-contained HTML file with tables and SVG charts.
//!
//! Every score is oriented so that higher means "predicted more successful";
//! every tie is broken towards the earliest index.

pub mod attribute;
pub mod eval;
pub mod metrics;
pub mod report;
pub mod select;

pub use crate::score::{method, scored};

pub use crate::score::{
    Aggregation, Labels, Method, ReadOptions, ScoreSettings, ScoredSet, ScoredTrajectory,
    SkippedRecord, StepScore, parse_scored, read_scored,
};
pub use attribute::{Attribution, Predictor, attribute, attribution_lines, unattributable};
pub use eval::{EvalReport, evaluate, sweep, sweep_json, sweep_markdown};
pub use report::{ReportOptions, render_html};
pub use select::{Selection, select};
