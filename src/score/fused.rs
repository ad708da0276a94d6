//! Fused per-row scoring: one streaming pass over a row of logits gives
//! logsumexp (online max and rescaled sum), the target's log-prob, the
//! entropy and the mean of the top-20 log-probs — no softmax row is ever
//! written. This is the CPU twin of `kernels/fused_logprob.cu`.
//!
//! Entropy uses `H = lse − Σ p·z`, accumulating `Σ e^{z−m}·z` alongside
//! `Σ e^{z−m}` and rescaling both when the running max grows.

/// Number of top log-probs averaged for the self-certainty baseline (shared
/// with `kernels/fused_logprob.cu` through [`crate::consts`]).
pub const TOP_K: usize = crate::consts::TOP_K;

/// Per-row outputs of the fused pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowStats {
    /// log p(target)
    pub logp: f32,
    /// Entropy of the row's distribution (nats).
    pub entropy: f32,
    /// Mean of the top-`TOP_K` log-probs.
    pub top_mean: f32,
}

/// Vectorisable `e^x` for `x ≤ 0`-ish ranges used here (accurate to ~2 ulp on
/// [-87, 88]; below −87 it returns a value ≤ 1e-38, which is what a sum needs).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // e^x = 2^n · e^r, r = x − n·ln2 ∈ [−ln2/2, ln2/2]
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    // Minimax polynomial for e^r on [−ln2/2, ln2/2] (Cephes expf coefficients).
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

const BLOCK: usize = 256;
const LANES: usize = 16;

/// Candidates a [`TopK`] gathers before sorting them in.
const PENDING: usize = 64;

/// Keeps the `TOP_K` largest values seen. Values above `floor` (the
/// smallest kept, once full) are gathered in `pending` and sorted in
/// `PENDING` at a time: each vocabulary group of the LM head starts an
/// empty top-k, so a row sees thousands of candidates, and inserting each
/// one on arrival (a search and a minimum over the kept values) cost 3.5%
/// of a gemma4-0.3b pair's `padv score` (65k vocabulary, 1,024 logits per
/// group; < 1% at Qwen2.5-0.5B's 152k). The kept values are the same
/// multiset either way, and the scores the same bits.
#[derive(Clone, Debug)]
struct TopK {
    vals: [f32; TOP_K],
    len: usize,
    floor: f32,
    pending: [f32; PENDING],
    npending: usize,
}

impl TopK {
    fn new() -> Self {
        TopK {
            vals: [f32::NEG_INFINITY; TOP_K],
            len: 0,
            floor: f32::NEG_INFINITY,
            pending: [f32::NEG_INFINITY; PENDING],
            npending: 0,
        }
    }
    #[inline]
    fn push(&mut self, v: f32) {
        if v > self.floor {
            self.pending[self.npending] = v;
            self.npending += 1;
            if self.npending == PENDING {
                self.flush();
            }
        }
    }
    /// Sort the pending candidates in: the `TOP_K` largest of both stay.
    fn flush(&mut self) {
        if self.npending == 0 {
            return;
        }
        let n = self.len + self.npending;
        let mut all = [f32::NEG_INFINITY; TOP_K + PENDING];
        all[..self.len].copy_from_slice(&self.vals[..self.len]);
        all[self.len..n].copy_from_slice(&self.pending[..self.npending]);
        self.npending = 0;
        let all = &mut all[..n];
        if n > TOP_K {
            // The TOP_K largest to the end.
            all.select_nth_unstable_by(n - TOP_K, f32::total_cmp);
            self.vals.copy_from_slice(&all[n - TOP_K..]);
            self.len = TOP_K;
            self.floor = self.vals.iter().copied().fold(f32::INFINITY, f32::min);
        } else {
            self.vals[..n].copy_from_slice(all);
            self.len = n;
        }
    }
    /// The kept values, pending ones sorted in.
    fn kept(&self) -> ([f32; TOP_K], usize) {
        let mut t = self.clone();
        t.flush();
        (t.vals, t.len)
    }
}

/// Streaming state of one row: running max `m`, `Σ e^{z−m}` and
/// `Σ e^{z−m}·z` in 16 lanes, the top-k values and (once seen) the target
/// logit. Rows may be fed in any order of vocabulary slices, and partial
/// states of disjoint slices merge exactly (the LM-head tiles of different
/// threads are combined this way).
#[derive(Clone, Debug)]
pub struct RowAccum {
    m: f32,
    s: [f32; LANES],
    w: [f32; LANES],
    top: Option<TopK>,
    target: Option<f32>,
}

