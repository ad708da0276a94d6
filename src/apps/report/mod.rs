//! One self-contained HTML report of an evaluation: settings, the metrics
//! table, ROC curves per method, best-of-N bars, and step-score charts of a
//! few labelled failures with every predictor's pick. Inline CSS and SVG
//! only — no script, no fonts or images fetched — so the file can be mailed
//! or archived as it is. `scripts/render-report.sh` screenshots it with
//! headless Chromium for a visual check.

mod charts;
pub mod svg;

use std::fmt::Write;

use crate::Result;
use crate::apps::attribute::{Predictor, attribute};
use crate::apps::eval::{EvalReport, error_records, fmt};
use crate::apps::metrics::roc_curve;
use crate::score::method::{Aggregation, Method};
use crate::score::scored::{ScoredSet, ScoredTrajectory};
use charts::{best_of_n_chart, roc_chart, short, step_chart, step_legend};
use svg::esc;

/// What to put in the report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub title: String,
    /// Whose step scores the trajectory charts show.
    pub method: Method,
    /// How many trajectories to chart (labelled failures first).
    pub n_examples: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            title: "padv evaluation".to_string(),
            method: Method::ProgressAdvantage,
            n_examples: 6,
        }
    }
}

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1120px;margin:24px auto;padding:0 20px;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.meta,p.note{color:#555;margin:4px 0 10px;font-size:.92em}
table{border-collapse:collapse;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{padding:5px 9px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th{background:#f4f4f4;vertical-align:bottom}th.group{text-align:center;border-bottom:1px solid #ccc}
td:first-child,th:first-child{text-align:left}tr.pa td{background:#fff3ea}td.best{font-weight:700}
.sw{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.tri{display:inline-block;width:0;height:0;border-left:6px solid transparent;border-right:6px solid transparent;border-top:10px solid;margin-right:5px;vertical-align:0}
.legend-row{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:.88em;margin:6px 0 10px}
.grid-charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
figcaption{font-size:.85em;margin-bottom:2px}figcaption b{font-family:ui-monospace,monospace;font-weight:600}
svg{max-width:100%;height:auto;font-family:inherit}figure svg{width:100%}
svg .grid{stroke:#ececec;stroke-width:1}svg .frame{fill:none;stroke:#999;stroke-width:1}
svg .tick{font-size:11px;fill:#444}svg .axis{font-size:12.5px;fill:#222}
svg .legend{font-size:12.5px;fill:#222}svg .legend-title{font-size:12.5px;font-weight:600;fill:#222}
svg .value{font-size:11.5px;fill:#222}svg .note{font-size:11.5px;fill:#888;font-style:italic}
svg .row-label{font-size:10px;fill:#555}svg .chance{stroke:#888;stroke-dasharray:5 4;stroke-width:1.2}
svg .zero{stroke:#444;stroke-width:1}svg .label-band{fill:#F5C16C;opacity:.45}
svg .bar-pos{fill:#3A7DBA}svg .bar-neg{fill:#D1495B}
"#;

/// Render the report for `set`, evaluated as `report`.
pub fn render_html(set: &ScoredSet, report: &EvalReport, opts: &ReportOptions) -> Result<String> {
    let agg = report.aggregation();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&opts.title)
    );
    let _ = write!(html, "<h1>{}</h1>", esc(&opts.title));
    let s = &report.settings;
    let _ = write!(
        html,
        "<p class=\"meta\">{} trajectories{} · token aggregation <b>{}</b> · step aggregation <b>{}</b> · β = {}{}</p>",
        report.n_trajectories,
        if report.skipped_error_records > 0 {
            format!(" ({} skipped)", error_records(report.skipped_error_records))
        } else {
            String::new()
        },
        s.token_agg,
        s.step_agg,
        s.beta,
        s.render
            .as_deref()
            .map(|r| format!(" · render {}", esc(r)))
            .unwrap_or_default()
    );

    html.push_str("<h2>Metrics</h2>");
    html.push_str(&metrics_table(report));
    html.push_str(
        "<p class=\"note\">All scores are oriented so that higher means more likely to succeed \
         (entropy is negated). Best-of-N ties go to the earliest rollout. Bold: best per column.</p>",
    );

    html.push_str("<h2>Uncertainty: ROC curves (success vs. trajectory score)</h2>");
    let mut curves = Vec::new();
    for m in Method::ALL {
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for t in &set.trajectories {
            if let (Some(score), Some(ok)) = (t.score(m, agg)?, t.labels.success) {
                scores.push(score);
                labels.push(ok);
            }
        }
        let auc = report.uncertainty_of(m).map_or(f64::NAN, |u| u.auroc);
        curves.push((m, auc, roc_curve(&scores, &labels)));
    }
    if curves.iter().all(|(_, _, c)| c.is_empty()) {
        html.push_str("<p class=\"note\">No ROC curve: the trajectories need both successes and failures.</p>");
    } else {
        html.push_str(&roc_chart(&curves));
    }

    html.push_str("<h2>Best-of-N: success rate of the picked rollout</h2>");
    if report.best_of_n.n_groups == 0 {
        html.push_str("<p class=\"note\">No groups with success labels.</p>");
    } else {
        html.push_str(&best_of_n_chart(&report.best_of_n));
    }

    let _ = write!(
        html,
        "<h2>Step scores of example trajectories ({})</h2>",
        esc(opts.method.label())
    );
    html.push_str(&step_charts(set, opts, agg)?);
    html.push_str("</body></html>\n");
    Ok(html)
}

fn metrics_table(r: &EvalReport) -> String {
    // Columns: AUROC, ρ, BoN, then accuracy/MAE per predictor.
    let mut rows: Vec<(Method, Vec<f64>, usize)> = Vec::new();
    for m in Method::ALL {
        let u = r.uncertainty_of(m);
        let mut v = vec![
            u.map_or(f64::NAN, |u| u.auroc),
            u.map_or(f64::NAN, |u| u.spearman),
            r.best_of_n_success(m).unwrap_or(f64::NAN),
        ];
        for p in Predictor::ALL {
            let a = r.attribution_of(m, p);
            v.push(a.map_or(f64::NAN, |a| a.accuracy));
            v.push(a.map_or(f64::NAN, |a| a.mae));
        }
        rows.push((m, v, u.map_or(0, |u| u.n)));
    }
    let lower_is_better = |c: usize| c >= 3 && (c - 3) % 2 == 1;
    let n_cols = rows[0].1.len();
    let best: Vec<f64> = (0..n_cols)
        .map(|c| {
            let vals = rows.iter().map(|r| r.1[c]).filter(|v| v.is_finite());
            if lower_is_better(c) {
                vals.fold(f64::INFINITY, f64::min)
            } else {
                vals.fold(f64::NEG_INFINITY, f64::max)
            }
        })
        .collect();
    let n_att = r.attribution.first().map_or(0, |(_, a)| a[0].n);
    let mut out = String::from("<table><thead><tr><th rowspan=\"2\">Method</th>");
    out.push_str(
        "<th class=\"group\" colspan=\"3\">Uncertainty</th><th class=\"group\">Best-of-N</th>",
    );
    for p in Predictor::ALL {
        let _ = write!(out, "<th class=\"group\" colspan=\"2\">{}</th>", p.label());
    }
    out.push_str("</tr><tr><th>AUROC</th><th>Spearman ρ</th><th>n</th><th>success</th>");
    for _ in Predictor::ALL {
        out.push_str("<th>acc.</th><th>MAE</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for (m, v, n) in &rows {
        let class = if *m == Method::ProgressAdvantage {
            " class=\"pa\""
        } else {
            ""
        };
        let _ = write!(out, "<tr{class}><td>{}</td>", m.label());
        let cell = |c: usize| {
            let b = v[c].is_finite() && v[c] == best[c];
            format!(
                "<td{}>{}</td>",
                if b { " class=\"best\"" } else { "" },
                fmt(v[c])
            )
        };
        let _ = write!(out, "{}{}<td>{n}</td>{}", cell(0), cell(1), cell(2));
        for c in 3..n_cols {
            out.push_str(&cell(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    let b = &r.best_of_n;
    let units: Vec<String> = r
        .label_units
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(u, n)| format!("{n} by <code>{}</code> ({})", u.field(), u.describe()))
        .collect();
    let _ = write!(
        out,
        "<p class=\"note\">Best-of-N over {} groups: Mean@N {}, Pass@N {}. Attribution over {} labelled trajectories{}.</p>",
        b.n_groups,
        fmt(b.mean_at_n),
        fmt(b.pass_at_n),
        n_att,
        if units.is_empty() {
            String::new()
        } else {
            format!(": {}", units.join("; "))
        }
    );
    out
}

/// Labelled failures first, then other labelled ones, then the rest.
fn examples(set: &ScoredSet, n: usize) -> Vec<&ScoredTrajectory> {
    let labelled =
        |t: &&ScoredTrajectory| t.labels.failure_step.is_some() || t.labels.mistake_step.is_some();
    let with_steps = set.trajectories.iter().filter(|t| !t.steps.is_empty());
    let mut picked: Vec<&ScoredTrajectory> = with_steps
        .clone()
        .filter(|t| labelled(t) && t.labels.success != Some(true))
        .collect();
    picked.extend(
        with_steps
            .clone()
            .filter(|t| labelled(t) && t.labels.success == Some(true)),
    );
    picked.extend(with_steps.filter(|t| !labelled(t)));
    picked.truncate(n);
    picked
}

fn step_charts(set: &ScoredSet, opts: &ReportOptions, agg: Aggregation) -> Result<String> {
    let chosen = examples(set, opts.n_examples);
    if chosen.is_empty() {
        return Ok("<p class=\"note\">No trajectory has action steps to chart.</p>".into());
    }
    let mut out = step_legend();
    out.push_str("<div class=\"grid-charts\">");
    for t in chosen {
        let Some(a) = attribute(t, opts.method, agg.token)? else {
            continue;
        };
        let label_step = a.label_step(t);
        let outcome = match t.labels.success {
            Some(true) => "success",
            Some(false) => "failure",
            None => "outcome unknown",
        };
        let label = match (a.label, label_step) {
            (Some((u, v)), Some(k)) if u.field() == "mistake_step" => {
                format!("labelled error: message {v} (step {k})")
            }
            (Some(_), Some(k)) => format!("labelled error: step {k}"),
            (Some((_, v)), None) => format!("labelled error: message {v} (not an action)"),
            (None, _) => "no error label".to_string(),
        };
        let picks: Vec<String> = Predictor::ALL
            .iter()
            .map(|&p| format!("{} {}", charts::predictor_short(p), a.pick(p)))
            .collect();
        let score = t.score(opts.method, agg)?.map_or("–".to_string(), short);
        let _ = write!(
            out,
            "<figure><figcaption><b>{}</b> · {outcome} · score {score}<br>{label} · picks: {}</figcaption>{}</figure>",
            esc(&t.id),
            picks.join(", "),
            step_chart(&a, label_step, "Step score")
        );
    }
    out.push_str("</div>");
    Ok(out)
}
