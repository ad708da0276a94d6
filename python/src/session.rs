//! `padv.Session`: a conversation scored step by step ([`padv::Session`]),
//! bound to the `Scorer` that opened it. Each call scores the whole
//! conversation so far (the prefix cache makes that cost the new tokens)
//! and returns the new steps as the step dicts of `padv score`'s lines,
//! `step` being the index among the conversation's steps — as the
//! service's session endpoints answer.

use std::sync::{Mutex, MutexGuard};

use padv::trajectory::{ROLES, Record, json_kind};
use pyo3::prelude::*;
use serde_json::{Value, json};

use crate::scorer::Scorer;
use crate::{bad_arg, to_json, to_py, to_py_err};

/// A conversation being scored step by step; open one with
/// :meth:`Scorer.session`.
///
/// ``append`` adds messages (an observation and an action) and returns the
/// new steps' scores; ``candidates`` scores several possible next actions
/// without changing the session; ``fork`` copies it.
#[pyclass(module = "padv", frozen)]
pub struct Session {
    scorer: Py<Scorer>,
    inner: Mutex<padv::Session>,
}

impl Session {
    pub(crate) fn open(
        scorer: &Bound<'_, Scorer>,
        messages: &Bound<'_, PyAny>,
        tools: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Session> {
        let mut session = padv::Session::new(message_list(messages, "messages")?);
        if let Some(t) = tools {
            session = session.with_tools(to_json(t, "tools")?);
        }
        Ok(Session {
            scorer: scorer.clone().unbind(),
            inner: Mutex::new(session),
        })
    }

    fn lock(&self) -> MutexGuard<'_, padv::Session> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Score `records` (continuations of this session) and return each one's
    /// JSON steps from message `first_new` on.
    fn new_steps(&self, records: &[Record], first_new: usize) -> padv::Result<Vec<Vec<Value>>> {
        let scorer = self.scorer.get();
        let mut scorer = scorer.lock();
        scorer
            .score(records)
            .into_iter()
            .map(|r| {
                let json = scorer.to_json(&r?);
                Ok(json["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| {
                        s["message"]
                            .as_u64()
                            .is_some_and(|m| m as usize >= first_new)
                    })
                    .cloned()
                    .collect())
            })
            .collect()
    }
}

/// A list of message dicts (a single dict is taken as a list of one), each
/// checked here so that an error names the argument (`messages[2].role`)
/// rather than a position in the session.
fn message_list(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<Value>> {
    messages_arg(obj, what, None)
}

/// Messages of argument `what`: a list, or one item. Items are message
/// dicts with a known role; with `default_role`, a string is a message of
/// that role too (as the HTTP session API takes them).
fn messages_arg(
    obj: &Bound<'_, PyAny>,
    what: &str,
    default_role: Option<&str>,
) -> PyResult<Vec<Value>> {
    let items = match to_json(obj, what)? {
        Value::Array(v) => v,
        v => vec![v],
    };
    (items.into_iter().enumerate())
        .map(|(i, m)| message_arg(m, &format!("{what}[{i}]"), default_role))
        .collect()
}

fn message_arg(m: Value, at: &str, default_role: Option<&str>) -> PyResult<Value> {
    let role = match (&m, default_role) {
        (Value::String(text), Some(role)) => return Ok(json!({"role": role, "content": text})),
        (Value::Object(o), _) => o.get("role"),
        (other, _) => {
            let strings = if default_role.is_some() {
                " or a string"
            } else {
                ""
            };
            return Err(bad_arg(
                at,
                format!(
                    "expected a message dict{strings}, found {}",
                    json_kind(other)
                ),
            ));
        }
    };
    match role {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => Ok(m),
        Some(Value::String(r)) => Err(bad_arg(
            &format!("{at}.role"),
            format!("unknown role `{r}` (expected {})", ROLES.join(", ")),
        )),
        _ => Err(bad_arg(
            &format!("{at}.role"),
            "missing (expected a string)",
        )),
    }
}

#[pymethods]
impl Session {
    /// Add ``messages`` (typically an observation and an action) and return
    /// the scores of the action steps among them: a list of step dicts
    /// (``step``, ``message``, ``advantage``, ``logp_policy``, ``logp_reference``,
    /// ``entropy``, ``self_certainty``, ``n_tokens``, ``truncated``, ``empty``, ``span``,
    /// and ``warnings`` when the render lost something of the action).
    /// The session is unchanged when scoring fails.
    fn append(&self, py: Python<'_>, messages: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let messages = message_list(messages, "messages")?;
        let steps = py
            .detach(|| -> padv::Result<Vec<Value>> {
                let mut session = self.lock();
                let first_new = session.messages().len();
                let record = session.record(&messages)?;
                let steps = self.new_steps(std::slice::from_ref(&record), first_new)?;
                session.extend(messages);
                Ok(steps.into_iter().flatten().collect())
            })
            .map_err(to_py_err)?;
        steps
            .iter()
            .map(|s| to_py(py, s).map(Bound::unbind))
            .collect()
    }

    /// Score candidate next actions from this state without changing the
    /// session: ``observation`` (a message dict, or a string taken as a user
    /// message, if any) then each action (a message dict, or a string taken
    /// as an assistant message).
    /// Returns one step dict per candidate, in order.
    #[pyo3(signature = (actions, *, observation=None))]
    fn candidates(
        &self,
        py: Python<'_>,
        actions: &Bound<'_, PyAny>,
        observation: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let actions = messages_arg(actions, "actions", Some("assistant"))?;
        let observation = match observation {
            None => None,
            Some(o) => match to_json(o, "observation")? {
                Value::Array(_) => {
                    return Err(bad_arg(
                        "observation",
                        "one message (a dict or a string), not a list: append earlier messages \
                         with `append`",
                    ));
                }
                v => Some(message_arg(v, "observation", Some("user"))?),
            },
        };
        let steps = py
            .detach(|| -> padv::Result<Vec<Value>> {
                let (records, first_new) = self.lock().candidate_records(observation, actions)?;
                self.new_steps(&records, first_new)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, steps)| {
                        steps.into_iter().next_back().ok_or_else(|| {
                            padv::Error::input(
                                format!("candidate {i}"),
                                "the candidate is not an action (role must be assistant)",
                            )
                        })
                    })
                    .collect()
            })
            .map_err(to_py_err)?;
        steps
            .iter()
            .map(|s| to_py(py, s).map(Bound::unbind))
            .collect()
    }

    /// An independent copy sharing this session's history (and scorer).
    fn fork(&self, py: Python<'_>) -> Session {
        Session {
            scorer: self.scorer.clone_ref(py),
            inner: Mutex::new(self.lock().fork()),
        }
    }

    /// The conversation so far, as message dicts.
    #[getter]
    fn messages(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let messages = Value::Array(self.lock().messages().to_vec());
        to_py(py, &messages).map(Bound::unbind)
    }

    fn __len__(&self) -> usize {
        self.lock().messages().len()
    }

    fn __repr__(&self) -> String {
        format!("padv.Session({} messages)", self.lock().messages().len())
    }
}
