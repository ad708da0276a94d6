//! Batch planning shared by the backends: what to check before a forward,
//! which rows to score, where each row's hidden state comes from, and where
//! the results go.
//!
//! A backend scores a batch as one or more waves ([`crate::kv::Admitted`]:
//! a request with its cached prefix `hit` and the blocks it fills). Without
//! a prefix cache the whole batch is one wave with nothing cached
//! ([`uncached`]). For each wave, [`WavePlan::new`] packs the tokens after
//! every member's cached prefix and sorts each wanted position `t` (its
//! log-prob asked for, [`SeqRequest::wants`]) into one of three cases:
//!
//! - inside the cached prefix: its scores are the cache's ([`WavePlan::cached`]);
//! - the first new position: predicted by the last hidden state of the
//!   prefix's last block ([`Row::Boundary`]);
//! - later: predicted by packed row `t − 1 − past` of this wave's forward
//!   ([`Row::New`]).
//!
//! The backend forwards [`WavePlan::tokens`], keeps the last hidden state of
//! every block it filled ([`WavePlan::fills`]), runs the LM head and the
//! fused scorer on the wanted rows in order with [`WavePlan::targets`], and
//! hands the per-row statistics to [`WavePlan::scatter`], which writes the
//! [`TokenScores`] and names the cache slot each new score belongs in.
//! [`in_waves`] drives the waves over a [`PairCache`]: sort by tokens,
//! admit, score, commit (or abandon on error), with the token counters.
//! The K/V and hidden-state stores stay the backend's own; the plan only
//! speaks of block ids, so a device-resident store can take the same plan.

use super::SeqRequest;
use crate::kv::{Admitted, BlockId, BlockStore, CacheStats, PairCache};
use crate::model::config::{Config, DELTANET_CHUNK};
use crate::score::TokenScores;
use crate::{Error, Result};

/// Longest sequence the backends accept: the model's
/// `max_position_embeddings`, at most 2^17 (the CPU's RoPE tables are built
/// for that many positions).
pub fn max_positions(cfg: &Config) -> usize {
    cfg.max_position_embeddings.clamp(1, 1 << 17)
}

/// Every token id against the model's vocabularies (the embedding and, when
/// the model has them, the per-layer embeddings).
pub fn check_vocab(cfg: &Config, tokens: &[u32]) -> Result<()> {
    let mut v = cfg.vocab_size;
    if let Some(p) = &cfg.embed.per_layer {
        v = v.min(p.vocab);
    }
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= v) {
        return Err(Error::Backend(format!(
            "token id {t} at position {i} is outside the model's vocabulary (size {v})"
        )));
    }
    Ok(())
}

/// A batch against both models: token ids in every vocabulary, no sequence
/// longer than [`max_positions`].
pub fn check_batch(batch: &[SeqRequest], models: [&Config; 2]) -> Result<()> {
    let longest = batch.iter().map(|r| r.token_ids.len()).max().unwrap_or(0);
    for cfg in models {
        for r in batch {
            check_vocab(cfg, &r.token_ids)?;
        }
        let limit = max_positions(cfg);
        if longest > limit {
            return Err(Error::Backend(format!(
                "sequence of {longest} tokens is longer than the model's {limit} positions"
            )));
        }
    }
    Ok(())
}

/// One [`TokenScores`] per request, every entry NaN (not asked for yet).
pub fn nan_scores(batch: &[SeqRequest]) -> Vec<TokenScores> {
    batch
        .iter()
        .map(|r| TokenScores::new_nan(r.token_ids.len()))
        .collect()
}

/// Every request as a wave member with nothing cached.
pub fn uncached(batch: &[SeqRequest]) -> Vec<Admitted> {
    (0..batch.len())
        .map(|seq| Admitted {
            seq,
            hit: Vec::new(),
            fill: Vec::new(),
        })
        .collect()
}

/// Count a batch scored without the cache: every token computed.
pub fn count_uncached(counters: &mut CacheStats, batch: &[SeqRequest]) {
    counters.computed_tokens += batch.iter().map(|r| r.token_ids.len() as u64).sum::<u64>();
}

/// One sequence inside a packed batch: rows `[start, start + len)`.
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    pub start: usize,
    pub len: usize,
}

/// Where the hidden state predicting a wanted position comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Row of this wave's forward output.
    New(usize),
    /// Last-token hidden state of a cached block (the first new position).
    Boundary(BlockId),
}

/// A position whose log-prob is computed in this wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Index of the request in the batch.
    pub seq: usize,
    /// Position `t ≥ 1`; the row predicts token `t`.
    pub t: usize,
    pub row: Row,
    /// The filled block (and slot) that keeps its scores, when it falls in one.
    pub keep: Option<(BlockId, usize)>,
}

