//! The CPU backend: the reference implementation of every op, multithreaded
//! with rayon, f32 compute over weights kept in their stored dtype.
//!
//! Pair scoring runs each model's forward over a packed batch, then runs the
//! LM head only at positions whose log-prob is asked for, folded tile by tile
//! into the fused row statistics (`lm_head`), so no `[T × vocab]` logits are
//! ever held.
//!
//! With the prefix cache on ([`crate::kv`]), a batch is sorted by tokens and
//! run in waves: each wave forwards only the tokens after every sequence's
//! cached prefix, writes the new full blocks' K/V (recurrent snapshots for
//! DeltaNet layers), last hidden states and token scores into the cache, and takes the scores of cached positions from
//! it, so that the cost of a request is proportional to its new tokens.

pub mod attention;
pub mod delta_rule;
pub mod deltanet;
pub mod embed;
pub mod forward;
pub mod gemm;
mod gemm_portable;
pub mod lm_head;
pub mod mixer;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod profile;
pub mod rope;

use std::sync::Arc;

use self::forward::{KvBatch, Packed, SeqKv, check_tokens, forward_hidden_kv};
use self::lm_head::lm_head_stats;
use self::rope::Ropes;
use super::{PairScorer, SeqRequest};
use crate::kv::cache::wanted;
use crate::kv::{Admitted, BlockId, CacheStats, KvOptions, PairCache};
use crate::model::Model;
use crate::score::TokenScores;
use crate::{Error, Result};

/// The two models and their RoPE tables.
struct Models {
    policy: Arc<Model>,
    reference: Arc<Model>,
    rope_policy: Ropes,
    rope_reference: Ropes,
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
            },
            cache: None,
            kv_opts: None,
            counters: CacheStats::default(),
        }
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

/// Where the hidden state predicting a wanted position comes from.
enum Row {
    /// Row of this wave's forward output.
    New(usize),
    /// Last-token hidden state of a cached block (the first new position).
    Boundary(BlockId),
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
        let past = |a: &Admitted| a.hit.len() * bs;
        let mut tokens = Vec::new();
        let mut seqs = Vec::with_capacity(wave.len());
        for a in wave {
            let ids = &batch[a.seq].token_ids[past(a)..];
            seqs.push(Packed {
                start: tokens.len(),
                len: ids.len(),
            });
            tokens.extend_from_slice(ids);
        }
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
                forward_hidden_kv(m.0, m.1, &tokens, &seqs, None)?,
            )
        } else {
            let m = (&self.policy, &self.rope_policy);
            let kv = cache.as_deref_mut().map(|c| KvBatch {
                store: &mut c.policy,
                seqs: &kv_seqs,
            });
            let hp = forward_hidden_kv(m.0, m.1, &tokens, &seqs, kv)?;
            let m = (&self.reference, &self.rope_reference);
            let kv = cache.as_deref_mut().map(|c| KvBatch {
                store: &mut c.reference,
                seqs: &kv_seqs,
            });
            (hp, forward_hidden_kv(m.0, m.1, &tokens, &seqs, kv)?)
        };
        let (h_p, h_r) = (
            self.policy.config.hidden_size,
            self.reference.config.hidden_size,
        );
        // The row before every filled block's successor: its last token.
        if let Some(c) = cache.as_deref_mut() {
            for (a, s) in wave.iter().zip(&seqs) {
                for (j, &id) in a.fill.iter().enumerate() {
                    let row = s.start + (j + 1) * bs - 1;
                    c.policy
                        .last_hidden_mut(id)
                        .copy_from_slice(&hp[row * h_p..(row + 1) * h_p]);
                    c.reference
                        .last_hidden_mut(id)
                        .copy_from_slice(&hr[row * h_r..(row + 1) * h_r]);
                }
            }
        }

        // (wave member, position t ≥ 1, source of the row predicting t).
        let mut wanted_rows: Vec<(usize, usize, Row)> = Vec::new();
        for (wi, a) in wave.iter().enumerate() {
            let r = &batch[a.seq];
            let p = past(a);
            for t in (1..r.token_ids.len()).filter(|&t| wanted(r, t)) {
                if t < p {
                    let c = cache.as_deref().expect("a prefix implies a cache");
                    let [lp, lr, ent, sc] = c.score(a.hit[t / bs], t % bs);
                    let o = &mut out[a.seq];
                    o.logp_policy[t] = lp;
                    o.logp_reference[t] = lr;
                    o.entropy_policy[t] = ent;
                    o.self_certainty[t] = sc;
                } else if t == p {
                    wanted_rows.push((wi, t, Row::Boundary(a.hit[p / bs - 1])));
                } else {
                    wanted_rows.push((wi, t, Row::New(seqs[wi].start + t - 1 - p)));
                }
            }
        }
        let gather = |hidden: &[f32], h: usize, store: Option<&crate::kv::ModelKv>| {
            let mut x = Vec::with_capacity(wanted_rows.len() * h);
            for (_, _, row) in &wanted_rows {
                match *row {
                    Row::New(r) => x.extend_from_slice(&hidden[r * h..(r + 1) * h]),
                    Row::Boundary(id) => x.extend_from_slice(
                        store.expect("a prefix implies a cache").last_hidden(id),
                    ),
                }
            }
            x
        };
        let targets: Vec<u32> = wanted_rows
            .iter()
            .map(|&(wi, t, _)| batch[wave[wi].seq].token_ids[t])
            .collect();
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
            lm_head_stats(&xp, wanted_rows.len(), &pw.lm_head, &targets, true, cap_p)
        } else {
            Vec::new()
        };
        drop(xp);
        let xr = gather(&hr, h_r, cache.as_deref().map(|c| &c.reference));
        drop(hr);
        let rs = lm_head_stats(&xr, wanted_rows.len(), &rw.lm_head, &targets, false, cap_r);
        if !with_policy {
            for (&(wi, t, _), r) in wanted_rows.iter().zip(rs) {
                out[wave[wi].seq].logp_reference[t] = r.logp;
            }
            return Ok(());
        }
        for ((&(wi, t, _), p), r) in wanted_rows.iter().zip(ps).zip(rs) {
            let a = &wave[wi];
            let o = &mut out[a.seq];
            o.logp_policy[t] = p.logp;
            o.logp_reference[t] = r.logp;
            o.entropy_policy[t] = p.entropy;
            o.self_certainty[t] = p.top_mean;
            if let Some(c) = cache.as_deref_mut() {
                // Keep the score in the filled block holding position t.
                if let Some(&id) = (t / bs)
                    .checked_sub(a.hit.len())
                    .and_then(|j| a.fill.get(j))
                {
                    c.set_score(id, t % bs, [p.logp, r.logp, p.entropy, p.top_mean]);
                }
            }
        }
        Ok(())
    }
}

