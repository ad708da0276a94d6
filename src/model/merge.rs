//! Merged reference policies π_α = θ_ref + α·τ, τ = θ_policy − θ_ref, as
//! a view: no merged copy of the weights exists. A merged tensor
//! ([`Merged`]) holds the two stored slices, α and a keep rule; widening a
//! range of it ([`Merged::widen_into`], called where compute widens any
//! weight: the GEMM's tile packing, embedding rows, norms) forms the merge
//! in f32 and rounds it to the checkpoint's dtype per element, as the
//! official code writes merged weights into the loaded model.
//!
//! The keep rules need no per-entry storage:
//! - TIES keeps |τ| ≥ a per-tensor threshold, the k-th largest |τ|
//!   (k = max(1, ⌊density·numel⌋), ties kept): one f32 per tensor, found by
//!   a two-pass radix select over the bit patterns of |τ| (16 bits a pass,
//!   histograms only, no numel-sized buffer).
//! - DARE keeps an entry iff a counter-based hash of (seed, tensor name,
//!   flat index) falls below `density`, and rescales it by 1/density: the
//!   same mask on every thread count and backend.
//!
//! The thresholds depend on τ only, so a [`MergePlan`] is built once per
//! pair and every α reuses it ([`crate::model::Model::merged`]).
//!
//! With one policy (padv scores one policy against π_α) sign election is the
//! identity: `dare_ties` equals `dare_linear`, and EMR's unified vector is τ
//! itself with mask 1 and rescale λ = Σ mean|τ| / Σ mean|τ| = 1, so `emr` is
//! θ_ref + α·τ (linear up to rounding). Several policies would need more
//! checkpoints mapped for a merge the progress advantage does not use.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;

use super::Model;
use super::weights::{DType, Data, Stored, Tensor};
use crate::{Error, Result};

/// How the two checkpoints are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMethod {
    Linear,
    Ties,
    DareLinear,
    DareTies,
    Emr,
}

impl MergeMethod {
    pub const ALL: [MergeMethod; 5] = [
        MergeMethod::Linear,
        MergeMethod::Ties,
        MergeMethod::DareLinear,
        MergeMethod::DareTies,
        MergeMethod::Emr,
    ];
    pub fn name(self) -> &'static str {
        match self {
            MergeMethod::Linear => "linear",
            MergeMethod::Ties => "ties",
            MergeMethod::DareLinear => "dare_linear",
            MergeMethod::DareTies => "dare_ties",
            MergeMethod::Emr => "emr",
        }
    }
    /// Whether `density` means anything for this method.
    pub fn uses_density(self) -> bool {
        matches!(
            self,
            MergeMethod::Ties | MergeMethod::DareLinear | MergeMethod::DareTies
        )
    }
}

impl fmt::Display for MergeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MergeMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MergeMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = MergeMethod::ALL.iter().map(|m| m.name()).collect();
                format!("unknown merge method `{s}`; expected {}", names.join(", "))
            })
    }
}

/// The settings of a merged reference.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOptions {
    pub method: MergeMethod,
    /// 0: the reference; 1: the policy (linear).
    pub alpha: f64,
    /// Fraction of τ kept (TIES, DARE), in (0, 1].
    pub density: f64,
    /// DARE's mask seed.
    pub seed: u64,
}

/// The density used when none is given (the official runs' 0.2).
pub const DEFAULT_DENSITY: f64 = 0.2;

impl MergeOptions {
    pub fn new(method: MergeMethod, alpha: f64) -> MergeOptions {
        MergeOptions {
            method,
            alpha,
            density: DEFAULT_DENSITY,
            seed: 0,
        }
    }

    /// α in [0, 1], density in (0, 1].
    pub fn validate(&self) -> Result<()> {
        check_alpha(self.alpha).map_err(|e| Error::input("alpha", e))?;
        check_density(self.density).map_err(|e| Error::input("density", e))?;
        Ok(())
    }

    /// The same settings at another α.
    pub fn at(&self, alpha: f64) -> MergeOptions {
        MergeOptions {
            alpha,
            ..self.clone()
        }
    }

    /// The settings as output records carry them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"method": self.method.name(), "alpha": self.alpha});
        if self.method.uses_density() {
            v["density"] = self.density.into();
        }
        if matches!(self.method, MergeMethod::DareLinear | MergeMethod::DareTies) {
            v["seed"] = self.seed.into();
        }
        v
    }
}

