//! `Scorer.score_tokens`: the shape RL frameworks hold (verl, OpenRLHF:
//! token ids with a response mask, optionally padded) turned into token
//! records `{"token_ids", "action_spans"}` — one step per run of the mask —
//! scored by the library like any other record, and the per-token results
//! put back where each token came from.

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use padv::trajectory::record_from_json;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::json;

use crate::scorer::Scorer;
use crate::{bad_arg, to_py_err};

pub(crate) fn score_tokens<'py>(
    scorer: &Scorer,
    py: Python<'py>,
    token_ids: &Bound<'py, PyAny>,
    action_mask: &Bound<'py, PyAny>,
    attention_mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let (ids, two_d) = id_rows(py, token_ids)?;
    let mask = mask_rows(py, action_mask, "action_mask")?;
    let attn = match attention_mask {
        Some(a) => Some(mask_rows(py, a, "attention_mask")?),
        None => None,
    };
    let same_shape = |name: &str, other: &[Vec<bool>]| -> PyResult<()> {
        if other.len() != ids.len() {
            return Err(bad_arg(
                name,
                format!("{} rows for {} rows of token ids", other.len(), ids.len()),
            ));
        }
        for (i, (a, b)) in other.iter().zip(&ids).enumerate() {
            if a.len() != b.len() {
                return Err(bad_arg(
                    &format!("{name}[{i}]"),
                    format!("{} entries for {} token ids", a.len(), b.len()),
                ));
            }
        }
        Ok(())
    };
    same_shape("action_mask", &mask)?;
    if let Some(a) = &attn {
        same_shape("attention_mask", a)?;
    }
    // Per row: the positions kept (not padding), and the record scoring them.
    let mut kept: Vec<Vec<usize>> = Vec::with_capacity(ids.len());
    let mut records = Vec::with_capacity(ids.len());
    for (i, row) in ids.iter().enumerate() {
        let keep: Vec<usize> = (0..row.len())
            .filter(|&t| attn.as_ref().is_none_or(|a| a[i][t]))
            .collect();
        let mut seq = Vec::with_capacity(keep.len());
        for &t in &keep {
            let id = u32::try_from(row[t]).map_err(|_| {
                bad_arg(
                    &format!("token_ids[{i}][{t}]"),
                    format!("{} is not a token id", row[t]),
                )
            })?;
            seq.push(id);
        }
        let spans = runs(keep.iter().map(|&t| mask[i][t]));
        let location = format!("token_ids[{i}]");
        let record = json!({"id": i.to_string(), "token_ids": seq, "action_spans": spans});
        records.push(record_from_json(record, &location).map_err(to_py_err)?);
        kept.push(keep);
    }
    let scored = scorer.score_records(py, records)?;

    let width = ids.iter().map(Vec::len).max().unwrap_or(0);
    let mut fields: [Vec<Vec<f32>>; 4] = Default::default();
    let mut step_advantage = Vec::with_capacity(scored.len());
    let mut score = Vec::with_capacity(scored.len());
    for (i, s) in scored.iter().enumerate() {
        let t = &s.tokens;
        let sources = [
            &t.logp_policy,
            &t.logp_reference,
            &t.entropy_policy,
            &t.self_certainty,
        ];
        // `max_length` keeps the last tokens: the first `cut` kept positions
        // were not scored and stay NaN.
        let cut = kept[i].len() - s.encoded.token_ids.len();
        for (field, src) in fields.iter_mut().zip(sources) {
            let mut row = vec![f32::NAN; ids[i].len()];
            for (&pos, &v) in kept[i][cut..].iter().zip(src.iter()) {
                if mask[i][pos] {
                    row[pos] = v;
                }
            }
            field.push(row);
        }
        let adv: Vec<f64> = s
            .steps
            .iter()
            .map(|st| st.advantage.unwrap_or(f64::NAN))
            .collect();
        step_advantage.push(adv);
        score.push(s.score.unwrap_or(f64::NAN));
    }
    let out = PyDict::new(py);
    let names = ["logp_policy", "logp_reference", "entropy", "self_certainty"];
    for (name, field) in names.into_iter().zip(fields) {
        out.set_item(name, rows_to_py(py, field, two_d.then_some(width))?)?;
    }
    let steps = PyList::empty(py);
    for adv in step_advantage {
        steps.append(adv.into_pyarray(py))?;
    }
    out.set_item("step_advantage", steps)?;
    out.set_item("score", score.into_pyarray(py))?;
    Ok(out)
}

/// `[start, end)` of each run of `true`.
fn runs(mask: impl Iterator<Item = bool>) -> Vec<[usize; 2]> {
    let mut spans: Vec<[usize; 2]> = Vec::new();
    for (t, m) in mask.enumerate() {
        match spans.last_mut() {
            Some(last) if m && last[1] == t => last[1] = t + 1,
            _ if m => spans.push([t, t + 1]),
            _ => {}
        }
    }
    spans
}

