//! `padv.Scorer`: a loaded policy/reference pair ([`padv::Scorer`]) behind a
//! mutex, so one object can be shared by Python threads; every call locks it
//! with the GIL released.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use numpy::IntoPyArray;
use padv::model::merge::{DEFAULT_DENSITY, MergeOptions, check_alpha};
use padv::pipeline::{ScoredRecord, ScorerOptions};
use padv::trajectory::{Format, Record, read_records, record_from_json};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Value, json};

use crate::{PadvError, SLICE, as_path, bad_arg, json_of, to_py, to_py_err};

/// The keys of `padv score`'s token arrays, returned as NumPy arrays.
const ARRAY_KEYS: [&str; 7] = [
    "token_ids",
    "logp_policy",
    "logp_reference",
    "advantage",
    "entropy_policy",
    "self_certainty",
    "action_mask",
];

/// A policy/reference pair loaded once, scoring records as `padv score` does.
///
/// Args:
///     policy: the post-trained checkpoint: a Hugging Face directory, or a hub
///         id ``ORG/NAME[@REV]`` found in the local cache (never downloaded).
///     reference: the reference checkpoint (same tokenizer as the policy).
///     device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
///     render: ``"template"`` or ``"plain"``; default: the chat template when the
///         tokenizer has one.
///     token_agg: how an action's token log-probs make a step score:
///         ``mean | sum | last | min | max``.
///     step_agg: how step advantages make the trajectory score:
///         ``mean | sum | last | min | max | bottom10``.
///     beta: scale of the advantage, finite with ``|beta| <= 1e6``.
///     max_length: keep only the last N tokens of each record.
///     batch_tokens: tokens per forward batch.
///     tokens: score every position and add the token arrays (NumPy) and the
///         action mask to each trajectory's result.
///     prefix_cache: reuse the K/V of shared prefixes across records and calls.
///     kv_cache_mb: prefix-cache budget in MiB (default: a quarter of memory).
///     compute_dtype: ``auto | f32 | bf16 | f16`` (``--compute-dtype``): on the CPU
///         ``auto``/``f32`` is the exact path and ``bf16`` runs the weight GEMMs and
///         the LM head on bf16 inputs (f32 accumulation; about 1.6× faster, error
///         in docs/cpu.md); on CUDA the dtype of weights and the KV cache
///         (``auto``: the checkpoint's). ``gpu_dtype`` is an alias.
///     strict: a record whose chat-template render drops tool calls is an error.
///     format: input format when :meth:`score` reads a path (auto-detected by
///         default): ``jsonl | messages | tau2 | who-and-when | tokens | text``.
///     merge: score against a merged reference π_α instead of the reference:
///         ``linear | ties | dare_linear | dare_ties | emr`` (see docs/merge.md).
///     alpha: π_α's α in [0, 1] (0: the reference, 1: the policy); needed with
///         ``merge``; :meth:`set_alpha` and :meth:`score_sweep` change it.
///     density: fraction of the task vector kept by TIES/DARE, in (0, 1]
///         (default 0.2).
///     merge_seed: DARE's mask seed (default 0).
///
/// Raises:
///     PadvError: an option out of range, or checkpoints that cannot be
///         scored together (the message names the file, key or tensor).
///     FileNotFoundError: a checkpoint directory or file that does not exist.
#[pyclass(module = "padv", frozen)]
pub struct Scorer {
    inner: Mutex<padv::Scorer>,
    format: Option<Format>,
}

/// One record's result before it becomes Python objects: the JSON line, and
/// the token arrays when the line has them.
struct Line {
    json: Value,
    arrays: Option<Arrays>,
}

struct Arrays {
    token_ids: Vec<u32>,
    scores: padv::score::TokenScores,
    action_mask: Option<Vec<u8>>,
}

/// A record's scored form (or its error) with its JSON line.
type Scored = (padv::Result<ScoredRecord>, Value);

/// A record's result, or its error (with the id as far as it was read).
type Outcome = Result<Line, (Option<String>, padv::Error)>;

