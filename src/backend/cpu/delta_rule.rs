//! The gated delta rule of one value head over one sequence, in two forms:
//! [`chunked`], the prefill the forward runs, and [`recurrent`], the
//! step-by-step twin the tests hold it to.
//!
//! The recurrence (state `S` `[dk, dv]`, f32): for every token,
//! `S ← e^g S; S ← S + k (β (v − Sᵀk))ᵀ; o = Sᵀq`.
//!
//! The chunked form follows the WY/UT representation of DeltaNet
//! (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over
//! Sequence Length", and transformers' `torch_chunk_gated_delta_rule`): per
//! chunk of `C ≤ 64` tokens with cumulative log-decays `c_i`, the strictly
//! lower system `L_ij = β_i (k_i·k_j) e^{c_i − c_j}` (j < i) is inverted once
//! (`T = (I + L)⁻¹`, a 64 × 64 triangular solve), then everything is
//! products of `[C × dk]`, `[C × dv]`, `[C × C]` and `[dk × dv]` matrices
//! (GEMMs through the `gemm` crate):
//! `U = T·(β v)`, `W = T·(β k e^c)`, `V = U − W·S`,
//! `o = (q e^c)·S + (QKᵀ ⊙ decay, causal)·V`,
//! `S ← e^{c_C} S + (k e^{c_C − c})ᵀ·V`. Chunks end at absolute positions
//! that are multiples of [`CHUNK`] (and at the `cuts` a caller asks for), so a
//! sequence continued from a state snapshotted at a chunk boundary is
//! computed with exactly the operations of one computed in one go.

use std::cell::RefCell;

use gemm::Parallelism;

pub use crate::model::config::DELTANET_CHUNK as CHUNK;

/// A matrix operand `[rows × cols]`: pointer and (row, column) strides.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Row-major `a` as `[rows × cols]`.
fn rm(a: &[f32], rows: usize, cols: usize) -> Mat {
    assert!(a.len() >= rows * cols, "delta rule: operand too small");
    Mat {
        ptr: a.as_ptr(),
        rows,
        cols,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of row-major `a` (`[cols × rows]` in memory) as `[rows × cols]`.
fn tr(a: &[f32], rows: usize, cols: usize) -> Mat {
    assert!(a.len() >= rows * cols, "delta rule: operand too small");
    Mat {
        ptr: a.as_ptr(),
        rows,
        cols,
        rs: 1,
        cs: rows,
    }
}

/// One small product into row-major `dst` (`[lhs.rows × rhs.cols]`):
/// `dst = keep·dst + scale·lhs·rhs` (`dst` not read when `keep` is 0).
fn mm(dst: &mut [f32], keep: f32, lhs: Mat, rhs: Mat, scale: f32) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "delta rule: inner dimensions");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "delta rule: product too small");
    // SAFETY: `rm`/`tr` checked that each operand's slice holds it; `dst`
    // was checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            keep != 0.0,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            keep,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Per-thread buffers of one chunk.
#[derive(Default)]
struct Scratch {
    cum: Vec<f32>,
    kb: Vec<f32>,
    kdecay: Vec<f32>,
    vb: Vec<f32>,
    l: Vec<f32>,
    t: Vec<f32>,
    u: Vec<f32>,
    w: Vec<f32>,
    intra: Vec<f32>,
    qd: Vec<f32>,
    kd: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The inputs of one value head over one sequence (row-major, contiguous):
/// `q`, `k` `[len, dk]` (L2-normalised, q scaled), `v` `[len, dv]`, and per
/// token the log-decay `g` and the write strength `beta`.
#[derive(Clone, Copy)]
pub struct HeadInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
    pub beta: &'a [f32],
    pub dk: usize,
    pub dv: usize,
}

impl HeadInputs<'_> {
    pub fn len(&self) -> usize {
        self.g.len()
    }
    pub fn is_empty(&self) -> bool {
        self.g.is_empty()
    }
}

