//! The CPU backend: the reference implementation of every op, multithreaded
//! with rayon, f32 compute over weights kept in their stored dtype (or, in
//! bf16 compute mode, the weight GEMMs and the LM head in bf16 with f32
//! accumulation: [`gemm_bf16`]).
//!
//! Pair scoring runs each model's forward over a packed batch, then runs the
//! LM head only at positions whose log-prob is asked for, folded tile by tile
//! into the fused row statistics (`lm_head`), so no `[T × vocab]` logits are
//! ever held.
//!
//! With the prefix cache on ([`crate::kv`]), a batch is sorted by tokens and
//! run in waves ([`super::plan`]: the planning both backends share): each
//! wave forwards only the tokens after every sequence's cached prefix,
//! writes the new full blocks' K/V (recurrent snapshots for DeltaNet
//! layers), last hidden states and token scores into the cache, and takes
//! the scores of cached positions from it, so that the cost of a request is
//! proportional to its new tokens.

pub mod attention;
pub mod delta_rule;
pub mod deltanet;
pub mod embed;
pub mod forward;
pub mod gemm;
pub mod gemm_bf16;
mod gemm_portable;
pub mod lm_head;
pub mod mixer;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod rope;

use std::sync::Arc;

use self::forward::{KvBatch, SeqKv, forward_hidden_kv};
use self::gemm_bf16::Gemm;
use self::lm_head::lm_head_stats;
use self::rope::Ropes;
use super::plan::{self, Row, WavePlan, count_uncached, in_waves, nan_scores, uncached};
use super::{PairScorer, SeqRequest};
use crate::Result;
use crate::kv::{Admitted, CacheStats, KvOptions, PairCache};
use crate::model::Model;
use crate::score::TokenScores;

/// The two models and their RoPE tables.
struct Models {
    policy: Arc<Model>,
    reference: Arc<Model>,
    rope_policy: Ropes,
    rope_reference: Ropes,
    /// The arithmetic of both models' weight GEMMs and LM heads.
    gemm: Gemm,
}

pub struct CpuPair {
    models: Models,
    cache: Option<PairCache>,
    /// The cache's options, to start it afresh when the reference changes.
    kv_opts: Option<KvOptions>,
    /// Token counters (the cache adds its gauges).
    counters: CacheStats,
}

impl CpuPair {
    /// A pair without a prefix cache (see [`CpuPair::with_prefix_cache`]).
    pub fn new(policy: Arc<Model>, reference: Arc<Model>) -> CpuPair {
        CpuPair {
            models: Models {
                rope_policy: Ropes::for_model(&policy.config),
                rope_reference: Ropes::for_model(&reference.config),
                policy,
                reference,
                gemm: Gemm::F32,
            },
            cache: None,
            kv_opts: None,
            counters: CacheStats::default(),
        }
    }

    /// The same pair with its GEMMs in `gemm`'s arithmetic (default f32).
    pub fn with_gemm(mut self, gemm: Gemm) -> CpuPair {
        self.models.gemm = gemm;
        self
    }

    /// The same pair with a prefix cache sized by `opts` (`None`: none).
    pub fn with_prefix_cache(mut self, opts: Option<KvOptions>) -> CpuPair {
        self.set_cache(opts);
        self
    }

    fn set_cache(&mut self, opts: Option<KvOptions>) {
        self.kv_opts = opts;
        let m = &self.models;
        self.cache = opts.map(|o| PairCache::new(&m.policy, &m.reference, o));
    }

    /// The prefix cache, when on.
    pub fn cache(&self) -> Option<&PairCache> {
        self.cache.as_ref()
    }
}

