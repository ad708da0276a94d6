//! `padv._padv`: the Python binding of the padv library, re-exported by the
//! `padv` package (`python/padv/__init__.py`). Glue only: Python objects
//! become the library's inputs (records as `serde_json` values, token ids as
//! vectors), the library scores, and its outputs come back as the same
//! dicts `padv score` writes as JSON lines (token arrays as NumPy arrays).
//!
//! Every call that scores releases the GIL ([`Python::detach`]) and works
//! through its records in slices of [`SLICE`], checking for signals between
//! slices, so Ctrl-C raises `KeyboardInterrupt` after the slice in flight.

mod apps;
mod scorer;
mod session;
mod tokens;

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

/// Records scored per call into the library between two signal checks: the
/// CLI's slice, so a list scores in the same batches as `padv score` does.
pub(crate) const SLICE: usize = 64;

create_exception!(
    padv,
    PadvError,
    PyValueError,
    "An input padv cannot score: the message names the file, line, record, field or tensor, \
     as the CLI's error does."
);

/// A library error as a Python exception with the CLI's message: a missing
/// file is `FileNotFoundError`, another I/O failure `OSError`, anything else
/// [`PadvError`].
pub(crate) fn to_py_err(e: padv::Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        padv::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        padv::Error::Io { .. } => PyOSError::new_err(msg),
        _ => PadvError::new_err(msg),
    }
}

/// A keyword argument's value that is not one of the accepted names.
pub(crate) fn bad_arg(name: &str, e: impl std::fmt::Display) -> PyErr {
    PadvError::new_err(format!("{name}: {e}"))
}

/// A Python object (dict, list, str, number, …) as JSON; `what` names it
/// in the error.
pub(crate) fn to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    json_of(obj).map_err(|e| PadvError::new_err(format!("{what}: {e}")))
}

/// [`to_json`] without the name. NumPy arrays and scalars anywhere inside
/// are taken as their `.tolist()` (a token-id array, an `np.int64` id).
pub(crate) fn json_of(obj: &Bound<'_, PyAny>) -> Result<Value, String> {
    match pythonize::depythonize(obj) {
        Ok(v) => Ok(v),
        Err(e) => {
            let plain = without_numpy(obj).map_err(|_| e.to_string())?;
            pythonize::depythonize(&plain).map_err(|e| e.to_string())
        }
    }
}

/// `obj` with every NumPy value in its dicts, lists and tuples replaced by
/// its `.tolist()`.
fn without_numpy<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::types::{PyList, PyTuple};
    let py = obj.py();
    if obj.get_type().module()?.to_str()? == "numpy" {
        return obj.call_method0("tolist");
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let out = PyDict::new(py);
        for (k, v) in d.iter() {
            out.set_item(k, without_numpy(&v)?)?;
        }
        return Ok(out.into_any());
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items = obj
            .try_iter()?
            .map(|v| without_numpy(&v?))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(PyList::new(py, items)?.into_any());
    }
    Ok(obj.clone())
}

/// A JSON value as Python objects (dicts keep the key order).
pub(crate) fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, v).map_err(|e| PadvError::new_err(e.to_string()))
}

/// A path given as `str` or `os.PathLike`; `None` for anything else.
pub(crate) fn as_path(obj: &Bound<'_, PyAny>) -> Option<std::path::PathBuf> {
    if obj.is_instance_of::<pyo3::types::PyString>() || obj.hasattr("__fspath__").unwrap_or(false) {
        obj.extract().ok()
    } else {
        None
    }
}

#[pymodule]
fn _padv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PadvError", m.py().get_type::<PadvError>())?;
    m.add_class::<scorer::Scorer>()?;
    m.add_class::<session::Session>()?;
    m.add_function(wrap_pyfunction!(apps::eval, m)?)?;
    m.add_function(wrap_pyfunction!(apps::select, m)?)?;
    m.add_function(wrap_pyfunction!(apps::attribute, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
