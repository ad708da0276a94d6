//! The report's charts as inline SVG: ROC curves per method, best-of-N
//! success bars, and one step-score chart per example trajectory with the
//! labelled error step and each predictor's pick marked.
//!
//! Every chart has titled axes; legends sit beside or above the plot so no
//! text is drawn over data.

use std::fmt::Write;

use crate::apps::attribute::{Attribution, Predictor};
use crate::apps::eval::{BestOfN, fmt};
use crate::apps::report::svg::{Frame, Scale, axes, esc, nice_ticks, tick_label};
use crate::score::method::Method;

/// Okabe–Ito colours, readable with colour-vision deficiencies.
pub fn method_color(m: Method) -> &'static str {
    match m {
        Method::ProgressAdvantage => "#D55E00",
        Method::PolicyLogprob => "#0072B2",
        Method::ReferenceLogprob => "#56B4E9",
        Method::Entropy => "#009E73",
        Method::SelfCertainty => "#CC79A7",
        Method::DeepconfTail => "#E69F00",
        Method::DeepconfBottom10 => "#555555",
    }
}

pub fn predictor_color(p: Predictor) -> &'static str {
    match p {
        Predictor::MinCumulative => "#6A3D9A",
        Predictor::SharpestDrop => "#1B9E77",
        Predictor::SharpestAbsDrop => "#B8860B",
    }
}

pub fn predictor_short(p: Predictor) -> &'static str {
    match p {
        Predictor::MinCumulative => "MC",
        Predictor::SharpestDrop => "SD",
        Predictor::SharpestAbsDrop => "SAD",
    }
}

fn open_svg(out: &mut String, w: f64, h: f64, label: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"##,
        esc(label)
    );
}

/// One method's ROC curve: `(method, AUROC, (FPR, TPR) points)`.
pub type RocCurve = (Method, f64, Vec<(f64, f64)>);

/// ROC curves: one line per method.
pub fn roc_chart(curves: &[RocCurve]) -> String {
    let (w, h) = (780.0, 470.0);
    let frame = Frame {
        left: 70.0,
        top: 20.0,
        right: 470.0,
        bottom: 420.0,
    };
    let xs = Scale::new((0.0, 1.0), (frame.left, frame.right));
    let ys = Scale::new((0.0, 1.0), (frame.bottom, frame.top));
    let ticks = nice_ticks(0.0, 1.0, 5);
    let mut out = String::new();
    open_svg(&mut out, w, h, "ROC curves per method");
    axes(
        &mut out,
        frame,
        (&xs, &ticks, "False positive rate (failures scored high)"),
        (&ys, &ticks, "True positive rate (successes scored high)"),
    );
    let _ = write!(
        out,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" class="chance"/>"##,
        xs.at(0.0),
        ys.at(0.0),
        xs.at(1.0),
        ys.at(1.0)
    );
    // Draw progress advantage last so it sits on top.
    let mut order: Vec<&RocCurve> = curves.iter().collect();
    order.sort_by_key(|(m, _, _)| *m == Method::ProgressAdvantage);
    for (m, _, pts) in order {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", xs.at(x), ys.at(y)))
            .collect();
        let width = if *m == Method::ProgressAdvantage {
            3.0
        } else {
            1.8
        };
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}" stroke-linejoin="round"/>"##,
            path.join(" "),
            method_color(*m)
        );
    }
    let lx = frame.right + 30.0;
    let _ = write!(
        out,
        r##"<text x="{lx}" y="{:.1}" class="legend-title">Method (AUROC)</text>"##,
        frame.top + 12.0
    );
    for (i, (m, auc, pts)) in curves.iter().enumerate() {
        let y = frame.top + 36.0 + i as f64 * 24.0;
        let text = if pts.is_empty() {
            format!("{} (no scores)", m.label())
        } else {
            format!("{} ({})", m.label(), fmt(*auc))
        };
        let _ = write!(
            out,
            r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="4"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"##,
            y - 4.0,
            lx + 22.0,
            y - 4.0,
            method_color(*m),
            lx + 30.0,
            y,
            esc(&text)
        );
    }
    let y = frame.top + 36.0 + curves.len() as f64 * 24.0;
    let _ = write!(
        out,
        r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" class="chance"/><text x="{:.1}" y="{y:.1}" class="legend">Chance (0.5)</text></svg>"##,
        y - 4.0,
        lx + 22.0,
        y - 4.0,
        lx + 30.0
    );
    out
}

