//! Small SVG building blocks for the report: linear scales, readable tick
//! values, axes with labels, and text escaping. Charts are plain strings of
//! SVG so the report needs no script and no network.

use std::fmt::Write;

/// Escape text for HTML/SVG content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Maps data values in `[d0, d1]` to pixels in `[p0, p1]`.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub d0: f64,
    pub d1: f64,
    pub p0: f64,
    pub p1: f64,
}

impl Scale {
    pub fn new(domain: (f64, f64), pixels: (f64, f64)) -> Self {
        let (mut d0, mut d1) = domain;
        if !(d1 - d0).is_normal() {
            d0 -= 0.5;
            d1 += 0.5;
        }
        Scale {
            d0,
            d1,
            p0: pixels.0,
            p1: pixels.1,
        }
    }
    pub fn at(&self, v: f64) -> f64 {
        self.p0 + (v - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)
    }
}

/// Round tick values (1, 2, 2.5 or 5 × 10^k apart) covering `[lo, hi]`;
/// returns the ticks, whose first and last bound the widened range.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi - lo > 0.0 && (hi - lo).is_finite() {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label without float noise (`0.30000000000000004` → `0.3`).
pub fn tick_label(v: f64) -> String {
    let s = format!("{:.4}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// The plotting rectangle of a chart, in pixels.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl Frame {
    pub fn width(&self) -> f64 {
        self.right - self.left
    }
    pub fn height(&self) -> f64 {
        self.bottom - self.top
    }
}

/// Grid lines, tick labels and axis titles for `x` and `y` over `frame`.
/// Tick labels of `x_labels` replace the numeric ones when given.
pub fn axes(out: &mut String, frame: Frame, x: (&Scale, &[f64], &str), y: (&Scale, &[f64], &str)) {
    let (xs, xt, xtitle) = x;
    let (ys, yt, ytitle) = y;
    for &t in yt {
        let py = ys.at(t);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            frame.left,
            frame.right,
            frame.left - 6.0,
            py + 4.0,
            tick_label(t)
        );
    }
    for &t in xt {
        let px = xs.at(t);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" class="grid"/><text x="{px:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"##,
            frame.top,
            frame.bottom,
            frame.bottom + 16.0,
            tick_label(t)
        );
    }
    let _ = write!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" class="frame"/>"##,
        frame.left,
        frame.top,
        frame.width(),
        frame.height()
    );
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"##,
        frame.left + frame.width() / 2.0,
        frame.bottom + 36.0,
        esc(xtitle)
    );
    let cy = frame.top + frame.height() / 2.0;
    let cx = frame.left - 46.0;
    let _ = write!(
        out,
        r##"<text x="{cx:.1}" y="{cy:.1}" class="axis" text-anchor="middle" transform="rotate(-90 {cx:.1} {cy:.1})">{}</text>"##,
        esc(ytitle)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let labels: Vec<String> = nice_ticks(0.0, 1.0, 5)
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = nice_ticks(-2.3, 0.7, 5);
        assert!(t[0] <= -2.3 && *t.last().unwrap() >= 0.7, "{t:?}");
        assert_eq!(tick_label(t[1] - t[0]), "1");
        assert_eq!(nice_ticks(3.0, 3.0, 4).len(), 5);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn scales_map_linearly_and_survive_an_empty_domain() {
        let s = Scale::new((0.0, 10.0), (100.0, 0.0));
        assert_eq!(s.at(2.5), 75.0);
        let flat = Scale::new((1.0, 1.0), (0.0, 10.0));
        assert_eq!(flat.at(1.0), 5.0);
    }
}