/// A position whose scores the cache already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub seq: usize,
    pub t: usize,
    pub block: BlockId,
    pub slot: usize,
}

/// The work of one wave (module docs).
#[derive(Debug, Clone, Default)]
pub struct WavePlan {
    /// The tokens after each member's cached prefix, packed in wave order.
    pub tokens: Vec<u32>,
    /// Each member's rows in [`WavePlan::tokens`], in wave order.
    pub seqs: Vec<Packed>,
    /// Wanted positions to compute, member by member, `t` ascending.
    pub wanted: Vec<Wanted>,
    /// Wanted positions inside a cached prefix.
    pub cached: Vec<Cached>,
    /// Each filled block and the packed row of its last token (whose hidden
    /// state predicts the first token after the block).
    pub fills: Vec<(BlockId, usize)>,
}

impl WavePlan {
    /// Plan `wave` over `batch` with blocks of `block_size` tokens (any
    /// value when nothing is cached).
    pub fn new(batch: &[SeqRequest], wave: &[Admitted], block_size: usize) -> WavePlan {
        let bs = block_size;
        let mut plan = WavePlan::default();
        for a in wave {
            let r = &batch[a.seq];
            let past = a.hit.len() * bs;
            let ids = &r.token_ids[past..];
            let s = Packed {
                start: plan.tokens.len(),
                len: ids.len(),
            };
            plan.tokens.extend_from_slice(ids);
            for (j, &id) in a.fill.iter().enumerate() {
                plan.fills.push((id, s.start + (j + 1) * bs - 1));
            }
            for t in (1..r.token_ids.len()).filter(|&t| r.wants(t)) {
                let (seq, block) = (a.seq, t / bs);
                if t < past {
                    plan.cached.push(Cached {
                        seq,
                        t,
                        block: a.hit[block],
                        slot: t % bs,
                    });
                    continue;
                }
                let row = if t == past {
                    Row::Boundary(a.hit[block - 1])
                } else {
                    Row::New(s.start + t - 1 - past)
                };
                let keep = (block.checked_sub(a.hit.len()))
                    .and_then(|j| a.fill.get(j))
                    .map(|&id| (id, t % bs));
                plan.wanted.push(Wanted { seq, t, row, keep });
            }
            plan.seqs.push(s);
        }
        plan
    }

    /// The token each wanted row predicts, in [`WavePlan::wanted`] order.
    pub fn targets(&self, batch: &[SeqRequest]) -> Vec<u32> {
        self.wanted
            .iter()
            .map(|w| batch[w.seq].token_ids[w.t])
            .collect()
    }

    /// Copy the cached positions' scores (`score(block, slot)`) into `out`.
    pub fn scatter_cached(
        &self,
        out: &mut [TokenScores],
        score: impl Fn(BlockId, usize) -> [f32; 4],
    ) {
        for c in &self.cached {
            set(&mut out[c.seq], c.t, score(c.block, c.slot));
        }
    }

    /// Write the wanted rows' statistics (log π_θ, log π_ref, policy entropy,
    /// self-certainty; NaN for what was not computed), in
    /// [`WavePlan::wanted`] order, into `out`; `keep(block, slot, stats)`
    /// receives those that belong in a filled block.
    pub fn scatter(
        &self,
        out: &mut [TokenScores],
        stats: impl IntoIterator<Item = [f32; 4]>,
        mut keep: impl FnMut(BlockId, usize, [f32; 4]),
    ) {
        for (w, s) in self.wanted.iter().zip(stats) {
            set(&mut out[w.seq], w.t, s);
            if let Some((id, slot)) = w.keep {
                keep(id, slot, s);
            }
        }
    }
}

fn set(o: &mut TokenScores, t: usize, [lp, lr, ent, sc]: [f32; 4]) {
    o.logp_policy[t] = lp;
    o.logp_reference[t] = lr;
    o.entropy_policy[t] = ent;
    o.self_certainty[t] = sc;
}

/// Score `batch` in waves over `cache` ([`crate::kv::cache`]): sorted by
/// tokens, so that sequences sharing a prefix are neighbours and each wave
/// computes a shared prefix once for the next to hit; `run` scores one
/// admitted wave (writing its filled blocks), after which the wave is
/// committed, or abandoned when `run` fails. `counters` gain the lookups,
/// hit and computed tokens.
pub fn in_waves<S: BlockStore>(
    cache: &mut PairCache<S>,
    batch: &[SeqRequest],
    counters: &mut CacheStats,
    mut run: impl FnMut(&mut PairCache<S>, &[Admitted]) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].token_ids.cmp(&batch[b].token_ids));
    while !order.is_empty() {
        let (wave, rest) = cache.admit(batch, &order);
        let bs = cache.block_size() as u64;
        for a in &wave {
            let hit = a.hit.len() as u64 * bs;
            counters.lookups += 1;
            counters.hit_tokens += hit;
            counters.computed_tokens += batch[a.seq].token_ids.len() as u64 - hit;
        }
        match run(cache, &wave) {
            Ok(()) => cache.commit(batch, &wave),
            Err(e) => {
                cache.abandon(&wave);
                return Err(e);
            }
        }
        order = rest;
    }
    Ok(())
}

