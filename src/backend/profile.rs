//! The forward breakdown of `padv bench`: wall time spent in the weight
//! GEMMs, attention, the LM head and the DeltaNet recurrences, summed over
//! calls, on either backend. Off unless the bench turns it on, and then
//! cheap: one relaxed atomic load per call when off, two clock reads and an
//! atomic add when on (the CUDA backend also synchronises the device around
//! each part, so a part's time is its kernels'). Only the outermost timed call
//! on a thread counts (a GEMM inside a timed part is not counted twice);
//! the parts are called one after another by the thread that runs the
//! forward, so their sum is at most the forward's wall time.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// A timed part of the forward.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    Gemm,
    Attention,
    LmHead,
    /// A gated-DeltaNet layer's own work: convolution, gates, the chunked
    /// delta rule (its input/output GEMMs count as [`Part::Gemm`]).
    DeltaRule,
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Seconds per part since the last [`take`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Breakdown {
    pub gemm_s: f64,
    pub attention_s: f64,
    pub lm_head_s: f64,
    pub delta_rule_s: f64,
}

/// Turn the timers on or off (process-wide).
pub fn enable(on: bool) {
    ON.store(on, Relaxed);
}

/// Whether the timers are on.
#[inline]
pub fn on() -> bool {
    ON.load(Relaxed)
}

/// The accumulated times, reset to zero.
pub fn take() -> Breakdown {
    let s = |p: Part| NANOS[p as usize].swap(0, Relaxed) as f64 * 1e-9;
    Breakdown {
        gemm_s: s(Part::Gemm),
        attention_s: s(Part::Attention),
        lm_head_s: s(Part::LmHead),
        delta_rule_s: s(Part::DeltaRule),
    }
}

/// One profiled run: its wall time and parts.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Profiled {
    pub wall_s: f64,
    pub parts: Breakdown,
}

impl Profiled {
    /// Run `f` with the timers on (from zero), and say where its time went.
    pub fn run<T, E>(f: impl FnOnce() -> Result<T, E>) -> (Result<T, E>, Profiled) {
        enable(true);
        take();
        let t0 = Instant::now();
        let r = f();
        let wall_s = t0.elapsed().as_secs_f64();
        let parts = take();
        enable(false);
        (r, Profiled { wall_s, parts })
    }

    /// "GEMMs 1.2 ms, attention …, rest …" (the rest: the wall time no
    /// part accounts for).
    pub fn summary(&self) -> String {
        let b = &self.parts;
        let rest = self.wall_s - b.gemm_s - b.attention_s - b.lm_head_s - b.delta_rule_s;
        format!(
            "GEMMs {:.1} ms, attention {:.1}, LM head + scoring {:.1}, DeltaNet {:.1}, rest {:.1} \
             (of {:.1} ms)",
            1e3 * b.gemm_s,
            1e3 * b.attention_s,
            1e3 * b.lm_head_s,
            1e3 * b.delta_rule_s,
            1e3 * rest,
            1e3 * self.wall_s
        )
    }
}

/// Times `part` until dropped (when the timers are on): `None` when off,
/// `Some((part, None))` for a nested span (depth only).
#[must_use]
pub struct Span(Option<(Part, Option<Instant>)>);

/// Start timing `part`.
#[inline]
pub fn span(part: Part) -> Span {
    if !on() {
        return Span(None);
    }
    let outer = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    Span(Some((part, outer.then(Instant::now))))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((part, start)) = self.0 {
            DEPTH.with(|d| d.set(d.get() - 1));
            if let Some(t0) = start {
                NANOS[part as usize].fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
            }
        }
    }
}
