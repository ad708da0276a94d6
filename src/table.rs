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
            match (st.truncated, st.empty) {
                (true, _) => "  (truncated)",
                (_, true) => "  (empty)",
                _ => "",
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use padv::StepScore;
    use padv::pipeline::ScoredRecord;
    use padv::score::TokenScores;
    use padv::trajectory::{Encoded, record_from_json};
    use serde_json::json;

    #[test]
    fn truncated_and_empty_steps_are_marked_each_by_its_own_word() {
        let record = record_from_json(
            json!({"id": "r", "messages": [
                {"role": "user", "content": "start"},
                {"role": "assistant", "content": "go north"},
                {"role": "assistant", "content": "go east"},
                {"role": "assistant", "content": ""}]}),
            "mem:1",
        )
        .unwrap();
        let step = |message, truncated, empty| StepScore {
            message: Some(message),
            advantage: Some(0.0),
            truncated,
            empty,
            ..StepScore::default()
        };
        let scored = ScoredRecord {
            record,
            encoded: Encoded::default(),
            tokens: TokenScores::default(),
            steps: vec![
                step(1, false, false),
                step(2, true, false),
                step(3, false, true),
            ],
            score: Some(0.0),
            baselines: Vec::new(),
            merge: None,
        };
        let mut out = Vec::new();
        super::write_record(&mut out, &scored, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let marks: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .map(
                |l| match (l.contains("(truncated)"), l.contains("(empty)")) {
                    (true, false) => "truncated",
                    (false, true) => "empty",
                    (false, false) => "",
                    (true, true) => "both",
                },
            )
            .collect();
        assert_eq!(marks, ["", "truncated", "empty"], "{text}");
    }
}