/// The chunked rule: `out` (`[len, dv]`) from `state` (`[dk, dv]`, updated to
/// the state after the last token). Row 0 sits at absolute position `offset`;
/// chunks end at multiples of [`CHUNK`] in absolute positions and at every
/// row in `cuts` (sorted, relative), after which `at_cut(row, state)` sees the
/// state after rows `[0, row)`.
pub fn chunked(
    x: HeadInputs,
    offset: usize,
    state: &mut [f32],
    out: &mut [f32],
    cuts: &[usize],
    mut at_cut: impl FnMut(usize, &[f32]),
) {
    let (len, dk, dv) = (x.len(), x.dk, x.dv);
    assert_eq!(state.len(), dk * dv, "delta rule: state shape");
    assert!(out.len() >= len * dv, "delta rule: output too small");
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let mut r0 = 0;
        let mut next_cut = cuts.iter().copied().filter(|&c| c > 0).peekable();
        while r0 < len {
            let to_boundary = CHUNK - (offset + r0) % CHUNK;
            let mut r1 = (r0 + to_boundary).min(len);
            while next_cut.peek().is_some_and(|&c| c <= r0) {
                next_cut.next();
            }
            if let Some(&c) = next_cut.peek() {
                r1 = r1.min(c);
            }
            one_chunk(s, x, r0, r1, state, &mut out[r0 * dv..r1 * dv]);
            if next_cut.peek() == Some(&r1) {
                at_cut(r1, state);
                next_cut.next();
            }
            r0 = r1;
        }
    });
}

/// Rows `[r0, r1)` (at most [`CHUNK`]) of the chunked form.
fn one_chunk(
    s: &mut Scratch,
    x: HeadInputs,
    r0: usize,
    r1: usize,
    state: &mut [f32],
    out: &mut [f32],
) {
    let (c, dk, dv) = (r1 - r0, x.dk, x.dv);
    let q = &x.q[r0 * dk..r1 * dk];
    let k = &x.k[r0 * dk..r1 * dk];
    let v = &x.v[r0 * dv..r1 * dv];
    let (g, beta) = (&x.g[r0..r1], &x.beta[r0..r1]);
    for buf in [&mut s.kb, &mut s.kdecay, &mut s.w, &mut s.qd, &mut s.kd] {
        buf.resize(c * dk, 0.0);
    }
    for buf in [&mut s.vb, &mut s.u] {
        buf.resize(c * dv, 0.0);
    }
    for buf in [&mut s.l, &mut s.t, &mut s.intra] {
        buf.resize(c * c, 0.0);
    }
    s.cum.clear();
    let mut acc = 0.0f32;
    for &gi in g {
        acc += gi;
        s.cum.push(acc);
    }
    let cum = &s.cum;
    let last = cum[c - 1];
    for i in 0..c {
        let (e, b) = (cum[i].exp(), beta[i]);
        let ki = &k[i * dk..(i + 1) * dk];
        let (kb, kdec) = (
            &mut s.kb[i * dk..(i + 1) * dk],
            &mut s.kdecay[i * dk..(i + 1) * dk],
        );
        for ((kb, kdec), &kv) in kb.iter_mut().zip(kdec.iter_mut()).zip(ki) {
            *kb = kv * b;
            *kdec = *kb * e;
        }
        for (vb, &vv) in s.vb[i * dv..(i + 1) * dv].iter_mut().zip(&v[i * dv..]) {
            *vb = vv * b;
        }
        for (qd, &qv) in s.qd[i * dk..(i + 1) * dk].iter_mut().zip(&q[i * dk..]) {
            *qd = qv * e;
        }
        let tail = (last - cum[i]).exp();
        for (kd, &kv) in s.kd[i * dk..(i + 1) * dk].iter_mut().zip(ki) {
            *kd = kv * tail;
        }
    }
    // L = (βK)·Kᵀ ⊙ decay, strictly lower; intra = Q·Kᵀ ⊙ decay, causal.
    mm(&mut s.l, 0.0, rm(&s.kb, c, dk), tr(k, dk, c), 1.0);
    mm(&mut s.intra, 0.0, rm(q, c, dk), tr(k, dk, c), 1.0);
    for i in 0..c {
        for j in 0..c {
            let at = i * c + j;
            if j <= i {
                let d = (cum[i] - cum[j]).exp();
                s.intra[at] *= d;
                s.l[at] = if j < i { s.l[at] * d } else { 0.0 };
            } else {
                s.intra[at] = 0.0;
                s.l[at] = 0.0;
            }
        }
    }
    unit_lower_inverse(&s.l, c, &mut s.t);
    // U = T·(βV), W = T·(βK e^c).
    mm(&mut s.u, 0.0, rm(&s.t, c, c), rm(&s.vb, c, dv), 1.0);
    mm(&mut s.w, 0.0, rm(&s.t, c, c), rm(&s.kdecay, c, dk), 1.0);
    // V' = U − W·S (in u).
    mm(&mut s.u, 1.0, rm(&s.w, c, dk), rm(state, dk, dv), -1.0);
    // o = (Q e^c)·S + intra·V'.
    mm(out, 0.0, rm(&s.qd, c, dk), rm(state, dk, dv), 1.0);
    mm(out, 1.0, rm(&s.intra, c, c), rm(&s.u, c, dv), 1.0);
    // S ← e^{c_C} S + (K e^{c_C − c})ᵀ·V'.
    mm(state, last.exp(), tr(&s.kd, dk, c), rm(&s.u, c, dv), 1.0);
}

