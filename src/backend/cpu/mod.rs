//! The CPU backend: the reference implementation of every op, multithreaded
//! with rayon, f32 compute over weights kept in their stored dtype.
//!
//! Pair scoring runs each model's forward over a packed batch, then streams
//! the LM head in token chunks (only at positions whose log-prob is asked
//! for) through the fused row scorer, so peak memory is
//! `O(chunk × vocab)`, never `O(T × vocab)`.

pub mod forward;
pub mod gemm;
pub mod ops;

use std::sync::Arc;

use rayon::prelude::*;

use self::forward::{Packed, forward_hidden};
use self::gemm::matmul_wt;
use self::ops::RopeTable;
use super::{PairScorer, SeqRequest};
use crate::Result;
use crate::model::Model;
use crate::score::TokenScores;
use crate::score::fused::{row_logp, row_stats};

/// Floats of logits per model held at once while scoring (≈ 32 MB).
const LOGIT_BUDGET: usize = 8 << 20;

pub struct CpuPair {
    policy: Arc<Model>,
    reference: Arc<Model>,
    rope_policy: RopeTable,
    rope_reference: RopeTable,
}

impl CpuPair {
    pub fn new(policy: Arc<Model>, reference: Arc<Model>) -> CpuPair {
        let max_pos = |m: &Model| m.config.max_position_embeddings.clamp(1, 1 << 17);
        CpuPair {
            rope_policy: RopeTable::new(&policy.config.rope_inv_freq(), max_pos(&policy)),
            rope_reference: RopeTable::new(&reference.config.rope_inv_freq(), max_pos(&reference)),
            policy,
            reference,
        }
    }
}

impl PairScorer for CpuPair {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn score(&mut self, batch: &[SeqRequest]) -> Result<Vec<TokenScores>> {
        let mut tokens = Vec::new();
        let mut seqs = Vec::with_capacity(batch.len());
        for r in batch {
            seqs.push(Packed {
                start: tokens.len(),
                len: r.token_ids.len(),
            });
            tokens.extend_from_slice(&r.token_ids);
        }
        let hp = forward_hidden(&self.policy, &self.rope_policy, &tokens, &seqs)?;
        let hr = forward_hidden(&self.reference, &self.rope_reference, &tokens, &seqs)?;

        // (sequence, position t ≥ 1) pairs to score; row t−1 predicts token t.
        let mut wanted: Vec<(usize, usize)> = Vec::new();
        for (si, r) in batch.iter().enumerate() {
            for t in 1..r.token_ids.len() {
                if r.score_mask
                    .as_ref()
                    .is_none_or(|m| m.get(t).copied().unwrap_or(false))
                {
                    wanted.push((si, t));
                }
            }
        }
        let mut out: Vec<TokenScores> = batch
            .iter()
            .map(|r| TokenScores::new_nan(r.token_ids.len()))
            .collect();
        let pw = self.policy.bind();
        let rw = self.reference.bind();
        let h = self.policy.config.hidden_size;
        let hr_dim = self.reference.config.hidden_size;
        let vocab = self.policy.config.vocab_size;
        let chunk = (LOGIT_BUDGET / vocab).clamp(8, 512);
        let mut xp = vec![0.0f32; chunk * h];
        let mut xr = vec![0.0f32; chunk * hr_dim];
        let mut lp = vec![0.0f32; chunk * vocab];
        let mut lr = vec![0.0f32; chunk * vocab];
        for part in wanted.chunks(chunk) {
            let n = part.len();
            for (i, &(si, t)) in part.iter().enumerate() {
                let row = seqs[si].start + t - 1;
                xp[i * h..(i + 1) * h].copy_from_slice(&hp[row * h..(row + 1) * h]);
                xr[i * hr_dim..(i + 1) * hr_dim]
                    .copy_from_slice(&hr[row * hr_dim..(row + 1) * hr_dim]);
            }
            matmul_wt(&xp[..n * h], n, &pw.lm_head, &mut lp, vocab, false);
            matmul_wt(&xr[..n * hr_dim], n, &rw.lm_head, &mut lr, vocab, false);
            let stats: Vec<_> = part
                .par_iter()
                .enumerate()
                .map(|(i, &(si, t))| {
                    let target = batch[si].token_ids[t] as usize;
                    let p = row_stats(&lp[i * vocab..(i + 1) * vocab], target);
                    let r = row_logp(&lr[i * vocab..(i + 1) * vocab], target);
                    (p, r)
                })
                .collect();
            for (&(si, t), (p, r)) in part.iter().zip(stats) {
                let o = &mut out[si];
                o.logp_policy[t] = p.logp;
                o.logp_reference[t] = r;
                o.entropy_policy[t] = p.entropy;
                o.self_certainty[t] = p.top_mean;
            }
        }
        Ok(out)
    }
}