impl Scorer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, padv::Scorer> {
        // A panic inside the library is raised as PanicException; the pair
        // itself is still usable, so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Score `records` in slices of [`SLICE`] with the GIL released,
    /// checking for signals between slices (Ctrl-C raises here). One list of
    /// outcomes per α of `alphas` (a merge sweep), or one list without.
    fn score_all(
        &self,
        py: Python<'_>,
        records: Vec<padv::Result<Record>>,
        alphas: &[f64],
    ) -> PyResult<Vec<Vec<Outcome>>> {
        let mut out: Vec<Vec<Outcome>> = (0..alphas.len().max(1))
            .map(|_| Vec::with_capacity(records.len()))
            .collect();
        let mut records = records.into_iter();
        loop {
            let slice: Vec<padv::Result<Record>> = records.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                return Ok(out);
            }
            let scored = py.detach(|| self.score_slice(slice, alphas))?;
            for (all, part) in out.iter_mut().zip(scored) {
                all.extend(part);
            }
            py.check_signals()?;
        }
    }

    /// One slice, as `padv score` scores it: the records that were read
    /// are scored together (once per α of a sweep); the others keep their
    /// read error in place.
    fn score_slice(
        &self,
        slice: Vec<padv::Result<Record>>,
        alphas: &[f64],
    ) -> PyResult<Vec<Vec<Outcome>>> {
        let mut ok = Vec::with_capacity(slice.len());
        let unread: Vec<Option<padv::Error>> = slice
            .into_iter()
            .map(|r| r.map(|r| ok.push(r)).err())
            .collect();
        let per_alpha = scorer_score(self.lock(), &ok, alphas).map_err(to_py_err)?;
        Ok(per_alpha
            .into_iter()
            .map(|scored| {
                let mut scored = scored.into_iter().zip(&ok);
                unread
                    .iter()
                    .map(|slot| match slot {
                        None => {
                            let ((s, json), r) = scored.next().expect("one result per record");
                            s.map(|s| line(s, json))
                                .map_err(|e| (Some(r.id.clone()), e))
                        }
                        // The same read error in every α's list; only its
                        // message and id reach Python (raising stops earlier).
                        Some(e) => Err((
                            e.record_id().map(str::to_string),
                            padv::Error::Backend(e.to_string()),
                        )),
                    })
                    .collect()
            })
            .collect())
    }

    /// Read `records` and score them (per α of `alphas`); with `raise`,
    /// nothing is scored when a record cannot even be read.
    fn read_and_score(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyAny>,
        raise: bool,
        alphas: &[f64],
    ) -> PyResult<Vec<Vec<Outcome>>> {
        let records = read_input(py, records, self.format)?;
        if raise && let Some(Err(e)) = records.iter().find(|r| r.is_err()) {
            return Err(PadvError::new_err(e.to_string()));
        }
        self.score_all(py, records, alphas)
    }

    /// Results as Python objects; the first error raised with `on_error="raise"`.
    fn to_python(
        &self,
        py: Python<'_>,
        outcomes: Vec<Outcome>,
        raise: bool,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let obj = match o {
                Ok(l) => line_to_py(py, l)?,
                Err((_, e)) if raise => return Err(to_py_err(e)),
                Err((id, e)) => to_py(py, &json!({"id": id, "error": e.to_string()}))?,
            };
            out.push(obj.unbind());
        }
        Ok(out)
    }
}

/// Score with the lock held (once per α of `alphas` when there are two or
/// more: the policy side is computed once) and turn each result into its
/// JSON line (the scorer is needed for that; the lock is released at the end).
fn scorer_score(
    mut scorer: MutexGuard<'_, padv::Scorer>,
    records: &[Record],
    alphas: &[f64],
) -> padv::Result<Vec<Vec<Scored>>> {
    let per_alpha = match alphas {
        [_, _, ..] => scorer.score_sweep(records, alphas)?,
        [alpha] => {
            scorer.set_alpha(*alpha)?;
            vec![scorer.score(records)]
        }
        [] => vec![scorer.score(records)],
    };
    Ok(per_alpha
        .into_iter()
        .map(|results| {
            results
                .into_iter()
                .map(|r| {
                    let json = r.as_ref().map(|s| scorer.to_json(s)).unwrap_or(Value::Null);
                    (r, json)
                })
                .collect()
        })
        .collect())
}

/// The line without its token arrays, which travel as vectors.
fn line(s: ScoredRecord, mut json: Value) -> Line {
    let obj = json
        .as_object_mut()
        .expect("a scored record is a JSON object");
    let arrays = obj.contains_key("token_ids").then(|| {
        let action_mask = obj
            .contains_key("action_mask")
            .then(|| s.encoded.action_mask());
        for k in ARRAY_KEYS {
            obj.remove(k);
        }
        Arrays {
            token_ids: s.encoded.token_ids,
            scores: s.tokens,
            action_mask,
        }
    });
    Line { json, arrays }
}