/// The chunks of the chunked delta rule over packed sequences
/// (`seq_start` `[seqs + 1]`, sequence `s` after `past[s]` cached tokens):
/// a chunk ends where a sequence's absolute position reaches a multiple of
/// [`DELTANET_CHUNK`] (as on the CPU, so a state cached at a block boundary
/// continues exactly), after every packed row in `cut_after` (rows whose
/// state a cache block keeps) and at each sequence's end. Returns each
/// chunk's first packed row followed by the last chunk's end (`[chunks +
/// 1]`), and each sequence's first chunk followed by the chunk count
/// (`[seqs + 1]`).
pub fn delta_rule_chunks(
    seq_start: &[i32],
    past: &[i32],
    cut_after: &[usize],
) -> (Vec<i32>, Vec<i32>) {
    let n = seq_start.last().map_or(0, |&e| e as usize);
    let mut cut = vec![false; n];
    for &r in cut_after {
        if let Some(c) = cut.get_mut(r) {
            *c = true;
        }
    }
    let mut starts = vec![seq_start.first().copied().unwrap_or(0)];
    let mut seq_chunk = vec![0i32];
    for (w, &p) in seq_start.windows(2).zip(past) {
        let (first, last) = (w[0] as usize, w[1] as usize);
        for (i, &cut) in cut[first..last].iter().enumerate() {
            let pos = p as usize + i + 1;
            if pos.is_multiple_of(DELTANET_CHUNK) || cut || first + i + 1 == last {
                starts.push((first + i + 1) as i32);
            }
        }
        seq_chunk.push(starts.len() as i32 - 1);
    }
    (starts, seq_chunk)
}

