//! The `score` command: records are scored in slices and each slice is
//! written as soon as it completes, in input order, so a run that stops on
//! an error (`--on-error fail`) or is killed keeps every record before that
//! point. One output line per input record (blank lines are not records);
//! a record that cannot be read or scored is `{"id", "error"}` in its place.
//! The run ends with a [`Summary`] (on stderr when `--output` is used).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use padv::pipeline::{ScoredRecord, Scorer};
use padv::trajectory::{Record, Warning, read_records};

use crate::commands::{OnError, ScoreArgs, input_or_demo, progress};
use crate::output::{Output, refuse_output};
use crate::summary::Summary;

/// Records scored (and written) together; the progress bar moves per slice.
const SLICE: usize = 64;

/// One output line: a scored record, or an error with the record's id.
type Line = std::result::Result<ScoredRecord, (Option<String>, padv::Error)>;

/// Where the lines go.
enum Sink {
    /// JSON lines to a file (`path`) or to stdout (`None`).
    Json(Output),
    /// One table per record on stdout.
    Table {
        out: std::io::StdoutLock<'static>,
        colour: bool,
    },
}

impl Sink {
    fn open(output: Option<&Path>, input: &Path) -> Result<Sink> {
        Ok(match output {
            Some(p) => Sink::Json(Output::create(Some(p), &[input])?),
            None => Sink::Table {
                out: std::io::stdout().lock(),
                colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            },
        })
    }

    fn write(&mut self, scorer: &Scorer, line: &Line) -> Result<()> {
        match self {
            Sink::Json(w) => {
                let v = match line {
                    Ok(s) => scorer.to_json(s),
                    Err((id, e)) => json!({"id": id, "error": e.to_string()}),
                };
                writeln!(w, "{v}")?;
            }
            Sink::Table { out, colour } => match line {
                Ok(s) => crate::table::write_record(out, s, *colour)?,
                Err((id, e)) => writeln!(out, "\n{}: error: {e}", id.as_deref().unwrap_or("?"))?,
            },
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Sink::Json(w) => w.flush()?,
            Sink::Table { out, .. } => out.flush()?,
        }
        Ok(())
    }
}

/// Where each record id was first seen. A repeated id is a warning on the
/// record that repeats it: output joined to input by id would mix the two.
#[derive(Default)]
struct Ids(HashMap<String, String>);

impl Ids {
    fn repeat(&mut self, r: &Record) -> Option<String> {
        match self.0.entry(r.id.clone()) {
            Entry::Occupied(first) => Some(format!(
                "the id `{}` is also the id of {}: join the output to the input by line, not by id",
                r.id,
                first.get()
            )),
            Entry::Vacant(slot) => {
                slot.insert(r.location.clone());
                None
            }
        }
    }
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let input = input_or_demo(&a.input)?;
    refuse_output(a.output.as_deref(), &input)?;
    let (policy, reference) = a.model.pair()?;
    let mut scorer = a.model.load(a.tokens)?;
    let records = read_records(&input, a.model.format)?;
    let mut sink = Sink::open(a.output.as_deref(), &input)?;
    if let Sink::Table { out, .. } = &mut sink {
        writeln!(
            out,
            "policy {} | reference {} | {} | render {} | token-agg {} | step-agg {} | β {}",
            policy.display(),
            reference.display(),
            scorer.backend_description(),
            scorer.render_mode().name(),
            scorer.options().token_agg,
            scorer.options().step_agg,
            scorer.options().beta
        )?;
    }
    let bar = progress(records.len());
    let start = Instant::now();
    let mut summary = Summary::default();
    let mut seen = Ids::default();
    let mut records = records.into_iter();
    let outcome = loop {
        let slice: Vec<padv::Result<Record>> = records.by_ref().take(SLICE).collect();
        if slice.is_empty() {
            break Ok(());
        }
        let n = slice.len() as u64;
        let mut ok = Vec::with_capacity(slice.len());
        let unread: Vec<Option<padv::Error>> = slice
            .into_iter()
            .map(|r| r.map(|r| ok.push(r)).err())
            .collect();
        // One result list per α (one list without a sweep), written
        // record by record: a record's lines for every α are adjacent.
        let per_alpha = match a.model.alphas() {
            alphas if alphas.len() > 1 => scorer.score_sweep(&ok, alphas)?,
            _ => vec![scorer.score(&ok)],
        };
        let mut per_alpha: Vec<_> = per_alpha.into_iter().map(Vec::into_iter).collect();
        let mut failed = None;
        let repeats: Vec<Option<String>> = ok.iter().map(|r| seen.repeat(r)).collect();
        let mut ids = ok.iter().map(|r| r.id.clone()).zip(repeats);
        let lines = unread.into_iter().flat_map(|slot| -> Vec<Line> {
            match slot {
                None => {
                    let (id, repeat) = ids.next().expect("one result per record");
                    per_alpha
                        .iter_mut()
                        .map(|results| {
                            let mut line = results
                                .next()
                                .expect("one result per record")
                                .map_err(|e| (Some(id.clone()), e));
                            if let (Ok(s), Some(w)) = (&mut line, &repeat) {
                                s.encoded.warnings.push(Warning::record(w.clone()));
                            }
                            line
                        })
                        .collect()
                }
                Some(e) => vec![Err((e.record_id().map(str::to_string), e))],
            }
        });
        for line in lines {
            match line {
                Err((_, e)) if a.on_error == OnError::Fail => {
                    summary.errors += 1;
                    failed = Some(e);
                    break;
                }
                line => {
                    match &line {
                        Ok(s) => {
                            summary.tokens += s.encoded.token_ids.len();
                            summary.steps += s.steps.len();
                            summary.warnings += s.encoded.warnings.len();
                            for w in &s.encoded.warnings {
                                bar.suspend(|| {
                                    eprintln!(
                                        "warning: {} (id {}): {w}",
                                        s.record.location, s.record.id
                                    )
                                });
                            }
                        }
                        Err(_) => summary.errors += 1,
                    }
                    sink.write(&scorer, &line)?;
                    summary.records += 1;
                }
            }
        }
        sink.flush()?;
        bar.inc(n);
        bar.set_message(format!(
            "{:.0} tokens/s",
            summary.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
        ));
        if let Some(e) = failed {
            break Err(e);
        }
    };
    bar.finish_and_clear();
    summary.elapsed = start.elapsed();
    summary.cache = scorer.cache_stats();
    summary.stopped = outcome.is_err();
    match &mut sink {
        Sink::Json(w) => {
            eprintln!("{summary}");
            if let Some(path) = w.path() {
                eprintln!("wrote {} records to {}", summary.records, path.display());
            }
        }
        Sink::Table { out, .. } => writeln!(out, "\n{summary}")?,
    }
    Ok(outcome?)
}