fn line_to_py(py: Python<'_>, l: Line) -> PyResult<Bound<'_, PyAny>> {
    let obj = to_py(py, &l.json)?;
    if let Some(a) = l.arrays {
        let d = obj.cast::<PyDict>()?;
        let ids: Vec<i64> = a.token_ids.iter().map(|&t| t as i64).collect();
        let advantage = a.scores.advantage();
        d.set_item("token_ids", ids.into_pyarray(py))?;
        d.set_item("logp_policy", a.scores.logp_policy.into_pyarray(py))?;
        d.set_item("logp_reference", a.scores.logp_reference.into_pyarray(py))?;
        d.set_item("advantage", advantage.into_pyarray(py))?;
        d.set_item("entropy_policy", a.scores.entropy_policy.into_pyarray(py))?;
        d.set_item("self_certainty", a.scores.self_certainty.into_pyarray(py))?;
        if let Some(m) = a.action_mask {
            d.set_item("action_mask", m.into_pyarray(py))?;
        }
    }
    Ok(obj)
}

/// Records given as a path (read as `padv score --input` reads it) or as an
/// iterable of dicts (any record kind; `records[i]` names one in errors).
pub(crate) fn read_input(
    py: Python<'_>,
    records: &Bound<'_, PyAny>,
    format: Option<Format>,
) -> PyResult<Vec<padv::Result<Record>>> {
    if let Some(path) = as_path(records) {
        return py.detach(|| read_records(&path, format)).map_err(to_py_err);
    }
    if records.is_instance_of::<PyDict>() {
        return Err(PadvError::new_err(
            "records: expected a list of records (dicts) or a path, got one dict",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in records.try_iter()?.enumerate() {
        let location = format!("records[{i}]");
        let item = item?;
        out.push(match non_finite_id(&item) {
            Some(id) => Err(padv::Error::input(
                &location,
                format!("id: {id} is not an id; give the id as a string"),
            )),
            None => json_of(&item)
                .map_err(|e| padv::Error::input(&location, e))
                .and_then(|v| record_from_json(v, &location)),
        });
    }
    Ok(out)
}

/// A record dict's `id` that is a float NaN or infinity (JSON has no such
/// number: it would read as a record without an id).
fn non_finite_id(item: &Bound<'_, PyAny>) -> Option<String> {
    let id = item.cast::<PyDict>().ok()?.get_item("id").ok()??;
    let f: f64 = id.extract().ok()?;
    (!f.is_finite() && !id.is_instance_of::<pyo3::types::PyBool>()).then(|| f.to_string())
}

/// `on_error`: true for "raise", false for "skip".
fn on_error_raises(on_error: &str) -> PyResult<bool> {
    match on_error {
        "raise" => Ok(true),
        "skip" => Ok(false),
        other => Err(bad_arg(
            "on_error",
            format!("`{other}`: expected raise or skip"),
        )),
    }
}

/// The merged reference asked for (`merge` and `alpha` go together; the
/// density and seed only with a merge).
fn merge_options(
    merge: Option<&str>,
    alpha: Option<f64>,
    density: Option<f64>,
    seed: u64,
) -> PyResult<Option<MergeOptions>> {
    let Some(method) = merge else {
        if alpha.is_some() || density.is_some() || seed != 0 {
            return Err(bad_arg(
                "merge",
                "alpha, density and merge_seed need merge=linear|ties|dare_linear|dare_ties|emr",
            ));
        }
        return Ok(None);
    };
    let Some(alpha) = alpha else {
        return Err(bad_arg(
            "alpha",
            "merge= needs alpha= (0: the reference, 1: the policy)",
        ));
    };
    let m = MergeOptions {
        density: density.unwrap_or(DEFAULT_DENSITY),
        seed,
        ..MergeOptions::new(parse("merge", method)?, alpha)
    };
    m.validate().map_err(to_py_err)?;
    Ok(Some(m))
}

fn parse<T: std::str::FromStr>(name: &str, s: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| bad_arg(name, e))
}

#[pymethods]
impl Scorer {
    #[new]
    #[pyo3(signature = (policy, reference, *, device="auto", render=None, token_agg="mean",
        step_agg="mean", beta=1.0, max_length=None, batch_tokens=8192, tokens=false,
        prefix_cache=true, kv_cache_mb=None, compute_dtype=None, gpu_dtype=None, strict=false, format=None,
        merge=None, alpha=None, density=None, merge_seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        policy: PathBuf,
        reference: PathBuf,
        device: &str,
        render: Option<&str>,
        token_agg: &str,
        step_agg: &str,
        beta: f64,
        max_length: Option<usize>,
        batch_tokens: usize,
        tokens: bool,
        prefix_cache: bool,
        kv_cache_mb: Option<usize>,
        compute_dtype: Option<&str>,
        gpu_dtype: Option<&str>,
        strict: bool,
        format: Option<&str>,
        merge: Option<&str>,
        alpha: Option<f64>,
        density: Option<f64>,
        merge_seed: u64,
    ) -> PyResult<Self> {
        let merge = merge_options(merge, alpha, density, merge_seed)?;
        let opts = ScorerOptions {
            device: parse("device", device)?,
            render: render.map(|r| parse("render", r)).transpose()?,
            token_agg: parse("token_agg", token_agg)?,
            step_agg: parse("step_agg", step_agg)?,
            beta,
            max_length,
            batch_tokens,
            with_tokens: tokens,
            prefix_cache,
            kv_cache_mb,
            compute_dtype: match (compute_dtype, gpu_dtype) {
                (Some(_), Some(_)) => {
                    return Err(bad_arg(
                        "gpu_dtype",
                        "an alias of compute_dtype: give one of the two",
                    ));
                }
                (Some(d), None) => parse("compute_dtype", d)?,
                (None, Some(d)) => parse("gpu_dtype", d)?,
                (None, None) => Default::default(),
            },
            strict,
            merge,
        };
        let format = format.map(|f| parse("format", f)).transpose()?;
        let scorer = py
            .detach(|| padv::Scorer::load(&policy, &reference, opts))
            .map_err(to_py_err)?;
        Ok(Scorer {
            inner: Mutex::new(scorer),
            format,
        })
    }

    /// Score trajectories (or text / token-id records) as ``padv score`` does.
    ///
    /// Args:
    ///     records: a list of dicts, each any record kind ``padv score`` reads
    ///         (``{"id", "messages", ...}``, ``{"id", "token_ids", "action_spans"?}``,
    ///         ``{"id", "text"}``, a Who&When record), or the path of an input
    ///         file (JSONL, τ²-bench JSON, Who&When file or directory).
    ///     on_error: ``"raise"`` (default) raises the first bad record's error;
    ///         ``"skip"`` puts ``{"id", "error"}`` in its place, as
    ///         ``padv score --on-error skip`` writes it.
    ///
    /// Returns:
    ///     One dict per record, in order, equal to the JSON line ``padv score``
    ///     writes; token arrays (``token_ids``, ``logp_policy``, ``logp_reference``,
    ///     ``advantage``, ``entropy_policy``, ``self_certainty``, ``action_mask``)
    ///     are NumPy arrays, NaN where the JSON line has ``null``.
    ///
    /// The GIL is released while scoring; KeyboardInterrupt stops the call
    /// after the slice of 64 records in flight.
    #[pyo3(signature = (records, *, on_error="raise"))]
    fn score(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyAny>,
        on_error: &str,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let raise = on_error_raises(on_error)?;
        let outcomes = self.read_and_score(py, records, raise, &[])?;
        let one = outcomes.into_iter().next().unwrap_or_default();
        self.to_python(py, one, raise)
    }

    /// Score ``records`` against the merged reference π_α at every α of
    /// ``alphas`` (needs ``merge=``): the policy side is computed once.
    ///
    /// Returns:
    ///     One list per α, in the order of ``alphas``, each as :meth:`score`
    ///     returns it; every dict carries its ``alpha``. The scorer is left at
    ///     the last α.
    #[pyo3(signature = (records, alphas, *, on_error="raise"))]
    fn score_sweep(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyAny>,
        alphas: Vec<f64>,
        on_error: &str,
    ) -> PyResult<Vec<Vec<Py<PyAny>>>> {
        let raise = on_error_raises(on_error)?;
        if alphas.is_empty() {
            return Err(bad_arg("alphas", "expected at least one α"));
        }
        for &a in &alphas {
            check_alpha(a).map_err(|e| bad_arg("alphas", e))?;
        }
        if py.detach(|| self.lock().alpha()).is_none() {
            return Err(bad_arg(
                "alphas",
                "the scorer has no merged reference (load it with merge=...)",
            ));
        }
        self.read_and_score(py, records, raise, &alphas)?
            .into_iter()
            .map(|outcomes| self.to_python(py, outcomes, raise))
            .collect()
    }

    /// The merged reference's α (``None`` without ``merge=``).
    #[getter]
    fn alpha(&self, py: Python<'_>) -> Option<f64> {
        py.detach(|| self.lock().alpha())
    }

    /// Score against π_α from now on (needs ``merge=``); the prefix cache is
    /// cleared when α changes.
    fn set_alpha(&self, py: Python<'_>, alpha: f64) -> PyResult<()> {
        py.detach(|| self.lock().set_alpha(alpha))
            .map_err(to_py_err)
    }

    /// Per-token log-probs of sequences an RL framework already tokenized.
    ///
    /// Args:
    ///     token_ids: one sequence of token ids per row: a list of lists, a list
    ///         of 1-D arrays, or a 2-D array (padded rows need ``attention_mask``).
    ///     action_mask: the response mask, the shape of ``token_ids``: 1 where a
    ///         token is the model's own (an action); each contiguous run of 1s is
    ///         one step.
    ///     attention_mask: optional, the shape of ``token_ids``: 0 marks padding,
    ///         which is removed before scoring (left or right padding alike).
    ///
    /// Returns:
    ///     A dict: ``logp_policy``, ``logp_reference``, ``entropy`` (policy,
    ///     nats) and ``self_certainty`` per token — float32 arrays shaped like
    ///     ``token_ids`` (2-D for a 2-D input, else a list of 1-D arrays), NaN
    ///     where ``action_mask`` is 0 (those rows of the LM head are never
    ///     computed) — plus ``step_advantage`` (one float64 array of
    ///     β·(token_agg(log π_θ) − token_agg(log π_ref)) per row, one entry per
    ///     run of 1s) and ``score`` (float64, the ``step_agg`` of each row's
    ///     step advantages; NaN for a row without steps).
    #[pyo3(signature = (token_ids, action_mask, *, attention_mask=None))]
    fn score_tokens<'py>(
        &self,
        py: Python<'py>,
        token_ids: &Bound<'py, PyAny>,
        action_mask: &Bound<'py, PyAny>,
        attention_mask: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::tokens::score_tokens(self, py, token_ids, action_mask, attention_mask)
    }

    /// A streaming session whose context is ``messages`` (system prompt,
    /// task, …); ``tools`` is the tool list handed to the chat template.
    #[pyo3(signature = (messages, *, tools=None))]
    fn session(
        slf: &Bound<'_, Self>,
        messages: &Bound<'_, PyAny>,
        tools: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<crate::session::Session> {
        crate::session::Session::open(slf, messages, tools)
    }

    /// The prefix cache's counters (``hit_tokens``, ``computed_tokens``,
    /// ``hit_rate``, …) since the pair was loaded (zeros with ``prefix_cache=False``).
    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(c) = py.detach(|| self.lock().cache_stats()) else {
            return Ok(None);
        };
        let mut v = serde_json::to_value(c).map_err(|e| PadvError::new_err(e.to_string()))?;
        v["hit_rate"] = json!(c.hit_rate());
        to_py(py, &v).map(Some)
    }

    /// The backend in words (device, threads, dtype).
    #[getter]
    fn backend(&self, py: Python<'_>) -> String {
        py.detach(|| self.lock().backend_description())
    }

    /// The settings every result carries: ``token_agg``, ``step_agg``,
    /// ``beta``, ``render`` (and ``merge`` with a merged reference).
    #[getter]
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = py.detach(|| {
            let s = self.lock();
            let o = s.options();
            let mut v = json!({
                "token_agg": o.token_agg.name(),
                "step_agg": o.step_agg.name(),
                "beta": o.beta,
                "render": s.render_mode().name(),
            });
            if let Some(m) = &o.merge {
                v["merge"] = m.to_json();
            }
            v
        });
        to_py(py, &s)
    }

    /// Why chat records will be rendered plain (the tokenizer has no chat
    /// template and no ``render`` was given); ``None`` otherwise.
    #[getter]
    fn render_warning(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| self.lock().render_fallback())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        py.detach(|| {
            let s = self.lock();
            format!(
                "padv.Scorer(policy={:?}, reference={:?}, {})",
                s.policy.dir.display().to_string(),
                s.reference.dir.display().to_string(),
                s.backend_description()
            )
        })
    }
}

impl Scorer {
    /// Score token-id records (built by the caller) slice by slice; their
    /// scored forms, or the first error.
    pub(crate) fn score_records(
        &self,
        py: Python<'_>,
        records: Vec<Record>,
    ) -> PyResult<Vec<ScoredRecord>> {
        let mut out = Vec::with_capacity(records.len());
        let mut records = records.into_iter();
        loop {
            let slice: Vec<Record> = records.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                return Ok(out);
            }
            let scored = py.detach(|| self.lock().score(&slice));
            for s in scored {
                out.push(s.map_err(to_py_err)?);
            }
            py.check_signals()?;
        }
    }
}