/// α as the CLI and the HTTP API accept it.
pub fn check_alpha(alpha: f64) -> std::result::Result<f64, String> {
    if (0.0..=1.0).contains(&alpha) {
        Ok(alpha)
    } else {
        Err(format!("must be in [0, 1], got {alpha}"))
    }
}

/// The density as the CLI and the HTTP API accept it.
pub fn check_density(density: f64) -> std::result::Result<f64, String> {
    if density > 0.0 && density <= 1.0 {
        Ok(density)
    } else {
        Err(format!("must be in (0, 1], got {density}"))
    }
}

/// Which entries of τ a tensor keeps (fixed per pair, whatever α).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    All,
    /// |τ| ≥ this (TIES).
    AtLeast(f32),
    /// The hash of (key, index) below `density`, rescaled by 1/density (DARE).
    Dare {
        key: u64,
        density: f32,
    },
}

/// How a merged entry is formed from (θ_ref, θ_policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// α·θ_policy + (1 − α)·θ_ref; the pair is (α, 1 − α).
    Linear(f32, f32),
    /// θ_ref + α·kept(τ).
    Delta(f32, Keep),
}

/// A merged tensor: a view over the two stored tensors.
#[derive(Clone, Copy)]
pub struct Merged<'a> {
    pub reference: Stored<'a>,
    pub policy: Stored<'a>,
    /// Elements per row (the policy may have a different row count: a
    /// padded vocabulary, aligned by repeating its last row).
    pub cols: usize,
    pub policy_rows: usize,
    pub rule: Rule,
}

/// Elements merged per step (stack buffers).
const CHUNK: usize = 256;

impl Merged<'_> {
    pub fn len(&self) -> usize {
        self.reference.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        self.reference.dtype()
    }

    /// The policy's entries for the reference's `[start, start + out.len())`,
    /// rows past the policy's last repeating it.
    fn policy_into(&self, start: usize, out: &mut [f32]) {
        if self.policy.len() == self.reference.len() {
            return self.policy.widen_into(start, out);
        }
        let mut done = 0;
        while done < out.len() {
            let i = start + done;
            let (row, col) = (i / self.cols, i % self.cols);
            let n = (self.cols - col).min(out.len() - done);
            let prow = row.min(self.policy_rows - 1);
            self.policy
                .widen_into(prow * self.cols + col, &mut out[done..done + n]);
            done += n;
        }
    }

    /// τ = θ_policy − θ_ref in f32 for `[start, start + out.len())`.
    fn tau_into(&self, start: usize, out: &mut [f32]) {
        let mut r = [0f32; CHUNK];
        for (c, o) in out.chunks_mut(CHUNK).enumerate() {
            let s = start + c * CHUNK;
            let r = &mut r[..o.len()];
            self.reference.widen_into(s, r);
            self.policy_into(s, o);
            for (o, r) in o.iter_mut().zip(r.iter()) {
                *o -= *r;
            }
        }
    }

    /// Widen `[start, start + out.len())` of the merged tensor into `out`:
    /// formed in f32, rounded to the checkpoint's dtype.
    pub fn widen_into(&self, start: usize, out: &mut [f32]) {
        let mut p = [0f32; CHUNK];
        let dtype = self.dtype();
        for (c, o) in out.chunks_mut(CHUNK).enumerate() {
            let s = start + c * CHUNK;
            let p = &mut p[..o.len()];
            self.reference.widen_into(s, o);
            self.policy_into(s, p);
            match self.rule {
                Rule::Linear(a, b) => {
                    for (o, &p) in o.iter_mut().zip(p.iter()) {
                        *o = a * p + b * *o;
                    }
                }
                Rule::Delta(a, Keep::All) => {
                    for (o, &p) in o.iter_mut().zip(p.iter()) {
                        *o += a * (p - *o);
                    }
                }
                Rule::Delta(a, Keep::AtLeast(t)) => {
                    for (o, &p) in o.iter_mut().zip(p.iter()) {
                        let tau = p - *o;
                        *o += a * if tau.abs() >= t { tau } else { 0.0 };
                    }
                }
                Rule::Delta(a, Keep::Dare { key, density }) => {
                    for (i, (o, &p)) in o.iter_mut().zip(p.iter()).enumerate() {
                        let tau = if dare_keeps(key, (s + i) as u64, density) {
                            (p - *o) / density
                        } else {
                            0.0
                        };
                        *o += a * tau;
                    }
                }
            }
            dtype.round(o);
        }
    }
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// DARE's per-tensor key: the seed and the tensor's name (FNV-1a).
pub fn dare_key(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    mix(seed ^ mix(fnv))
}

