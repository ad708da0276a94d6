//! Open sessions: a [`Session`] (the conversation so far) with the scoring
//! options it was opened with, behind an id, expiring when idle.
//!
//! Each session has its own async lock, held for the whole of a step, so the
//! steps of one session are applied in order while different sessions run
//! (and are batched) concurrently. A session is idle when nobody holds its
//! lock and it has not been used for the TTL; a periodic sweep closes idle
//! sessions and counts them as evictions, and a lookup of an expired session
//! closes it on the spot. The conversation lives here; the activations of
//! its prefix live in the backend's cache, which the next step reuses.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pipeline::ScorerOptions;
use crate::session::Session;

use super::api::ApiError;
use super::metrics::Metrics;

/// A session's state, behind its lock.
#[derive(Debug)]
pub struct SessionState {
    pub session: Session,
    pub opts: ScorerOptions,
    /// Tokens in the conversation after the last scored step.
    pub n_tokens: usize,
    /// Set when the session is deleted or expires; a step that was waiting
    /// for the lock then answers 404.
    pub closed: bool,
}

#[derive(Debug)]
pub struct Slot {
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
    last_used: Mutex<Instant>,
}

impl Slot {
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    pub fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

pub struct SessionStore {
    map: Mutex<HashMap<String, Arc<Slot>>>,
    pub ttl: Duration,
    max: usize,
    metrics: Arc<Metrics>,
}

impl SessionStore {
    pub fn new(ttl: Duration, max: usize, metrics: Arc<Metrics>) -> SessionStore {
        SessionStore {
            map: Mutex::default(),
            ttl,
            max: max.max(1),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open a session; `429` when `max` are open (after closing idle ones).
    pub fn insert(&self, state: SessionState) -> Result<String, ApiError> {
        if self.len() >= self.max {
            self.sweep();
        }
        let mut map = self.lock();
        if map.len() >= self.max {
            return Err(ApiError::busy(
                format!(
                    "{} sessions are open (the server's limit); delete finished ones",
                    map.len()
                ),
                1,
            ));
        }
        let id = loop {
            let id = format!("s-{:032x}", rand::random::<u128>());
            if !map.contains_key(&id) {
                break id;
            }
        };
        map.insert(
            id.clone(),
            Arc::new(Slot {
                state: Arc::new(tokio::sync::Mutex::new(state)),
                last_used: Mutex::new(Instant::now()),
            }),
        );
        Ok(id)
    }

    /// The session `id`, marked as used; `404` when unknown or expired.
    pub fn get(&self, id: &str) -> Result<Arc<Slot>, ApiError> {
        let mut map = self.lock();
        let slot = map.get(id).cloned().ok_or_else(|| unknown(id))?;
        if slot.idle() > self.ttl && self.close_if_idle(&slot) {
            map.remove(id);
            return Err(unknown(id));
        }
        slot.touch();
        Ok(slot)
    }

    /// Forget `id`; the caller marks the state closed.
    pub fn remove(&self, id: &str) -> Result<Arc<Slot>, ApiError> {
        self.lock().remove(id).ok_or_else(|| unknown(id))
    }

    /// Close every session idle for longer than the TTL; returns how many.
    pub fn sweep(&self) -> usize {
        let mut map = self.lock();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, s)| s.idle() > self.ttl && self.close_if_idle(s))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            map.remove(id);
        }
        expired.len()
    }

    /// Close an expired session unless a step holds it; counts an eviction.
    fn close_if_idle(&self, slot: &Slot) -> bool {
        match slot.state.try_lock() {
            Ok(mut st) => {
                st.closed = true;
                self.metrics
                    .sessions_evicted
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

pub fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no session `{id}` (never opened, deleted, or expired after being idle)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState {
            session: Session::new(Vec::new()),
            opts: ScorerOptions::default(),
            n_tokens: 0,
            closed: false,
        }
    }

    /// Make session `id` look unused for `by` longer than it is: the tests
    /// move the clock instead of sleeping, which a loaded machine stretches.
    fn age(store: &SessionStore, id: &str, by: Duration) {
        let slot = store.lock().get(id).cloned().expect("an open session");
        let mut last = slot.last_used.lock().unwrap();
        *last = last
            .checked_sub(by)
            .expect("the monotonic clock is older than `by`");
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn idle_sessions_expire_and_count_as_evictions() {
        let metrics = Arc::new(Metrics::new(1));
        let store = SessionStore::new(TTL, 10, metrics.clone());
        let a = store.insert(state()).unwrap();
        let b = store.insert(state()).unwrap();
        let (within, past) = (TTL / 2, TTL + Duration::from_secs(1));
        for id in [&a, &b] {
            age(&store, id, within);
        }
        store.get(&a).unwrap();
        age(&store, &b, past);
        assert_eq!(store.sweep(), 1, "only b was idle past the TTL");
        assert_eq!(store.get(&b).unwrap_err().status, 404);
        assert_eq!(store.len(), 1);
        age(&store, &a, past);
        assert_eq!(store.get(&a).unwrap_err().status, 404, "expired on lookup");
        assert_eq!(metrics.sessions_evicted.load(Ordering::Relaxed), 2);
        assert!(store.is_empty());
    }

    #[test]
    fn a_session_in_use_does_not_expire_and_a_full_store_answers_429() {
        let metrics = Arc::new(Metrics::new(1));
        let store = SessionStore::new(TTL, 1, metrics);
        let a = store.insert(state()).unwrap();
        let slot = store.get(&a).unwrap();
        let guard = slot.state.try_lock().unwrap();
        age(&store, &a, TTL * 2);
        assert_eq!(store.sweep(), 0);
        assert_eq!(store.insert(state()).unwrap_err().status, 429);
        drop(guard);
        assert!(store.insert(state()).is_ok(), "the idle one made room");
        assert_eq!(store.get(&a).unwrap_err().status, 404);
    }
}
