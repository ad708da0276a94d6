//! Fused per-row scoring: one streaming pass over a row of logits gives
//! logsumexp (online max and rescaled sum), the target's log-prob, the
//! entropy and the mean of the top-20 log-probs — no softmax row is ever
//! written. This is the CPU twin of `kernels/fused_logprob.cu`.
//!
//! Entropy uses `H = lse − Σ p·z`, accumulating `Σ e^{z−m}·z` alongside
//! `Σ e^{z−m}` and rescaling both when the running max grows.

/// Number of top log-probs averaged for the self-certainty baseline.
pub const TOP_K: usize = 20;

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

/// Keeps the `TOP_K` largest values seen; `floor` is the smallest kept once full.
struct TopK {
    vals: [f32; TOP_K],
    len: usize,
    floor: f32,
}

impl TopK {
    fn new() -> Self {
        TopK {
            vals: [f32::NEG_INFINITY; TOP_K],
            len: 0,
            floor: f32::NEG_INFINITY,
        }
    }
    #[inline]
    fn push(&mut self, v: f32) {
        if self.len < TOP_K {
            self.vals[self.len] = v;
            self.len += 1;
            if self.len == TOP_K {
                self.floor = self.min_val();
            }
        } else if v > self.floor {
            let i = self.vals.iter().position(|&x| x == self.floor).unwrap_or(0);
            self.vals[i] = v;
            self.floor = self.min_val();
        }
    }
    fn min_val(&self) -> f32 {
        self.vals[..self.len]
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
    }
}

/// One pass over `row` (the logits of one position over the vocabulary).
pub fn row_stats(row: &[f32], target: usize) -> RowStats {
    let mut m = f32::NEG_INFINITY; // running max
    let mut s = [0.0f32; LANES]; // Σ e^{z−m}
    let mut w = [0.0f32; LANES]; // Σ e^{z−m}·z
    let mut top = TopK::new();
    for block in row.chunks(BLOCK) {
        let bm = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if bm > m {
            if m != f32::NEG_INFINITY {
                let scale = fast_exp(m - bm);
                for l in 0..LANES {
                    s[l] *= scale;
                    w[l] *= scale;
                }
            }
            m = bm;
        }
        if bm > top.floor {
            for &z in block {
                if z > top.floor {
                    top.push(z);
                }
            }
        }
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
    let sum: f64 = s.iter().map(|&x| x as f64).sum();
    let wsum: f64 = w.iter().map(|&x| x as f64).sum();
    let lse = m as f64 + sum.ln();
    let k = top.len.max(1);
    let top_mean = top.vals[..top.len].iter().map(|&x| x as f64).sum::<f64>() / k as f64 - lse;
    RowStats {
        logp: (row[target] as f64 - lse) as f32,
        entropy: (lse - wsum / sum) as f32,
        top_mean: top_mean as f32,
    }
}

/// Only the target log-prob (the reference model needs nothing else).
pub fn row_logp(row: &[f32], target: usize) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = [0.0f32; LANES];
    let mut lanes = row.chunks_exact(LANES);
    for c in &mut lanes {
        for l in 0..LANES {
            s[l] += fast_exp(c[l] - m);
        }
    }
    for (l, &z) in lanes.remainder().iter().enumerate() {
        s[l] += fast_exp(z - m);
    }
    let sum: f64 = s.iter().map(|&x| x as f64).sum();
    (row[target] as f64 - (m as f64 + sum.ln())) as f32
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
    fn top_mean_averages_all_entries_when_the_row_is_shorter_than_k() {
        let row = [0.0f32, 0.0];
        let f = row_stats(&row, 0);
        assert!((f.top_mean - (0.5f32).ln()).abs() < 1e-6);
        assert!((f.entropy - (2.0f32).ln()).abs() < 1e-6);
    }
}
