//! RoPE frequencies as transformers computes them (`modeling_rope_utils`):
//! default, linear, llama3, YaRN and Gemma's proportional RoPE, each read
//! from a `rope_parameters` / `rope_scaling` object and turned into a
//! [`Rope`] (inverse frequencies in f32, rotary width, cos/sin factor).

use serde_json::Value;

use super::config::{Keys, Rope};
use crate::Result;

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.x wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// YaRN (NTK-by-parts interpolation plus an attention factor on cos/sin).
    Yarn {
        factor: f32,
        original_max_position_embeddings: f32,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        truncate: bool,
    },
    /// Gemma 4 full-attention layers: only the first
    /// `partial_rotary_factor · head_dim / 2` frequencies are non-zero, with
    /// exponents over the whole head dim; all dims take part in rotate-half.
    Proportional {
        partial_rotary_factor: f32,
    },
}

/// The RoPE parameters of a config: `rope_parameters` (transformers 5) or
/// top-level `rope_theta` + `rope_scaling` (4.x). `params` may be a per-layer-
/// type sub-object (Gemma 4).
pub fn parse(k: Keys, params: Option<&Value>, max_positions: usize) -> Result<(f32, RopeScaling)> {
    let p = match params {
        Some(p) => Some(p),
        None => match k.object("rope_parameters")? {
            Some(p) => Some(p),
            None => k.object("rope_scaling")?,
        },
    };
    let pk = p.map(|v| Keys::new(v, k.path));
    let theta = match pk.map(|p| p.opt_f32("rope_theta")).transpose()?.flatten() {
        Some(t) => t,
        None => k.f32_or("rope_theta", 10000.0)?,
    };
    if !(theta.is_finite() && theta > 1.0) {
        return Err(k.err(format!("`rope_theta` must be a number > 1, not {theta}")));
    }
    let Some(p) = pk else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = match p.opt_str("rope_type")? {
        Some(t) => Some(t),
        None => p.opt_str("type")?,
    }
    .unwrap_or("default");
    let factor = || {
        p.opt_f32("factor")?
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| k.err(format!("rope scaling `{kind}` needs a positive `factor`")))
    };
    let original = |fallback: Option<usize>| {
        p.opt_f32("original_max_position_embeddings")?
            .or(fallback.map(|m| m as f32))
            .ok_or_else(|| {
                k.err(format!(
                    "rope scaling `{kind}` needs `original_max_position_embeddings`"
                ))
            })
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: p.f32_or("low_freq_factor", 1.0)?,
            high_freq_factor: p.f32_or("high_freq_factor", 4.0)?,
            original_max_position_embeddings: original(None)?,
        },
        "yarn" => {
            let factor = factor()?;
            p.reject("mscale", &[], "YaRN mscale")?;
            p.reject("mscale_all_dim", &[], "YaRN mscale_all_dim")?;
            // transformers: 0.1·ln(factor) + 1 unless given.
            let default_af = if factor <= 1.0 {
                1.0
            } else {
                0.1 * (factor as f64).ln() + 1.0
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original(Some(max_positions))?,
                beta_fast: p.f32_or("beta_fast", 32.0)?,
                beta_slow: p.f32_or("beta_slow", 1.0)?,
                attention_factor: p.f32_or("attention_factor", default_af as f32)?,
                truncate: p.bool_or("truncate", true)?,
            }
        }
        "proportional" => RopeScaling::Proportional {
            partial_rotary_factor: p.f32_or("partial_rotary_factor", 1.0)?,
        },
        other => {
            return Err(k.err(format!(
                "unsupported rope scaling type `{other}`; supported: default, linear, llama3, yarn, proportional"
            )));
        }
    };
    Ok((theta, scaling))
}

/// `1 / θ^(2i/d)` for `i < d/2`, in f32 as transformers computes it.
fn base_freqs(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect()
}

