//! RoPE tables and rotation, the CPU twin of the rotation in
//! `kernels/rope.cu`: angles `position · inv_freq` in f32 as transformers
//! forms them, cos/sin times the attention factor (YaRN), rotate-half over
//! the first `rotary_dim` dims of each head.

use crate::model::Config;
use crate::model::config::Rope;

/// Precomputed cos/sin for positions `[0, max_pos)`: `[pos, rotary_dim/2]` each.
pub struct RopeTable {
    pub half: usize,
    pub head_dim: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Full-width RoPE of `inv_freq` (head_dim = 2 · inv_freq.len()), factor 1.
    pub fn new(inv_freq: &[f32], max_pos: usize) -> RopeTable {
        let rope = Rope {
            inv_freq: inv_freq.to_vec(),
            rotary_dim: 2 * inv_freq.len(),
            attention_factor: 1.0,
        };
        RopeTable::for_rope(&rope, 2 * inv_freq.len(), max_pos)
    }

    pub fn for_rope(rope: &Rope, head_dim: usize, max_pos: usize) -> RopeTable {
        let half = rope.inv_freq.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        let af = rope.attention_factor;
        for p in 0..max_pos {
            for &f in &rope.inv_freq {
                let a = p as f32 * f;
                if af == 1.0 {
                    cos.push(a.cos());
                    sin.push(a.sin());
                } else {
                    cos.push(a.cos() * af);
                    sin.push(a.sin() * af);
                }
            }
        }
        RopeTable {
            half,
            head_dim,
            cos,
            sin,
        }
    }

    pub fn max_pos(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

crate::dispatch! {
    /// Rotate-half RoPE on every head of one row (`heads × head_dim` values) at `pos`.
    pub fn rope_row(row: &mut [f32], table: &RopeTable, pos: usize) {
        let h = table.half;
        let cos = &table.cos[pos * h..(pos + 1) * h];
        let sin = &table.sin[pos * h..(pos + 1) * h];
        for head in row.chunks_mut(table.head_dim) {
            let (a, b) = head[..2 * h].split_at_mut(h);
            for i in 0..h {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

/// The RoPE tables of one model, one per distinct layer RoPE (layers
/// without attention have none).
pub struct Ropes {
    tables: Vec<RopeTable>,
    of_layer: Vec<Option<usize>>,
    max_pos: usize,
}

impl Ropes {
    /// Tables for positions `[0, max_pos)`.
    pub fn new(cfg: &Config, max_pos: usize) -> Ropes {
        let mut distinct: Vec<(&Rope, usize)> = Vec::new();
        let mut of_layer = Vec::with_capacity(cfg.layers.len());
        for l in &cfg.layers {
            let Some(a) = l.attn() else {
                of_layer.push(None);
                continue;
            };
            let key = (&a.rope, a.head_dim);
            let i = match distinct.iter().position(|d| *d == key) {
                Some(i) => i,
                None => {
                    distinct.push(key);
                    distinct.len() - 1
                }
            };
            of_layer.push(Some(i));
        }
        Ropes {
            tables: distinct
                .into_iter()
                .map(|(r, hd)| RopeTable::for_rope(r, hd, max_pos))
                .collect(),
            of_layer,
            max_pos,
        }
    }

    /// The model's own limit (`max_position_embeddings`, at most 2^17).
    pub fn for_model(cfg: &Config) -> Ropes {
        Ropes::new(cfg, cfg.max_position_embeddings.clamp(1, 1 << 17))
    }

    /// The table of attention layer `li` (`None` for other mixers).
    pub fn layer(&self, li: usize) -> Option<&RopeTable> {
        self.of_layer[li].map(|i| &self.tables[i])
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }
}
