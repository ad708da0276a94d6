//! Streaming sessions for agents that act online: open a session with its
//! context messages, then `append` an observation and an action and get that
//! step's scores; `fork` a session to try several candidate actions from one
//! state (the test-time-scaling case).
//!
//! A session keeps the conversation, not activations: each call re-encodes
//! the whole conversation (rendering can change earlier turns, e.g. Qwen3
//! drops `<think>` blocks from non-final assistant turns) and scores it
//! through the [`Scorer`]; the backend's prefix cache makes the cost of a
//! call proportional to the tokens that are new since the cached prefix.
//!
//! ```
//! use padv::pipeline::{Scorer, ScorerOptions};
//! use padv::session::Session;
//! use serde_json::json;
//! # fn main() -> padv::Result<()> {
//! let toy = padv::toyworld::dir()?.join("models"); // the bundled pair
//! let mut scorer = Scorer::load(&toy.join("trained"), &toy.join("ref"), ScorerOptions::default())?;
//! let mut s = Session::new(vec![json!({"role": "system", "content": "get the key , then open the door ."})]);
//! let steps = scorer.append(&mut s, vec![
//!     json!({"role": "user", "content": "start . at 1 0 . left 12 . key 1 north . door 1 south . danger none ."}),
//!     json!({"role": "assistant", "content": "go north"}),
//! ])?;
//! println!("advantage of `go north`: {:?}", steps[0].advantage);
//! # Ok(())
//! # }
//! ```

use serde_json::{Value, json};

use crate::pipeline::Scorer;
use crate::score::StepScore;
use crate::trajectory::record_from_json;
use crate::{Error, Result};

/// A conversation being scored step by step.
#[derive(Debug, Clone, Default)]
pub struct Session {
    messages: Vec<Value>,
    tools: Option<Value>,
}

impl Session {
    /// A session whose context is `messages` (system prompt, task, …).
    pub fn new(messages: Vec<Value>) -> Session {
        Session {
            messages,
            tools: None,
        }
    }

    /// The tool list handed to the chat template.
    pub fn with_tools(mut self, tools: Value) -> Session {
        self.tools = Some(tools);
        self
    }

    pub fn messages(&self) -> &[Value] {
        &self.messages
    }

    pub fn tools(&self) -> Option<&Value> {
        self.tools.as_ref()
    }

    /// An independent copy sharing this session's history.
    pub fn fork(&self) -> Session {
        self.clone()
    }

    /// Add messages without scoring them (a caller that scored
    /// [`Session::record`] itself, e.g. batched with other work, commits them
    /// this way).
    pub fn extend(&mut self, messages: impl IntoIterator<Item = Value>) {
        self.messages.extend(messages);
    }

    /// The record that scoring this session followed by `extra` scores: the
    /// whole conversation, with the session's tools. Its steps from message
    /// `self.messages().len()` on are the new ones.
    pub fn record(&self, extra: &[Value]) -> Result<crate::trajectory::Record> {
        let mut messages = self.messages.clone();
        messages.extend_from_slice(extra);
        let mut obj = json!({"id": "session", "messages": messages});
        if let Some(t) = &self.tools {
            obj["tools"] = t.clone();
        }
        record_from_json(obj, "session")
    }

    /// The records that scoring candidate actions scores: this session,
    /// then `observation` (if any) and one action each; and the index of
    /// the first message after the observation (where each candidate's
    /// step is).
    pub fn candidate_records(
        &self,
        observation: Option<Value>,
        actions: Vec<Value>,
    ) -> Result<(Vec<crate::trajectory::Record>, usize)> {
        let prefix: Vec<Value> = observation.into_iter().collect();
        let first_new = self.messages.len() + prefix.len();
        let records = actions
            .into_iter()
            .map(|a| {
                let mut m = prefix.clone();
                m.push(a);
                self.record(&m)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((records, first_new))
    }
}

impl Scorer {
    /// Add `messages` (typically an observation and an action) to the
    /// session and return the scores of the action steps among them.
    pub fn append(
        &mut self,
        session: &mut Session,
        messages: Vec<Value>,
    ) -> Result<Vec<StepScore>> {
        let first_new = session.messages.len();
        let record = session.record(&messages)?;
        let scored = self
            .score(std::slice::from_ref(&record))
            .pop()
            .ok_or_else(|| Error::input("session", "nothing was scored"))??;
        session.messages.extend(messages);
        Ok(scored
            .steps
            .into_iter()
            .filter(|s| s.message.is_some_and(|m| m >= first_new))
            .collect())
    }

    /// Score several candidate continuations of one state without changing
    /// the session: `observation` (if any) then each candidate action. Returns
    /// one step score per candidate, in order.
    pub fn candidates(
        &mut self,
        session: &Session,
        observation: Option<Value>,
        actions: Vec<Value>,
    ) -> Result<Vec<StepScore>> {
        let (records, first_new) = session.candidate_records(observation, actions)?;
        self.score(&records)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r?;
                r.steps
                    .into_iter()
                    .rfind(|s| s.message.is_some_and(|m| m >= first_new))
                    .ok_or_else(|| {
                        Error::input(
                            format!("candidate {i}"),
                            "the candidate is not an action (role must be assistant)",
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Device;
    use crate::pipeline::ScorerOptions;
    use crate::score::aggregate::TokenAgg;
    use crate::trajectory::read_records;

    fn toy_scorer() -> (Scorer, std::path::PathBuf) {
        let toy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld");
        let opts = ScorerOptions {
            device: Device::Cpu,
            token_agg: TokenAgg::Sum,
            ..ScorerOptions::default()
        };
        (
            Scorer::load(&toy.join("models/trained"), &toy.join("models/ref"), opts).unwrap(),
            toy,
        )
    }

    #[test]
    fn session_steps_equal_batch_scores_of_the_whole_trajectory() {
        let (mut scorer, toy) = toy_scorer();
        let record = read_records(&toy.join("demo_trained.jsonl"), None)
            .unwrap()
            .remove(0)
            .unwrap();
        let batch = scorer
            .score(std::slice::from_ref(&record))
            .pop()
            .unwrap()
            .unwrap();
        let messages: Vec<Value> = record
            .messages()
            .unwrap()
            .iter()
            .map(|m| Value::Object(m.raw.clone()))
            .collect();
        let mut session = Session::new(messages[..1].to_vec());
        let mut streamed = Vec::new();
        for pair in messages[1..].chunks(2) {
            streamed.extend(scorer.append(&mut session, pair.to_vec()).unwrap());
        }
        assert_eq!(streamed.len(), batch.steps.len());
        for (a, b) in streamed.iter().zip(&batch.steps) {
            assert!((a.advantage.unwrap() - b.advantage.unwrap()).abs() < 1e-5);
        }
        // Forked candidates: the actual next action scores as in the batch.
        let mut s2 = Session::new(messages[..3].to_vec());
        let fork = s2.fork();
        let c = scorer
            .candidates(
                &fork,
                Some(messages[3].clone()),
                vec![
                    messages[4].clone(),
                    json!({"role": "assistant", "content": "wait"}),
                ],
            )
            .unwrap();
        assert!((c[0].advantage.unwrap() - batch.steps[1].advantage.unwrap()).abs() < 1e-5);
        assert_eq!(c.len(), 2);
        assert!(
            scorer
                .append(&mut s2, vec![json!({"role": "robot", "content": "x"})])
                .is_err()
        );
    }
}
