//! The CPU backend: the reference implementation of every op, multithreaded
//! with rayon, f32 compute over weights kept in their stored dtype.
//!
//! Pair scoring runs each model's forward over a packed batch, then runs the
//! LM head only at positions whose log-prob is asked for, folded tile by tile
//! into the fused row statistics (`lm_head`), so no `[T × vocab]` logits are
//! ever held.

pub mod forward;
pub mod gemm;
pub mod lm_head;
pub mod ops;

use std::sync::Arc;

use self::forward::{Packed, forward_hidden};
use self::lm_head::lm_head_stats;
use self::ops::RopeTable;
use super::{PairScorer, SeqRequest};
use crate::Result;
use crate::model::Model;
use crate::score::TokenScores;

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
        let gather = |hidden: &[f32], h: usize| -> Vec<f32> {
            let mut x = Vec::with_capacity(wanted.len() * h);
            for &(si, t) in &wanted {
                let row = seqs[si].start + t - 1;
                x.extend_from_slice(&hidden[row * h..(row + 1) * h]);
            }
            x
        };
        let targets: Vec<u32> = wanted
            .iter()
            .map(|&(si, t)| batch[si].token_ids[t])
            .collect();
        let (pw, rw) = (self.policy.bind(), self.reference.bind());
        let xp = gather(&hp, self.policy.config.hidden_size);
        drop(hp);
        let ps = lm_head_stats(&xp, wanted.len(), &pw.lm_head, &targets, true);
        drop(xp);
        let xr = gather(&hr, self.reference.config.hidden_size);
        drop(hr);
        let rs = lm_head_stats(&xr, wanted.len(), &rw.lm_head, &targets, false);
        for ((&(si, t), p), r) in wanted.iter().zip(ps).zip(rs) {
            let o = &mut out[si];
            o.logp_policy[t] = p.logp;
            o.logp_reference[t] = r.logp;
            o.entropy_policy[t] = p.entropy;
            o.self_certainty[t] = p.top_mean;
        }
        Ok(out)
    }
}