impl Models {
    /// Forward one wave's new tokens through both models (the reference
    /// only without `with_policy`, leaving the policy's fields NaN) and fill
    /// `out` for its requests; with a cache, fill the wave's new blocks too.
    fn score_wave(
        &self,
        mut cache: Option<&mut PairCache>,
        batch: &[SeqRequest],
        wave: &[Admitted],
        out: &mut [TokenScores],
        with_policy: bool,
    ) -> Result<()> {
        assert!(
            with_policy || cache.is_none(),
            "the cache holds both models' blocks"
        );
        let bs = cache.as_ref().map_or(1, |c| c.block_size());
        let plan = WavePlan::new(batch, wave, bs);
        let (tokens, seqs) = (&plan.tokens, &plan.seqs);
        let kv_seqs: Vec<SeqKv> = wave
            .iter()
            .map(|a| SeqKv {
                past: &a.hit,
                fill: &a.fill,
            })
            .collect();
        let (hp, hr) = if tokens.is_empty() {
            (Vec::new(), Vec::new())
        } else if !with_policy {
            let m = (&self.reference, &self.rope_reference);
            (
                Vec::new(),
                forward_hidden_kv(self.gemm, m.0, m.1, tokens, seqs, None)?,
            )
        } else {
            let m = (&self.policy, &self.rope_policy);
            let kv = cache.as_deref_mut().map(|c| KvBatch {
                store: &mut c.policy,
                seqs: &kv_seqs,
            });
            let hp = forward_hidden_kv(self.gemm, m.0, m.1, tokens, seqs, kv)?;
            let m = (&self.reference, &self.rope_reference);
            let kv = cache.as_deref_mut().map(|c| KvBatch {
                store: &mut c.reference,
                seqs: &kv_seqs,
            });
            (
                hp,
                forward_hidden_kv(self.gemm, m.0, m.1, tokens, seqs, kv)?,
            )
        };
        let (h_p, h_r) = (
            self.policy.config.hidden_size,
            self.reference.config.hidden_size,
        );
        if let Some(c) = cache.as_deref_mut() {
            for &(id, row) in &plan.fills {
                c.policy
                    .last_hidden_mut(id)
                    .copy_from_slice(&hp[row * h_p..(row + 1) * h_p]);
                c.reference
                    .last_hidden_mut(id)
                    .copy_from_slice(&hr[row * h_r..(row + 1) * h_r]);
            }
            plan.scatter_cached(out, |id, slot| c.score(id, slot));
        }

        let n = plan.wanted.len();
        let gather = |hidden: &[f32], h: usize, store: Option<&crate::kv::ModelKv>| {
            let mut x = Vec::with_capacity(n * h);
            for w in &plan.wanted {
                match w.row {
                    Row::New(r) => x.extend_from_slice(&hidden[r * h..(r + 1) * h]),
                    Row::Boundary(id) => x.extend_from_slice(
                        store.expect("a prefix implies a cache").last_hidden(id),
                    ),
                }
            }
            x
        };
        let targets = plan.targets(batch);
        let (pw, rw) = (self.policy.bind(), self.reference.bind());
        let xp = if with_policy {
            gather(&hp, h_p, cache.as_deref().map(|c| &c.policy))
        } else {
            Vec::new()
        };
        drop(hp);
        let (cap_p, cap_r) = (
            self.policy.config.final_logit_softcap,
            self.reference.config.final_logit_softcap,
        );
        let ps = if with_policy {
            lm_head_stats(self.gemm, &xp, n, &pw.lm_head, &targets, true, cap_p)
        } else {
            Vec::new()
        };
        drop(xp);
        let xr = gather(&hr, h_r, cache.as_deref().map(|c| &c.reference));
        drop(hr);
        let rs = lm_head_stats(self.gemm, &xr, n, &rw.lm_head, &targets, false, cap_r);
        if !with_policy {
            let stats = rs.iter().map(|r| [f32::NAN, r.logp, f32::NAN, f32::NAN]);
            plan.scatter(out, stats, |_, _, _| {});
            return Ok(());
        }
        let stats = ps
            .iter()
            .zip(&rs)
            .map(|(p, r)| [p.logp, r.logp, p.entropy, p.top_mean]);
        match cache {
            // Keep each score in the filled block holding its position.
            Some(c) => plan.scatter(out, stats, |id, slot, s| c.set_score(id, slot, s)),
            None => plan.scatter(out, stats, |_, _, _| {}),
        }
        Ok(())
    }
}

impl PairScorer for CpuPair {
    fn describe(&self) -> String {
        let gemm = match self.models.gemm {
            Gemm::F32 => String::new(),
            g if g.native() => ", bf16 GEMMs (vdpbf16ps)".to_string(),
            _ => ", bf16 GEMMs (emulated: no AVX512-BF16)".to_string(),
        };
        format!(
            "cpu ({} kernels{gemm}, {} threads)",
            crate::simd::level().name(),
            rayon::current_num_threads()
        )
    }

    fn set_prefix_cache(&mut self, opts: Option<KvOptions>) -> Result<()> {
        self.set_cache(opts);
        Ok(())
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        let gauges = self
            .cache
            .as_ref()
            .map(PairCache::stats)
            .unwrap_or_default();
        Some(CacheStats {
            lookups: self.counters.lookups,
            hit_tokens: self.counters.hit_tokens,
            computed_tokens: self.counters.computed_tokens,
            ..gauges
        })
    }

    fn score(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        // Run the batch on a rayon worker: every parallel op inside then
        // starts from the pool (small ones stay on that thread) instead of
        // this thread sleeping and waking once per op, which cost a quarter
        // of a small model's online step in a profile.
        rayon::scope(|_| self.score_here(batch))
    }

    fn score_reference(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        rayon::scope(|_| {
            self.check_batch(batch)?;
            let mut out = nan_scores(batch);
            count_uncached(&mut self.counters, batch);
            self.models
                .score_wave(None, batch, &uncached(batch), &mut out, false)?;
            Ok(out)
        })
    }

    fn set_reference(&mut self, reference: Arc<Model>) -> Result<()> {
        crate::model::check_pair(&self.models.policy, &reference)?;
        self.models.rope_reference = Ropes::for_model(&reference.config);
        self.models.reference = reference;
        // Cached blocks hold the old reference's K/V and scores.
        self.set_cache(self.kv_opts);
        Ok(())
    }
}

impl CpuPair {
    fn check_batch(&self, batch: &[SeqRequest]) -> Result<()> {
        let m = &self.models;
        plan::check_batch(batch, [&m.policy.config, &m.reference.config])
    }

    fn score_here(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        self.check_batch(batch)?;
        let mut out = nan_scores(batch);
        let models = &self.models;
        let Some(cache) = self.cache.as_mut() else {
            count_uncached(&mut self.counters, batch);
            models.score_wave(None, batch, &uncached(batch), &mut out, true)?;
            return Ok(out);
        };
        in_waves(cache, batch, &mut self.counters, |cache, wave| {
            models.score_wave(Some(cache), batch, wave, &mut out, true)
        })?;
        Ok(out)
    }
}