impl PairScorer for CpuPair {
    fn describe(&self) -> String {
        format!(
            "cpu ({} kernels, {} threads)",
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
            self.counters.computed_tokens +=
                batch.iter().map(|r| r.token_ids.len() as u64).sum::<u64>();
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

/// Every request as a wave member with nothing cached.
fn uncached(batch: &[SeqRequest]) -> Vec<Admitted> {
    (0..batch.len())
        .map(|seq| Admitted {
            seq,
            hit: Vec::new(),
            fill: Vec::new(),
        })
        .collect()
}

fn nan_scores(batch: &[SeqRequest]) -> Vec<TokenScores> {
    batch
        .iter()
        .map(|r| TokenScores::new_nan(r.token_ids.len()))
        .collect()
}

impl CpuPair {
    fn check_batch(&self, batch: &[SeqRequest]) -> Result<()> {
        let max_pos = self.models.rope_policy.max_pos();
        for r in batch {
            check_tokens(&self.models.policy, &r.token_ids)?;
            if r.token_ids.len() > max_pos {
                return Err(Error::Backend(format!(
                    "sequence of {} tokens is longer than the RoPE table ({max_pos})",
                    r.token_ids.len()
                )));
            }
        }
        Ok(())
    }

    fn score_here(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        self.check_batch(batch)?;
        let mut out = nan_scores(batch);
        let Some(cache) = self.cache.as_mut() else {
            self.counters.computed_tokens +=
                batch.iter().map(|r| r.token_ids.len() as u64).sum::<u64>();
            self.models
                .score_wave(None, batch, &uncached(batch), &mut out, true)?;
            return Ok(out);
        };
        // Sorted by tokens, sequences sharing a prefix are neighbours; each
        // wave computes a shared prefix once and the next one hits it.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].token_ids.cmp(&batch[b].token_ids));
        while !order.is_empty() {
            let (wave, rest) = cache.admit(batch, &order);
            let bs = cache.block_size() as u64;
            for a in &wave {
                let hit = a.hit.len() as u64 * bs;
                self.counters.lookups += 1;
                self.counters.hit_tokens += hit;
                self.counters.computed_tokens += batch[a.seq].token_ids.len() as u64 - hit;
            }
            match self
                .models
                .score_wave(Some(cache), batch, &wave, &mut out, true)
            {
                Ok(()) => cache.commit(batch, &wave),
                Err(e) => {
                    cache.abandon(&wave);
                    return Err(e);
                }
            }
            order = rest;
        }
        Ok(out)
    }
}