/// Each row of a one-sequence-per-row input as a 1-D NumPy array (of its
/// own dtype), and whether the input was 2-D.
fn arrays<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<(Vec<Bound<'py, PyAny>>, bool)> {
    let np = py.import("numpy")?;
    let two_d = obj
        .getattr("ndim")
        .ok()
        .and_then(|n| n.extract::<usize>().ok())
        == Some(2);
    let mut out = Vec::new();
    for (i, row) in obj.try_iter()?.enumerate() {
        let arr = np
            .call_method1("asarray", (row?,))
            .map_err(|e| bad_arg(&format!("{name}[{i}]"), e.value(py)))?;
        if arr.getattr("ndim")?.extract::<usize>()? != 1 {
            return Err(bad_arg(&format!("{name}[{i}]"), "expected a 1-D sequence"));
        }
        out.push(arr);
    }
    Ok((out, two_d))
}

/// `arr` as a contiguous 1-D array of `dtype` (a lossless cast, checked
/// by the caller), copied out.
fn values<T: numpy::Element + Copy>(arr: &Bound<'_, PyAny>, dtype: &str) -> PyResult<Vec<T>> {
    let arr = arr
        .py()
        .import("numpy")?
        .call_method1("ascontiguousarray", (arr, dtype))?;
    let arr = arr.cast_into::<PyArray1<T>>()?;
    Ok(arr.readonly().as_slice()?.to_vec())
}

/// `AT: WHAT, not DTYPE`.
fn wrong_dtype(arr: &Bound<'_, PyAny>, at: &str, what: &str) -> PyResult<PyErr> {
    let dtype = arr.getattr("dtype")?.str()?;
    Ok(bad_arg(at, format!("{what}, not {dtype}")))
}

fn kind(arr: &Bound<'_, PyAny>) -> PyResult<String> {
    arr.getattr("dtype")?.getattr("kind")?.extract()
}

/// Token ids: integers of any width, never floats or booleans cast to one
/// (an empty row may have any dtype).
fn id_rows(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<Vec<i64>>, bool)> {
    let (rows, two_d) = arrays(py, obj, "token_ids")?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, arr) in rows.iter().enumerate() {
        let row = match kind(arr)?.as_str() {
            _ if arr.len()? == 0 => Vec::new(),
            "i" => values::<i64>(arr, "int64")?,
            "u" => {
                let wide = values::<u64>(arr, "uint64")?;
                let mut row = Vec::with_capacity(wide.len());
                for (t, v) in wide.into_iter().enumerate() {
                    row.push(i64::try_from(v).map_err(|_| {
                        bad_arg(
                            &format!("token_ids[{i}][{t}]"),
                            format!("{v} is not a token id"),
                        )
                    })?);
                }
                row
            }
            _ => {
                return Err(wrong_dtype(
                    arr,
                    &format!("token_ids[{i}]"),
                    "token ids are integers",
                )?);
            }
        };
        out.push(row);
    }
    Ok((out, two_d))
}

/// A mask: booleans, or numbers that are each 0 or 1.
fn mask_rows(py: Python<'_>, obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<Vec<bool>>> {
    let (rows, _) = arrays(py, obj, name)?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, arr) in rows.iter().enumerate() {
        let row = match kind(arr)?.as_str() {
            _ if arr.len()? == 0 => Vec::new(),
            "b" => values::<bool>(arr, "bool")?,
            "i" | "u" | "f" => {
                let v = values::<f64>(arr, "float64")?;
                if let Some(t) = v.iter().position(|&x| x != 0.0 && x != 1.0) {
                    let given = arr.get_item(t)?.str()?;
                    return Err(bad_arg(
                        &format!("{name}[{i}][{t}]"),
                        format!("{given} is not 0 or 1 (a mask holds booleans or 0/1)"),
                    ));
                }
                v.into_iter().map(|x| x == 1.0).collect()
            }
            _ => {
                let at = format!("{name}[{i}]");
                return Err(wrong_dtype(arr, &at, "a mask holds booleans or 0/1")?);
            }
        };
        out.push(row);
    }
    Ok(out)
}

/// Per-row arrays as a list of 1-D arrays, or, for a 2-D input, one 2-D
/// array of `width` columns (rows of a 2-D input all have that width).
fn rows_to_py<'py>(
    py: Python<'py>,
    rows: Vec<Vec<f32>>,
    two_d: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    match two_d {
        Some(width) => {
            let n = rows.len();
            let flat: Vec<f32> = rows.into_iter().flatten().collect();
            debug_assert_eq!(flat.len(), n * width);
            let arr = flat.into_pyarray(py).reshape([n, width])?;
            Ok(arr.cast_into::<PyArray2<f32>>()?.into_any())
        }
        None => {
            let list = PyList::empty(py);
            for row in rows {
                list.append(row.into_pyarray(py))?;
            }
            Ok(list.into_any())
        }
    }
}