/// The RoPE of a head of `head_dim` dims rotating its first `rotary_dim`.
pub fn rope(theta: f32, scaling: &RopeScaling, head_dim: usize, rotary_dim: usize) -> Rope {
    let d = rotary_dim;
    let base = base_freqs(theta, d);
    let plain = |inv_freq| Rope {
        inv_freq,
        rotary_dim: d,
        attention_factor: 1.0,
    };
    match scaling {
        RopeScaling::None => plain(base),
        RopeScaling::Linear { factor } => plain(base.iter().map(|f| f / factor).collect()),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            plain(
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect(),
            )
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        } => {
            // Correction range (in f64, as Python's math does), then a linear
            // ramp over the d/2 frequencies (f32, as torch does).
            let dim_for = |rotations: f32| {
                d as f64 * (*orig as f64 / (rotations as f64 * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * (theta as f64).ln())
            };
            let (mut low, mut high) = (dim_for(*beta_fast), dim_for(*beta_slow));
            if *truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, high) = (low.max(0.0) as f32, high.min(d as f64 - 1.0) as f32);
            let high = if low == high { high + 0.001 } else { high };
            let inv_freq = base
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    // base[i] = 1/pos_freq; interpolation = 1/(factor·pos_freq)
                    let pos_freq = theta.powf((2 * i) as f32 / d as f32);
                    let interp = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrap_factor = 1.0 - ramp;
                    interp * (1.0 - extrap_factor) + f * extrap_factor
                })
                .collect();
            Rope {
                inv_freq,
                rotary_dim: d,
                attention_factor: *attention_factor,
            }
        }
        RopeScaling::Proportional {
            partial_rotary_factor,
        } => {
            // Exponents over the whole head; only the first rope_angles are
            // non-zero, the rest rotate by 0 (cos 1, sin 0).
            let angles = (partial_rotary_factor * head_dim as f32 / 2.0) as usize;
            let inv_freq = (0..head_dim / 2)
                .map(|i| {
                    if i < angles {
                        1.0 / theta.powf((2 * i) as f32 / head_dim as f32)
                    } else {
                        0.0
                    }
                })
                .collect();
            Rope {
                inv_freq,
                rotary_dim: head_dim,
                attention_factor: 1.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn parse_json(v: Value) -> (f32, RopeScaling) {
        parse(Keys::new(&v, Path::new("c")), None, 512).unwrap()
    }

    #[test]
    fn old_and_new_rope_config_styles_give_the_same_rope() {
        let old = parse_json(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        );
        let new = parse_json(
            json!({"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}}),
        );
        assert_eq!(old, new);
        assert_eq!(old.1, RopeScaling::Linear { factor: 4.0 });
        let plain = rope(5e5, &RopeScaling::None, 16, 16);
        let lin = rope(old.0, &old.1, 16, 16);
        for (a, b) in lin.inv_freq.iter().zip(&plain.inv_freq) {
            assert_eq!(*a, b / 4.0);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let (t, s) = parse_json(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
        );
        let (s, p) = (
            rope(t, &s, 16, 16).inv_freq,
            rope(t, &RopeScaling::None, 16, 16).inv_freq,
        );
        assert_eq!(s[0], p[0], "highest frequency unchanged");
        assert_eq!(
            *s.last().unwrap(),
            p.last().unwrap() / 8.0,
            "lowest divided by factor"
        );
    }

    #[test]
    fn yarn_ramps_between_the_correction_dims_and_scales_cos_sin() {
        // The Olmo 3 fixture: d 12, θ 5e5, original 64, factor 8 → ramp 0, .5, 1, 1, 1, 1.
        let (t, s) = parse_json(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "yarn", "factor": 8.0,
            "original_max_position_embeddings": 64, "attention_factor": 1.2079441541679836}}),
        );
        let y = rope(t, &s, 12, 12);
        let p = rope(t, &RopeScaling::None, 12, 12).inv_freq;
        assert_eq!(y.inv_freq[0], p[0]);
        let mid = p[1] / 8.0 * 0.5 + p[1] * 0.5;
        assert!(
            (y.inv_freq[1] - mid).abs() <= 1e-7 * p[1],
            "{} vs {mid}",
            y.inv_freq[1]
        );
        for (y, p) in y.inv_freq.iter().zip(&p).skip(2) {
            assert!((y - p / 8.0).abs() <= 1e-6 * p);
        }
        assert_eq!(y.attention_factor, 1.2079441541679836f64 as f32);
        let (_, dflt) = parse_json(json!({"rope_scaling": {"rope_type": "yarn", "factor": 8.0,
            "original_max_position_embeddings": 64}}));
        let RopeScaling::Yarn {
            attention_factor, ..
        } = dflt
        else {
            panic!()
        };
        assert!((attention_factor - (0.1 * 8f32.ln() + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn proportional_rope_zeroes_all_but_the_first_frequencies() {
        let r = rope(
            1e6,
            &RopeScaling::Proportional {
                partial_rotary_factor: 0.25,
            },
            32,
            32,
        );
        assert_eq!(r.inv_freq.len(), 16);
        assert_eq!(r.inv_freq[0], 1.0);
        assert_eq!(r.inv_freq[3], 1.0 / 1e6f32.powf(6.0 / 32.0));
        assert!(r.inv_freq[4..].iter().all(|&f| f == 0.0));
    }

    #[test]
    fn unknown_rope_types_and_bad_thetas_are_errors_naming_them() {
        let v = json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}});
        let e = parse(Keys::new(&v, Path::new("c")), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dynamic") && e.contains("yarn"), "{e}");
        let v = json!({"rope_theta": 0});
        let e = parse(Keys::new(&v, Path::new("c")), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_theta"), "{e}");
    }
}