/// Whether DARE keeps entry `index` of the tensor keyed `key`: 24 bits of
/// a counter-based hash (the SplitMix64 stream started at `key`, at
/// position `index`) as a uniform in [0, 1), below `density`.
#[inline]
pub fn dare_keeps(key: u64, index: u64, density: f32) -> bool {
    let state = key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let u = (mix(state) >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
    u < density
}

/// The k-th largest |τ| of a merged view (ties at it are kept by `≥`):
/// two 16-bit histogram passes over the bit patterns of |τ| (for
/// non-negative floats, bit order is value order).
fn kth_largest_abs_tau(m: &Merged, k: usize) -> f32 {
    const BLOCK: usize = 1 << 16;
    let n = m.len();
    let hist = |select: &(dyn Fn(u32) -> Option<usize> + Sync)| -> Vec<u64> {
        (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .fold(
                || (vec![0u64; 1 << 16], vec![0f32; BLOCK]),
                |(mut h, mut buf), b| {
                    let s = b * BLOCK;
                    let buf_n = &mut buf[..BLOCK.min(n - s)];
                    m.tau_into(s, buf_n);
                    for t in buf_n.iter() {
                        if let Some(bin) = select(t.to_bits() & 0x7fff_ffff) {
                            h[bin] += 1;
                        }
                    }
                    (h, buf)
                },
            )
            .map(|(h, _)| h)
            .reduce(
                || vec![0u64; 1 << 16],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    };
    // The bin holding the k-th largest, counting from the top, and the rank left inside it.
    let find = |h: &[u64], k: u64| -> (usize, u64) {
        let mut seen = 0u64;
        for bin in (0..h.len()).rev() {
            if seen + h[bin] >= k {
                return (bin, k - seen);
            }
            seen += h[bin];
        }
        (0, 1)
    };
    let (high, rest) = find(&hist(&|b| Some((b >> 16) as usize)), k as u64);
    let high = high as u32;
    let (low, _) = find(
        &hist(&|b| ((b >> 16) == high).then_some((b & 0xffff) as usize)),
        rest,
    );
    f32::from_bits((high << 16) | low as u32)
}

/// Per tensor: the policy's shape and the keep rule.
#[derive(Debug, Clone)]
struct TensorPlan {
    policy_shape: Vec<usize>,
    keep: Keep,
}

/// The α-independent part of a merge: the policy, the method and every
/// tensor's keep rule (TIES thresholds found once here).
pub struct MergePlan {
    policy: Arc<Model>,
    method: MergeMethod,
    density: f64,
    seed: u64,
    tensors: HashMap<String, TensorPlan>,
}

impl MergePlan {
    /// Check that every tensor of `reference` has a policy counterpart of
    /// the same shape (a vocabulary-padded embedding or LM head may differ
    /// in rows), and find each tensor's keep rule.
    pub fn new(reference: &Model, policy: Arc<Model>, opts: &MergeOptions) -> Result<MergePlan> {
        opts.validate()?;
        if let Some(d) = policy.config.network_difference(&reference.config) {
            return Err(Error::Incompatible(format!(
                "cannot merge the policy {} into the reference {}: their config.json describe \
                 different networks ({d}, policy against reference); a merged reference runs \
                 the reference's network with merged weights, so both must describe the same one",
                policy.dir.display(),
                reference.dir.display()
            )));
        }
        let rw = reference.bind_stored();
        let vocab_rows: Vec<&str> = vec![rw.embed.name, rw.lm_head.name];
        let mut plan = MergePlan {
            policy: policy.clone(),
            method: opts.method,
            density: opts.density,
            seed: opts.seed,
            tensors: HashMap::new(),
        };
        for t in rw.all() {
            if plan.tensors.contains_key(t.name) {
                continue;
            }
            let Some(pshape) = policy.weights.shape(t.name) else {
                return Err(Error::tensor(
                    &policy.dir,
                    t.name,
                    "missing from the policy: every reference tensor is merged with the \
                     policy's tensor of the same name",
                ));
            };
            let padded = vocab_rows.contains(&t.name)
                && pshape.len() == t.shape.len()
                && pshape[1..] == t.shape[1..]
                && pshape[0] > 0;
            if pshape != t.shape && !padded {
                return Err(Error::tensor(
                    &policy.dir,
                    t.name,
                    format!(
                        "shape {pshape:?} in the policy, {:?} in the reference: cannot merge",
                        t.shape
                    ),
                ));
            }
            let pshape = pshape.to_vec();
            let ptensor = policy.weights.get(t.name, &pshape)?;
            let view = merged_view(t, &ptensor, Rule::Delta(1.0, Keep::All));
            let keep = match opts.method {
                MergeMethod::Linear | MergeMethod::Emr => Keep::All,
                MergeMethod::Ties => {
                    let n = view.len();
                    let k = ((opts.density * n as f64).floor() as usize).clamp(1, n.max(1));
                    Keep::AtLeast(kth_largest_abs_tau(&view, k))
                }
                MergeMethod::DareLinear | MergeMethod::DareTies => Keep::Dare {
                    key: dare_key(opts.seed, t.name),
                    density: opts.density as f32,
                },
            };
            plan.tensors.insert(
                t.name.to_string(),
                TensorPlan {
                    policy_shape: pshape,
                    keep,
                },
            );
        }
        Ok(plan)
    }

    /// Whether `opts` can reuse this plan (everything but α equal).
    pub fn fits(&self, opts: &MergeOptions) -> bool {
        self.method == opts.method
            && (!opts.method.uses_density() || self.density == opts.density)
            && self.seed == opts.seed
    }

    pub fn policy(&self) -> &Arc<Model> {
        &self.policy
    }

    /// Tensor `t` of the reference merged at α.
    pub fn view<'a>(&'a self, t: Tensor<'a>, alpha: f64) -> Result<Tensor<'a>> {
        let plan = self
            .tensors
            .get(t.name)
            .ok_or_else(|| Error::tensor(&self.policy.dir, t.name, "not in the merge plan"))?;
        let p = self.policy.weights.get(t.name, &plan.policy_shape)?;
        let a = alpha as f32;
        let rule = match self.method {
            MergeMethod::Linear => Rule::Linear(a, (1.0 - alpha) as f32),
            _ => Rule::Delta(a, plan.keep),
        };
        Ok(Tensor {
            data: Data::Merged(merged_view(&t, &p, rule)),
            ..t
        })
    }

    /// The keep rule of tensor `name` (tests, diagnostics).
    pub fn keep(&self, name: &str) -> Option<Keep> {
        self.tensors.get(name).map(|p| p.keep)
    }
}

fn merged_view<'a>(r: &Tensor<'a>, p: &Tensor<'a>, rule: Rule) -> Merged<'a> {
    let cols: usize = r.shape[1..].iter().product();
    Merged {
        reference: r.data.stored().expect("a checkpoint tensor is stored"),
        policy: p.data.stored().expect("a checkpoint tensor is stored"),
        cols: cols.max(1),
        policy_rows: p.shape.first().copied().unwrap_or(1).max(1),
        rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(r: &'a [f32], p: &'a [f32], cols: usize, rule: Rule) -> Merged<'a> {
        Merged {
            reference: Stored::F32(r),
            policy: Stored::F32(p),
            cols,
            policy_rows: p.len() / cols,
            rule,
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (mix(seed ^ mix(i as u64)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    #[test]
    fn radix_select_finds_the_kth_largest_magnitude() {
        let r = noise(200_003, 1);
        let mut p = noise(200_003, 2);
        // Ties at the threshold and a few equal magnitudes of both signs.
        for i in 0..50 {
            p[i * 7] = r[i * 7] + 0.25;
            p[i * 7 + 1] = r[i * 7 + 1] - 0.25;
        }
        let m = view(&r, &p, 1, Rule::Delta(1.0, Keep::All));
        let mut tau: Vec<f32> = r.iter().zip(&p).map(|(r, p)| (p - r).abs()).collect();
        tau.sort_by(|a, b| b.total_cmp(a));
        for k in [1, 2, 40_000, 123_456, 200_003] {
            assert_eq!(kth_largest_abs_tau(&m, k), tau[k - 1], "k = {k}");
        }
    }

    #[test]
    fn dare_keeps_about_density_of_each_tensor_and_is_deterministic() {
        let n = 100_000usize;
        for (name, density) in [("a.weight", 0.2f32), ("b.weight", 0.5), ("c", 0.9)] {
            let key = dare_key(7, name);
            let kept = (0..n as u64)
                .filter(|&i| dare_keeps(key, i, density))
                .count();
            let (mean, sd) = (
                n as f64 * density as f64,
                (n as f64 * density as f64 * (1.0 - density as f64)).sqrt(),
            );
            assert!(
                (kept as f64 - mean).abs() <= 3.0 * sd,
                "{name}: kept {kept} of {n} at density {density}"
            );
            let again = (0..n as u64)
                .filter(|&i| dare_keeps(dare_key(7, name), i, density))
                .count();
            assert_eq!(kept, again);
        }
        // Another seed or name gives another mask.
        let mask = |key| {
            (0..64u64)
                .map(|i| dare_keeps(key, i, 0.5))
                .collect::<Vec<_>>()
        };
        assert_ne!(mask(dare_key(7, "a")), mask(dare_key(8, "a")));
        assert_ne!(mask(dare_key(7, "a")), mask(dare_key(7, "b")));
    }

    #[test]
    fn widening_matches_the_formulas_at_any_offset() {
        let (r, p) = (noise(1000, 3), noise(1000, 4));
        let t = 0.3f32;
        for rule in [
            Rule::Linear(0.3, 0.7),
            Rule::Delta(0.6, Keep::All),
            Rule::Delta(0.6, Keep::AtLeast(t)),
            Rule::Delta(
                0.6,
                Keep::Dare {
                    key: 5,
                    density: 0.2,
                },
            ),
        ] {
            let m = view(&r, &p, 10, rule);
            let want: Vec<f32> = (0..1000)
                .map(|i| {
                    let (r, p) = (r[i], p[i]);
                    match rule {
                        Rule::Linear(a, b) => a * p + b * r,
                        Rule::Delta(a, Keep::All) => r + a * (p - r),
                        Rule::Delta(a, Keep::AtLeast(t)) => {
                            r + a * if (p - r).abs() >= t { p - r } else { 0.0 }
                        }
                        Rule::Delta(a, Keep::Dare { key, density }) => {
                            let keep = dare_keeps(key, i as u64, density);
                            r + a * if keep { (p - r) / density } else { 0.0 }
                        }
                    }
                })
                .collect();
            for start in [0, 1, 63, 64, 517] {
                let mut got = vec![0f32; 1000 - start];
                m.widen_into(start, &mut got);
                assert_eq!(got, want[start..], "{rule:?} from {start}");
            }
        }
    }

    #[test]
    fn a_policy_with_fewer_rows_repeats_its_last_row() {
        let r = noise(5 * 4, 5);
        let p = noise(3 * 4, 6);
        let m = view(&r, &p, 4, Rule::Linear(1.0, 0.0));
        let mut got = vec![0f32; 20];
        m.widen_into(0, &mut got);
        assert_eq!(got[..12], p[..]);
        assert_eq!(got[12..16], p[8..12]);
        assert_eq!(got[16..20], p[8..12]);
    }

    #[test]
    fn bf16_merges_round_to_bf16() {
        let r: Vec<half::bf16> = noise(64, 7).into_iter().map(half::bf16::from_f32).collect();
        let p: Vec<half::bf16> = noise(64, 8).into_iter().map(half::bf16::from_f32).collect();
        let m = Merged {
            reference: Stored::BF16(&r),
            policy: Stored::BF16(&p),
            cols: 64,
            policy_rows: 1,
            rule: Rule::Linear(0.5, 0.5),
        };
        let mut got = vec![0f32; 64];
        m.widen_into(0, &mut got);
        for i in 0..64 {
            let want = 0.5 * p[i].to_f32() + 0.5 * r[i].to_f32();
            assert_eq!(got[i], half::bf16::from_f32(want).to_f32());
        }
    }

    #[test]
    fn bf16_rounding_equals_the_half_crate_on_edge_values() {
        let mut xs = noise(4096, 9);
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::from_bits(0x3f80_8000), // a tie, rounds to even (down)
            f32::from_bits(0x3f81_8000), // a tie, rounds to even (up)
            f32::from_bits(0x7f7f_ffff), // rounds up to infinity
        ]);
        for x in xs {
            let want = half::bf16::from_f32(x).to_f32();
            assert_eq!(
                crate::model::weights::round_bf16(x).to_bits(),
                want.to_bits(),
                "{x:e}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        for (alpha, density) in [(-0.1, 0.2), (1.5, 0.2), (0.5, 0.0), (0.5, 1.2)] {
            let o = MergeOptions {
                density,
                ..MergeOptions::new(MergeMethod::Ties, alpha)
            };
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains("alpha") || e.contains("density"), "{e}");
        }
        assert!(
            "avg"
                .parse::<MergeMethod>()
                .unwrap_err()
                .contains("dare_linear")
        );
    }
}