/// Horizontal bars: Mean@N, each method's pick, Pass@N.
pub fn best_of_n_chart(b: &BestOfN) -> String {
    let mut rows: Vec<(String, f64, &str)> =
        vec![("Mean@N (random pick)".into(), b.mean_at_n, "#BBBBBB")];
    for (m, s) in &b.success {
        rows.push((m.label().to_string(), *s, method_color(*m)));
    }
    rows.push(("Pass@N (oracle pick)".into(), b.pass_at_n, "#777777"));
    let row_h = 30.0;
    let frame = Frame {
        left: 200.0,
        top: 14.0,
        right: 680.0,
        bottom: 14.0 + rows.len() as f64 * row_h,
    };
    let (w, h) = (780.0, frame.bottom + 50.0);
    let xs = Scale::new((0.0, 1.0), (frame.left, frame.right));
    let ys = Scale::new((0.0, rows.len() as f64), (frame.top, frame.bottom));
    let ticks = nice_ticks(0.0, 1.0, 5);
    let mut out = String::new();
    open_svg(&mut out, w, h, "Best-of-N success rate per method");
    axes(
        &mut out,
        frame,
        (
            &xs,
            &ticks,
            &format!("Success rate over {} groups", b.n_groups),
        ),
        (&ys, &[], ""),
    );
    for (i, (name, v, color)) in rows.iter().enumerate() {
        let y = ys.at(i as f64) + 5.0;
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            frame.left - 8.0,
            y + 14.0,
            esc(name)
        );
        if v.is_finite() {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" class="value">{}</text>"##,
                frame.left,
                (xs.at(*v) - frame.left).max(0.5),
                row_h - 10.0,
                xs.at(*v) + 5.0,
                y + 14.0,
                fmt(*v)
            );
        } else {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" class="note">no scores</text>"##,
                frame.left + 6.0,
                y + 14.0
            );
        }
    }
    if b.mean_at_n.is_finite() {
        let x = xs.at(b.mean_at_n);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" class="chance"/>"##,
            frame.top, frame.bottom
        );
    }
    out.push_str("</svg>");
    out
}

/// One trajectory's step scores as bars, the labelled error step shaded and
/// each predictor's pick marked in its own row above the plot.
pub fn step_chart(a: &Attribution, label_step: Option<usize>, y_title: &str) -> String {
    let n = a.values.len();
    let (w, h) = (380.0, 250.0);
    let marker_row = 14.0;
    let frame = Frame {
        left: 62.0,
        top: 12.0 + marker_row * 3.0 + 6.0,
        right: w - 12.0,
        bottom: h - 46.0,
    };
    let lo = a.values.iter().copied().fold(0.0, f64::min);
    let hi = a.values.iter().copied().fold(0.0, f64::max);
    let yt = nice_ticks(lo, hi, 4);
    let ys = Scale::new((yt[0], yt[yt.len() - 1]), (frame.bottom, frame.top));
    let xs = Scale::new((-0.5, n as f64 - 0.5), (frame.left, frame.right));
    let every = n.div_ceil(12).max(1);
    let xt: Vec<f64> = (0..n).step_by(every).map(|k| k as f64).collect();
    let mut out = String::new();
    open_svg(&mut out, w, h, &format!("Step scores of {}", a.id));
    if let Some(k) = label_step.filter(|&k| k < n) {
        let band = (frame.right - frame.left) / n as f64;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{band:.1}" height="{:.1}" class="label-band"/>"##,
            xs.at(k as f64) - band / 2.0,
            12.0,
            frame.bottom - 12.0
        );
    }
    axes(
        &mut out,
        frame,
        (&xs, &xt, "Action step"),
        (&ys, &yt, y_title),
    );
    let zero = ys.at(0.0);
    let bar = ((frame.right - frame.left) / n.max(1) as f64 * 0.7).min(28.0);
    for (k, &v) in a.values.iter().enumerate() {
        let x = xs.at(k as f64) - bar / 2.0;
        let (top, height) = if v >= 0.0 {
            (ys.at(v), zero - ys.at(v))
        } else {
            (zero, ys.at(v) - zero)
        };
        let class = if v >= 0.0 { "bar-pos" } else { "bar-neg" };
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}" class="{class}"><title>step {k}: {v:.4}</title></rect>"##,
            height.max(0.5)
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{:.1}" y1="{zero:.1}" x2="{:.1}" y2="{zero:.1}" class="zero"/>"##,
        frame.left, frame.right
    );
    for (r, p) in Predictor::ALL.into_iter().enumerate() {
        let cy = 12.0 + marker_row * r as f64 + marker_row / 2.0;
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="row-label" text-anchor="end">{}</text>"##,
            frame.left - 6.0,
            cy + 4.0,
            predictor_short(p)
        );
        let cx = xs.at(a.pick(p) as f64);
        let _ = write!(
            out,
            r##"<path d="M{:.1},{:.1} L{:.1},{:.1} L{cx:.1},{:.1} Z" fill="{}"><title>{}: step {}</title></path>"##,
            cx - 6.0,
            cy - 5.0,
            cx + 6.0,
            cy - 5.0,
            cy + 5.0,
            predictor_color(p),
            p.label(),
            a.pick(p)
        );
    }
    out.push_str("</svg>");
    out
}

/// The shared legend of the step charts, as HTML.
pub fn step_legend() -> String {
    let mut out = String::from(r#"<div class="legend-row">"#);
    out.push_str(
        r#"<span><i class="sw" style="background:#F5C16C"></i>labelled error step</span>"#,
    );
    out.push_str(r#"<span><i class="sw" style="background:#3A7DBA"></i>score ≥ 0</span>"#);
    out.push_str(r#"<span><i class="sw" style="background:#D1495B"></i>score &lt; 0</span>"#);
    for p in Predictor::ALL {
        let _ = write!(
            out,
            r#"<span><i class="tri" style="border-top-color:{}"></i>{} = {} pick</span>"#,
            predictor_color(p),
            predictor_short(p),
            p.label()
        );
    }
    out.push_str("</div>");
    out
}

/// `0.1234` as a percentage-free short number for captions.
pub fn short(v: f64) -> String {
    tick_label((v * 1000.0).round() / 1000.0)
}