/// The K/V pools of a forward over `cfg`'s layers: per layer, the width
/// (`kv_heads · head_dim`) of its own pool when later layers read its K/V
/// (Gemma's KV sharing: it is kept for the whole forward), and the widest
/// K/V of the other attention layers, which take turns in one pool. A
/// sharing layer reads its source's pool and writes none.
pub fn kv_pools(cfg: &Config) -> (Vec<Option<usize>>, usize) {
    let is_source = |li| crate::backend::cpu::mixer::SharedKv::is_source(&cfg.layers, li);
    let mut turns = 0;
    let kept = (cfg.layers.iter().enumerate())
        .map(|(li, l)| {
            let own = l.attn().filter(|a| a.kv_from.is_none()).map(|a| a.kv_dim());
            match own {
                Some(kvd) if is_source(li) => Some(kvd),
                _ => {
                    turns = turns.max(own.unwrap_or(0));
                    None
                }
            }
        })
        .collect();
    (kept, turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_rule_chunks_end_at_absolute_multiples_of_the_chunk_cuts_and_sequence_ends() {
        // 23 rows cut after row 7; one row; 150 rows after 40 cached tokens
        // (absolute 64 at its row 23, 128 at 87), cut after its row 15.
        let seq_start = [0, 23, 24, 174];
        let (starts, seq_chunk) = delta_rule_chunks(&seq_start, &[0, 0, 40], &[7, 22, 39]);
        assert_eq!(starts, [0, 8, 23, 24, 40, 48, 112, 174]);
        assert_eq!(seq_chunk, [0, 2, 3, 7]);
        // No chunk is longer than the chunk size or crosses a sequence; an
        // empty sequence has none.
        let seq_start = [0, 200, 200, 330];
        let (starts, seq_chunk) = delta_rule_chunks(&seq_start, &[64, 0, 128], &[]);
        assert_eq!(seq_chunk, [0, 4, 4, 7]);
        assert!(starts.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 64));
        assert!(seq_start.iter().all(|s| starts.contains(s)));
    }

    fn req(len: usize, mask: Option<&[usize]>) -> SeqRequest {
        SeqRequest {
            token_ids: (0..len as u32).collect(),
            score_mask: mask.map(|m| (0..len).map(|t| m.contains(&t)).collect()),
        }
    }

    #[test]
    fn an_uncached_wave_scores_each_wanted_position_from_the_row_before_it() {
        let batch = [req(4, None), req(5, Some(&[0, 2, 4]))];
        let plan = WavePlan::new(&batch, &uncached(&batch), 16);
        assert_eq!(plan.tokens.len(), 9);
        assert_eq!((plan.seqs[1].start, plan.seqs[1].len), (4, 5));
        let rows: Vec<_> = plan.wanted.iter().map(|w| (w.seq, w.t, w.row)).collect();
        // Position 0 is never scored; row t − 1 of each sequence predicts t.
        assert_eq!(
            rows,
            [
                (0, 1, Row::New(0)),
                (0, 2, Row::New(1)),
                (0, 3, Row::New(2)),
                (1, 2, Row::New(5)),
                (1, 4, Row::New(7)),
            ]
        );
        assert_eq!(plan.targets(&batch), [1, 2, 3, 2, 4]);
        assert!(plan.cached.is_empty() && plan.fills.is_empty());
    }

    #[test]
    fn a_cached_prefix_splits_positions_into_cached_boundary_and_new_rows() {
        // Blocks of 4: 2 cached (positions 0..8), 1 to fill (8..12), 2 left.
        let batch = [req(14, None)];
        let wave = [Admitted {
            seq: 0,
            hit: vec![7, 3],
            fill: vec![9],
        }];
        let plan = WavePlan::new(&batch, &wave, 4);
        assert_eq!(plan.tokens, (8..14).collect::<Vec<u32>>());
        let cached: Vec<_> = plan.cached.iter().map(|c| (c.t, c.block, c.slot)).collect();
        assert_eq!(cached[0], (1, 7, 1));
        assert_eq!(cached[6], (7, 3, 3));
        assert_eq!(cached.len(), 7);
        let w: Vec<_> = plan.wanted.iter().map(|w| (w.t, w.row, w.keep)).collect();
        assert_eq!(w[0], (8, Row::Boundary(3), Some((9, 0))));
        assert_eq!(w[1], (9, Row::New(0), Some((9, 1))));
        assert_eq!(w[4], (12, Row::New(3), None));
        assert_eq!(w.len(), 6);
        // Row 3 of the wave is position 11, the filled block's last token.
        assert_eq!(plan.fills, [(9, 3)]);

        let mut out = nan_scores(&batch);
        plan.scatter_cached(&mut out, |b, s| [b as f32, s as f32, 0.0, 0.0]);
        let mut kept = Vec::new();
        let stats = (0..6).map(|k| [k as f32, -1.0, 0.5, -2.0]);
        plan.scatter(&mut out, stats, |id, slot, s| kept.push((id, slot, s[0])));
        assert_eq!(out[0].logp_policy[7], 3.0);
        assert_eq!(out[0].logp_reference[7], 3.0);
        assert_eq!(out[0].logp_policy[13], 5.0);
        assert_eq!(out[0].self_certainty[13], -2.0);
        assert!(out[0].logp_policy[0].is_nan());
        assert_eq!(kept, [(9, 0, 0.0), (9, 1, 1.0), (9, 2, 2.0), (9, 3, 3.0)]);
    }

    #[test]
    fn kv_sharing_sources_keep_their_pools_and_the_rest_take_turns_in_the_widest() {
        // Gemma 4's layout: [S, S, F, S, S, F], sliding K/V 2 × 16 wide,
        // full 2 × 32; the last three read layers 1 (sliding) and 2 (full).
        let json = serde_json::json!({"architectures": ["Gemma4ForCausalLM"],
            "hidden_size": 48, "intermediate_size": 32, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "global_head_dim": 32, "vocab_size": 512, "sliding_window": 8,
            "num_kv_shared_layers": 3, "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention", "sliding_attention", "full_attention"]});
        let cfg = Config::from_json(&json, std::path::Path::new("config.json")).unwrap();
        let (kept, turns) = kv_pools(&cfg);
        assert_eq!(kept, [None, Some(32), Some(64), None, None, None]);
        assert_eq!(turns, 32, "layer 0 alone takes turns");
        // Without sharing every layer takes turns in the widest pool.
        let mut json = json;
        json["num_kv_shared_layers"] = serde_json::json!(0);
        let cfg = Config::from_json(&json, std::path::Path::new("config.json")).unwrap();
        assert_eq!(kv_pools(&cfg), (vec![None; 6], 64));
    }

    #[test]
    fn batches_outside_the_vocabulary_or_the_positions_are_refused() {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 3
        });
        let mut cfg = Config::from_json(&json, std::path::Path::new("config.json")).unwrap();
        let e = check_batch(&[req(4, None)], [&cfg, &cfg]).unwrap_err();
        assert!(e.to_string().contains("token id 3 at position 3"), "{e}");
        cfg.vocab_size = 100;
        cfg.max_position_embeddings = 3;
        let e = check_batch(&[req(4, None)], [&cfg, &cfg]).unwrap_err();
        assert!(e.to_string().contains("4 tokens"), "{e}");
        cfg.max_position_embeddings = 4;
        check_batch(&[req(4, None)], [&cfg, &cfg]).unwrap();
    }
}
