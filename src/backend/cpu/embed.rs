//! Embeddings, the CPU twin of `kernels/embedding.cu`: the token rows
//! (times the family's scale, which transformers rounds to the weight dtype
//! first) and Gemma's per-layer inputs, computed once per forward:
//! `P = (rmsnorm(e·W_projᵀ · proj_scale) + E_ple[x] · embed_scale) · combine_scale`,
//! `[tokens, layers · dim]`, layer `l` reading columns `[l·dim, (l+1)·dim)`.

use rayon::prelude::*;

use super::gemm_bf16::Gemm;
use super::norm::rms_norm_row;
use crate::model::Config;
use crate::model::layout::DecoderWeights;
use crate::model::weights::DType;

/// `s` rounded to `dtype`, as transformers casts an embedding scale to the
/// weight dtype before multiplying.
pub fn scale_in(dtype: DType, s: f32) -> f32 {
    match dtype {
        DType::F32 => s,
        DType::BF16 => half::bf16::from_f32(s).to_f32(),
        DType::F16 => half::f16::from_f32(s).to_f32(),
    }
}

/// `[tokens, hidden]`: the (scaled) embedding rows.
pub fn embed(cfg: &Config, w: &DecoderWeights, tokens: &[u32]) -> Vec<f32> {
    let h = cfg.hidden_size;
    let mut x = vec![0.0f32; tokens.len() * h];
    let scale = cfg.embed.scale.map(|s| scale_in(w.embed.data.dtype(), s));
    x.par_chunks_mut(h * 64)
        .zip(tokens.par_chunks(64))
        .for_each(|(rows, toks)| {
            for (row, &tok) in rows.chunks_mut(h).zip(toks) {
                w.embed.data.widen_into(tok as usize * h, row);
                if let Some(s) = scale {
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
        });
    x
}

/// Gemma's per-layer inputs `[tokens, layers · dim]` from the scaled
/// embedding `x`; `None` for models without them. Token ids were checked
/// against the per-layer vocabulary by the caller.
pub fn per_layer_inputs(
    gemm: Gemm,
    cfg: &Config,
    w: &DecoderWeights,
    tokens: &[u32],
    x: &[f32],
) -> Option<Vec<f32>> {
    let p = cfg.embed.per_layer.as_ref()?;
    let (table, proj, norm) = (w.ple_embed?, w.ple_proj?, w.ple_norm?);
    let width = cfg.num_layers * p.dim;
    let t = tokens.len();
    let mut out = vec![0.0f32; t * width];
    gemm.matmul_wt(x, t, &proj, &mut out, width, false);
    let norm = norm.data.to_f32_vec();
    let embed_scale = scale_in(table.data.dtype(), p.embed_scale);
    let eps = cfg.rms_norm_eps;
    out.par_chunks_mut(width)
        .zip(tokens.par_iter())
        .for_each_init(
            || vec![0.0f32; width],
            |row_ple, (row, &tok)| {
                table.data.widen_into(tok as usize * width, row_ple);
                for (c, e) in row.chunks_mut(p.dim).zip(row_ple.chunks(p.dim)) {
                    c.iter_mut().for_each(|v| *v *= p.proj_scale);
                    rms_norm_row(c, &norm, eps);
                    for (v, e) in c.iter_mut().zip(e) {
                        *v = (*v + e * embed_scale) * p.combine_scale;
                    }
                }
            },
        );
    Some(out)
}