/// `t = (I + l)⁻¹` for strictly lower `l` (`[n × n]`), by forward
/// substitution row by row: `t_i = e_i − Σ_{m<i} l_im t_m`.
fn unit_lower_inverse(l: &[f32], n: usize, t: &mut [f32]) {
    t.fill(0.0);
    for i in 0..n {
        let (done, row) = t.split_at_mut(i * n);
        let row = &mut row[..n];
        row[i] = 1.0;
        for m in 0..i {
            let f = l[i * n + m];
            if f != 0.0 {
                let tm = &done[m * n..m * n + m + 1];
                for (r, &x) in row[..=m].iter_mut().zip(tm) {
                    *r -= f * x;
                }
            }
        }
    }
}

/// The step-by-step recurrence (the reference twin of [`chunked`]).
pub fn recurrent(x: HeadInputs, state: &mut [f32], out: &mut [f32]) {
    let (dk, dv) = (x.dk, x.dv);
    let mut kv_mem = vec![0.0f32; dv];
    for i in 0..x.len() {
        let decay = x.g[i].exp();
        state.iter_mut().for_each(|s| *s *= decay);
        let k = &x.k[i * dk..(i + 1) * dk];
        kv_mem.fill(0.0);
        for (a, &ka) in k.iter().enumerate() {
            for (m, &s) in kv_mem.iter_mut().zip(&state[a * dv..(a + 1) * dv]) {
                *m += s * ka;
            }
        }
        let v = &x.v[i * dv..(i + 1) * dv];
        for (m, &vv) in kv_mem.iter_mut().zip(v) {
            *m = (vv - *m) * x.beta[i];
        }
        for (a, &ka) in k.iter().enumerate() {
            for (s, &d) in state[a * dv..(a + 1) * dv].iter_mut().zip(&kv_mem) {
                *s += ka * d;
            }
        }
        let q = &x.q[i * dk..(i + 1) * dk];
        let o = &mut out[i * dv..(i + 1) * dv];
        o.fill(0.0);
        for (a, &qa) in q.iter().enumerate() {
            for (o, &s) in o.iter_mut().zip(&state[a * dv..(a + 1) * dv]) {
                *o += s * qa;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        g: Vec<f32>,
        beta: Vec<f32>,
        state: Vec<f32>,
    }

    /// Unit-norm q/k (q scaled by 1/√dk), v ~ N-ish, per-token decays e^g in
    /// the fixture's 0.7–0.99, β in (0, 1), a non-zero initial state.
    fn case(rng: &mut SmallRng, len: usize, dk: usize, dv: usize) -> Case {
        let mut unit = |scale: f32| {
            let mut v: Vec<f32> = (0..dk).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x *= scale / n);
            v
        };
        let scale = 1.0 / (dk as f32).sqrt();
        let q = (0..len).flat_map(|_| unit(scale)).collect();
        let k = (0..len).flat_map(|_| unit(1.0)).collect();
        let v = (0..len * dv)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let g = (0..len)
            .map(|_| rng.random_range(0.7f32..0.99).ln())
            .collect();
        let beta = (0..len).map(|_| rng.random_range(0.05f32..0.95)).collect();
        let state = (0..dk * dv)
            .map(|_| rng.random_range(-0.5f32..0.5))
            .collect();
        Case {
            q,
            k,
            v,
            g,
            beta,
            state,
        }
    }

    impl Case {
        fn inputs(&self, dk: usize, dv: usize) -> HeadInputs<'_> {
            HeadInputs {
                q: &self.q,
                k: &self.k,
                v: &self.v,
                g: &self.g,
                beta: &self.beta,
                dk,
                dv,
            }
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_chunked_rule_equals_the_recurrence_at_lengths_around_the_chunk() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut largest = 0.0f32;
        for (dk, dv) in [(16, 16), (32, 24)] {
            for len in [1, 2, 63, 64, 65, 127, 200] {
                for offset in [0, 5, 64] {
                    let c = case(&mut rng, len, dk, dv);
                    let (mut s_ref, mut s_chunk) = (c.state.clone(), c.state.clone());
                    let (mut o_ref, mut o_chunk) = (vec![0.0; len * dv], vec![0.0; len * dv]);
                    recurrent(c.inputs(dk, dv), &mut s_ref, &mut o_ref);
                    chunked(
                        c.inputs(dk, dv),
                        offset,
                        &mut s_chunk,
                        &mut o_chunk,
                        &[],
                        |_, _| {},
                    );
                    let (dout, dstate) = (max_diff(&o_ref, &o_chunk), max_diff(&s_ref, &s_chunk));
                    assert!(
                        dout < 1e-5 && dstate < 1e-5,
                        "dk {dk} dv {dv} len {len} offset {offset}: |Δo| {dout}, |ΔS| {dstate}"
                    );
                    largest = o_ref.iter().fold(largest, |m, x| m.max(x.abs()));
                }
            }
        }
        assert!(largest > 0.1, "vacuous cases: |o| ≤ {largest}");
    }

    #[test]
    fn a_sequence_continued_from_a_chunk_boundary_state_is_bitwise_the_one_run_whole() {
        let mut rng = SmallRng::seed_from_u64(11);
        let (dk, dv, len) = (16, 8, 200);
        let c = case(&mut rng, len, dk, dv);
        let x = c.inputs(dk, dv);
        let mut whole_state = c.state.clone();
        let mut whole = vec![0.0; len * dv];
        let mut snaps = Vec::new();
        chunked(x, 0, &mut whole_state, &mut whole, &[64, 128], |r, s| {
            snaps.push((r, s.to_vec()))
        });
        assert_eq!(snaps.iter().map(|s| s.0).collect::<Vec<_>>(), [64, 128]);
        // Continue from the state after 128 rows.
        let tail = HeadInputs {
            q: &c.q[128 * dk..],
            k: &c.k[128 * dk..],
            v: &c.v[128 * dv..],
            g: &c.g[128..],
            beta: &c.beta[128..],
            dk,
            dv,
        };
        let mut state = snaps[1].1.clone();
        let mut rest = vec![0.0; (len - 128) * dv];
        chunked(tail, 128, &mut state, &mut rest, &[], |_, _| {});
        assert_eq!(rest, whole[128 * dv..]);
        assert_eq!(state, whole_state);
    }
}
