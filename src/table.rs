//! The terminal view of `padv score`: one per-step table per trajectory,
//! advantages coloured (green ≥ 0, red < 0) when writing to a terminal.

use std::io::{self, Write};

use padv::pipeline::ScoredRecord;
use serde_json::Value;

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_string(), |v| format!("{v:+.3}"))
}

fn paint(s: &str, v: Option<f64>, colour: bool) -> String {
    match (colour, v) {
        (true, Some(x)) if x >= 0.0 => format!("\x1b[32m{s}\x1b[0m"),
        (true, Some(_)) => format!("\x1b[31m{s}\x1b[0m"),
        _ => s.to_string(),
    }
}

/// Short text of a message, one line, at most `n` characters.
fn snippet(record: &ScoredRecord, message: Option<usize>, n: usize) -> String {
    let text = message
        .and_then(|m| record.record.messages().and_then(|ms| ms.get(m)))
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > n {
        format!("{}…", one_line.chars().take(n - 1).collect::<String>())
    } else {
        one_line
    }
}

pub fn write_record(out: &mut impl Write, s: &ScoredRecord, colour: bool) -> io::Result<()> {
    let p = &s.record.passthrough;
    let label = match (p.get("success"), p.get("failure_step")) {
        (Some(Value::Bool(ok)), f) => {
            let f = f
                .and_then(Value::as_u64)
                .map(|f| format!(", decisive error at step {f}"))
                .unwrap_or_default();
            format!("  [{}{f}]", if *ok { "success" } else { "failure" })
        }
        _ => String::new(),
    };
    if !s.is_trajectory() {
        let n = s.tokens.len();
        let adv = s.tokens.advantage();
        let sum = |v: &[f32]| {
            v.iter()
                .filter(|x| !x.is_nan())
                .map(|&x| x as f64)
                .sum::<f64>()
        };
        writeln!(
            out,
            "\n{}: {n} tokens | Σ log π_θ {:.3} | Σ log π_ref {:.3} | Σ advantage {}",
            s.record.id,
            sum(&s.tokens.logp_policy),
            sum(&s.tokens.logp_reference),
            paint(&format!("{:+.3}", sum(&adv)), Some(sum(&adv)), colour)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "\n{}  score {}{label}",
        s.record.id,
        paint(&cell(s.score), s.score, colour)
    )?;
    writeln!(
        out,
        "  {:>4} {:>4} {:>6} {:>10} {:>10} {:>10} {:>8}  action",
        "step", "msg", "tokens", "advantage", "log π_θ", "log π_ref", "entropy"
    )?;
    for (k, st) in s.steps.iter().enumerate() {
        let adv = format!("{:>10}", cell(st.advantage));
        writeln!(
            out,
            "  {:>4} {:>4} {:>6} {} {:>10} {:>10} {:>8}  {}{}",
            k,
            st.message.map_or("—".into(), |m| m.to_string()),
            st.n_tokens,
            paint(&adv, st.advantage, colour),
            cell(st.logp_policy),
            cell(st.logp_reference),
            st.entropy.map_or("—".into(), |e| format!("{e:.3}")),
            snippet(s, st.message, 40),
            if st.truncated { "  (truncated)" } else { "" }
        )?;
    }
    Ok(())
}
