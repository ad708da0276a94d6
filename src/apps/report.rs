//! HTML report (placeholder while the charts are written).

use crate::Result;
use crate::apps::eval::EvalReport;
use crate::apps::scored::ScoredSet;

/// What to put in the report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub title: String,
}

/// Render the report.
pub fn render_html(_set: &ScoredSet, _report: &EvalReport, opts: &ReportOptions) -> Result<String> {
    Ok(format!("<!doctype html><title>{}</title>", opts.title))
}