impl RowAccum {
    /// `full`: also track entropy and top-k (the policy); otherwise only the
    /// normaliser (the reference).
    pub fn new(full: bool) -> Self {
        RowAccum {
            m: f32::NEG_INFINITY,
            s: [0.0; LANES],
            w: [0.0; LANES],
            top: full.then(TopK::new),
            target: None,
        }
    }

    fn rescale_to(&mut self, m: f32) {
        if m > self.m {
            if self.m != f32::NEG_INFINITY {
                let scale = fast_exp(self.m - m);
                for l in 0..LANES {
                    self.s[l] *= scale;
                    self.w[l] *= scale;
                }
            }
            self.m = m;
        }
    }

    /// Fold in the logits `block` = vocabulary entries `[first, first + len)`;
    /// `target` is the row's target token id.
    #[inline]
    pub fn update(&mut self, block: &[f32], first: usize, target: usize) {
        if target >= first && target < first + block.len() {
            self.target = Some(block[target - first]);
        }
        let bm = block_max(block);
        self.rescale_to(bm);
        let m = self.m;
        if let Some(top) = &mut self.top {
            if bm > top.floor {
                for &z in block {
                    if z > top.floor {
                        top.push(z);
                    }
                }
            }
            fold_exp_and_weighted(&mut self.s, &mut self.w, block, m);
        } else {
            fold_exp(&mut self.s, block, m);
        }
    }

    /// Combine with the state of a disjoint slice of the same row.
    pub fn merge(&mut self, other: &RowAccum) {
        if other.m == f32::NEG_INFINITY {
            return;
        }
        let mut o = other.clone();
        let m = self.m.max(o.m);
        self.rescale_to(m);
        o.rescale_to(m);
        for l in 0..LANES {
            self.s[l] += o.s[l];
            self.w[l] += o.w[l];
        }
        if let (Some(a), Some(b)) = (&mut self.top, &mut o.top) {
            b.flush();
            for &v in &b.vals[..b.len] {
                a.push(v);
            }
        }
        if o.target.is_some() {
            self.target = o.target;
        }
    }

    /// The row's outputs; entropy and top-mean are NaN for a reference-only
    /// state, and everything is NaN if the target was never seen.
    pub fn finish(&self) -> RowStats {
        let sum: f64 = self.s.iter().map(|&x| x as f64).sum();
        let wsum: f64 = self.w.iter().map(|&x| x as f64).sum();
        let lse = self.m as f64 + sum.ln();
        let (entropy, top_mean) = match &self.top {
            Some(top) => {
                let (vals, len) = top.kept();
                let k = len.max(1);
                let mean = vals[..len].iter().map(|&x| x as f64).sum::<f64>() / k as f64;
                ((lse - wsum / sum) as f32, (mean - lse) as f32)
            }
            None => (f32::NAN, f32::NAN),
        };
        RowStats {
            logp: self.target.map_or(f32::NAN, |t| (t as f64 - lse) as f32),
            entropy,
            top_mean,
        }
    }
}

crate::dispatch! {
    /// The largest logit of a block.
    fn block_max(block: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in lanes.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
    }
}

crate::dispatch! {
    /// `s[l] += e^(z − m)` and `w[l] += e^(z − m)·z` over the block, lane `l`
    /// taking every `LANES`-th entry (the order every level sums in).
    #[allow(clippy::needless_range_loop)] // lane loops index three arrays in step
    fn fold_exp_and_weighted(s: &mut [f32; LANES], w: &mut [f32; LANES], block: &[f32], m: f32) {
        let mut lanes = block.chunks_exact(LANES);
        for c in &mut lanes {
            for l in 0..LANES {
                let e = fast_exp(c[l] - m);
                s[l] += e;
                w[l] = e.mul_add(c[l], w[l]);
            }
        }
        for (l, &z) in lanes.remainder().iter().enumerate() {
            let e = fast_exp(z - m);
            s[l] += e;
            w[l] = e.mul_add(z, w[l]);
        }
    }
}

crate::dispatch! {
    /// `s[l] += e^(z − m)` over the block (the reference needs only the normaliser).
    #[allow(clippy::needless_range_loop)]
    fn fold_exp(s: &mut [f32; LANES], block: &[f32], m: f32) {
        let mut lanes = block.chunks_exact(LANES);
        for c in &mut lanes {
            for l in 0..LANES {
                s[l] += fast_exp(c[l] - m);
            }
        }
        for (l, &z) in lanes.remainder().iter().enumerate() {
            s[l] += fast_exp(z - m);
        }
    }
}

/// One pass over `row` (the logits of one position over the vocabulary).
pub fn row_stats(row: &[f32], target: usize) -> RowStats {
    let mut acc = RowAccum::new(true);
    for (i, block) in row.chunks(BLOCK).enumerate() {
        acc.update(block, i * BLOCK, target);
    }
    acc.finish()
}

