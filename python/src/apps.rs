//! `padv.eval`, `padv.select`, `padv.attribute`: the applications
//! ([`padv::apps`]) on scored records — the dicts `Scorer.score` returns,
//! or the path of a `padv score` JSONL — returning what the CLI commands
//! write, as dicts.

use padv::apps::{self, Aggregation, Method, ReadOptions, ScoredSet, ScoredTrajectory};
use padv::score::aggregate::StepAgg;
use pyo3::prelude::*;
use serde_json::Value;

use crate::{as_path, bad_arg, to_json, to_py, to_py_err};

/// Scored records as the apps read them: a path is read as `padv eval
/// --input scored.jsonl` reads it; a list names a bad item `records[i]`.
/// Error records (`{"id", "error"}`) are skipped, as in the CLI.
fn scored_set(
    py: Python<'_>,
    scored: &Bound<'_, PyAny>,
    group_by: &str,
    skip_invalid: bool,
) -> PyResult<ScoredSet> {
    let opts = ReadOptions {
        group_by: group_by.to_string(),
        skip_invalid,
    };
    if let Some(path) = as_path(scored) {
        return py
            .detach(|| apps::read_scored(&path, &opts))
            .map_err(to_py_err);
    }
    let mut values = Vec::new();
    for (i, item) in scored.try_iter()?.enumerate() {
        let location = format!("records[{i}]");
        values.push((to_json(&without_arrays(&item?)?, &location)?, location));
    }
    py.detach(|| {
        let mut set = ScoredSet::default();
        for (v, location) in values {
            match ScoredTrajectory::from_json(v, &location, &opts) {
                Ok(Ok(t)) => set.trajectories.push(t),
                Ok(Err(skipped)) => set.skipped.push(skipped),
                Err(e) if skip_invalid => set.skipped.push(apps::SkippedRecord {
                    location,
                    id: None,
                    error: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(set)
    })
    .map_err(to_py_err)
}

/// A scored dict with its NumPy token arrays turned into lists (the apps
/// read the step scores; the arrays only need to be valid JSON).
fn without_arrays<'py>(item: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let Ok(d) = item.cast::<pyo3::types::PyDict>() else {
        return Ok(item.clone());
    };
    let copy = d.copy()?;
    for (k, v) in d.iter() {
        if v.hasattr("tolist")? {
            copy.set_item(k, v.call_method0("tolist")?)?;
        }
    }
    Ok(copy.into_any())
}

fn method(name: &str) -> PyResult<Method> {
    name.parse().map_err(|e| bad_arg("method", e))
}

/// Metrics of every method on scored trajectories, as ``padv eval --json``
/// writes them: AUROC and Spearman ρ against the outcome labels, best-of-N
/// success per group, and error attribution where labels exist.
///
/// Args:
///     scored: the dicts :meth:`Scorer.score` returned, or the path of a
///         ``padv score`` JSONL.
///     group_by: the field naming each trajectory's best-of-N group (dots
///         reach into objects: ``info.task``).
///     sweep: the table for every token × step aggregation (needs token
///         arrays: records scored with ``tokens=True``).
///     skip_invalid: count records that are not valid scored records as
///         skipped instead of raising.
#[pyfunction]
#[pyo3(signature = (scored, *, group_by="task_id", sweep=false, skip_invalid=false))]
pub fn eval<'py>(
    py: Python<'py>,
    scored: &Bound<'py, PyAny>,
    group_by: &str,
    sweep: bool,
    skip_invalid: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let set = scored_set(py, scored, group_by, skip_invalid)?;
    let report = py
        .detach(|| -> padv::Result<Value> {
            if sweep {
                Ok(apps::sweep_json(&apps::sweep(&set)?))
            } else {
                Ok(apps::evaluate(&set, None)?.to_json())
            }
        })
        .map_err(to_py_err)?;
    to_py(py, &report)
}

/// Best-of-N: the highest-scoring trajectory of each group by ``method``,
/// as ``padv select`` writes them (the chosen input records, in group order).
#[pyfunction]
#[pyo3(signature = (scored, *, method="progress_advantage", step_agg="mean", group_by="task_id"))]
pub fn select<'py>(
    py: Python<'py>,
    scored: &Bound<'py, PyAny>,
    method: &str,
    step_agg: &str,
    group_by: &str,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let m = self::method(method)?;
    let step: StepAgg = step_agg.parse().map_err(|e| bad_arg("step_agg", e))?;
    let set = scored_set(py, scored, group_by, false)?;
    let chosen = py
        .detach(|| {
            apps::select(&set.trajectories, m, Aggregation::stored(step))
                .map(|sel| sel.chosen_records(&set.trajectories))
        })
        .map_err(to_py_err)?;
    chosen.iter().map(|r| to_py(py, r)).collect()
}

/// The decisive-error step of each trajectory by the three predictors, as
/// ``padv attribute`` writes it: ``{"id", "error"}`` for a trajectory with
/// no prediction (a step with tokens but no value, or no scored steps), and
/// for each error record, after the trajectories.
#[pyfunction]
#[pyo3(signature = (scored, *, method="progress_advantage"))]
pub fn attribute<'py>(
    py: Python<'py>,
    scored: &Bound<'py, PyAny>,
    method: &str,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let m = self::method(method)?;
    let set = scored_set(py, scored, "task_id", false)?;
    let out = py
        .detach(|| -> padv::Result<Vec<Value>> { apps::attribution_lines(&set, m) })
        .map_err(to_py_err)?;
    out.iter().map(|r| to_py(py, r)).collect()
}