/// Only the target log-prob (the reference model needs nothing else).
pub fn row_logp(row: &[f32], target: usize) -> f32 {
    let mut acc = RowAccum::new(false);
    for (i, block) in row.chunks(BLOCK).enumerate() {
        acc.update(block, i * BLOCK, target);
    }
    acc.finish().logp
}

/// The unfused baseline: materialise the full log-softmax row in f32, gather,
/// then compute entropy and top-k from the stored row. Used by tests (as an
/// independent twin) and by the benches (fused vs unfused).
pub fn naive_row_stats(row: &[f32], target: usize) -> RowStats {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&z| ((z - m) as f64).exp()).sum();
    let lse = m as f64 + sum.ln();
    let logsm: Vec<f32> = row.iter().map(|&z| (z as f64 - lse) as f32).collect();
    let entropy: f64 = -logsm
        .iter()
        .map(|&l| (l as f64).exp() * l as f64)
        .sum::<f64>();
    let mut sorted = logsm.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = TOP_K.min(sorted.len());
    let top_mean = sorted[..k].iter().map(|&x| x as f64).sum::<f64>() / k as f64;
    RowStats {
        logp: logsm[target],
        entropy: entropy as f32,
        top_mean: top_mean as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn fast_exp_matches_std_exp_to_a_few_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "x={x} fast={a} std={b}");
            x += 0.0137;
        }
    }

    #[test]
    fn fused_row_stats_equal_the_materialised_log_softmax() {
        for (n, seed, scale) in [
            (7, 1, 3.0),
            (513, 2, 20.0),
            (151_936, 3, 30.0),
            (4099, 4, 0.01),
        ] {
            let mut row = lcg_row(n, seed, scale);
            // A late maximum forces the online rescale path.
            row[n - 1] = scale;
            for target in [0, n / 2, n - 1] {
                let f = row_stats(&row, target);
                let r = naive_row_stats(&row, target);
                assert!((f.logp - r.logp).abs() < 2e-5, "{n}: {f:?} vs {r:?}");
                assert!(
                    (f.entropy - r.entropy).abs() < 2e-5 * r.entropy.abs().max(1.0),
                    "{n}: {f:?} vs {r:?}"
                );
                assert!(
                    (f.top_mean - r.top_mean).abs() < 2e-5,
                    "{n}: {f:?} vs {r:?}"
                );
                assert!((row_logp(&row, target) - r.logp).abs() < 2e-5);
            }
        }
    }

    #[test]
    fn merged_partial_rows_equal_one_pass_over_the_row() {
        let row = lcg_row(5000, 9, 12.0);
        let target = 4321;
        let whole = row_stats(&row, target);
        // Slices fed out of order into two accumulators, then merged.
        let (mut a, mut b) = (RowAccum::new(true), RowAccum::new(true));
        for (i, block) in row.chunks(128).enumerate().rev() {
            if i % 2 == 0 {
                a.update(block, i * 128, target)
            } else {
                b.update(block, i * 128, target)
            }
        }
        b.merge(&a);
        let m = b.finish();
        assert!((m.logp - whole.logp).abs() < 1e-5, "{m:?} vs {whole:?}");
        assert!((m.entropy - whole.entropy).abs() < 1e-5);
        assert!((m.top_mean - whole.top_mean).abs() < 1e-5);
    }

    #[test]
    fn top_k_keeps_the_largest_values_across_flushes_with_ties() {
        // 5,000 values with many repeats, pushed in a scrambled order: the
        // kept multiset is the sorted list's top TOP_K, pending or flushed.
        for n in [7usize, TOP_K, PENDING + 3, 5000] {
            let vals: Vec<f32> = (0..n).map(|i| ((i * 7919) % 997) as f32 / 8.0).collect();
            let mut top = TopK::new();
            for &v in &vals {
                top.push(v);
            }
            let (kept, len) = top.kept();
            let mut got = kept[..len].to_vec();
            got.sort_by(f32::total_cmp);
            let mut want = vals.clone();
            want.sort_by(f32::total_cmp);
            let want = want[n.saturating_sub(TOP_K)..].to_vec();
            assert_eq!(got, want, "{n} values");
        }
    }

    #[test]
    fn top_mean_averages_all_entries_when_the_row_is_shorter_than_k() {
        let row = [0.0f32, 0.0];
        let f = row_stats(&row, 0);
        assert!((f.top_mean - (0.5f32).ln()).abs() < 1e-6);
        assert!((f.entropy - (2.0f32).ln()).abs() < 1e-6);
    }
}
