//! Reads a Hugging Face `config.json` into [`ModelConfig`]: the numbers the generic decoder needs,
//! whatever the family calls them (`hidden_size`/`n_embd`/`d_model`), in both the transformers v4
//! layout (top-level `rope_theta`, `rope_scaling`) and the v5 layout (`rope_parameters`).

use crate::error::{EngineError, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How RoPE frequencies are stretched for longer contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    /// Dynamic NTK: the base grows once a sequence is longer than `original_max`
    /// (transformers uses `max_position_embeddings` here).
    Dynamic {
        factor: f64,
        original_max: usize,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: usize,
    },
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    /// LongRoPE: short factors for sequences up to `original_max`, long ones beyond; `factor`
    /// (`max_position_embeddings / original_max` unless given) sets the attention scaling.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max: usize,
        factor: f64,
        attention_factor: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Fraction of each head's features that rotate (1 = all).
    pub partial_factor: f64,
}

/// A parsed `config.json` plus typed lookups with per-family aliases.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub path: PathBuf,
    pub raw: Value,
}

impl HfConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::file(&path, format!("invalid JSON: {e}")))?;
        if !raw.is_object() {
            return Err(EngineError::file(&path, "expected a JSON object"));
        }
        Ok(Self { path, raw })
    }

    pub fn from_value(path: PathBuf, raw: Value) -> Self {
        Self { path, raw }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// The first present key among `keys` as an unsigned integer.
    pub fn usize_any(&self, keys: &[&str]) -> Result<Option<usize>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| self.error(k, format!("expected a non-negative integer, got {v}")));
            }
        }
        Ok(None)
    }

    pub fn require_usize(&self, keys: &[&str]) -> Result<usize> {
        self.usize_any(keys)?.ok_or_else(|| self.error(keys[0], "missing"))
    }

    pub fn f64_any(&self, keys: &[&str]) -> Result<Option<f64>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| self.error(k, format!("expected a number, got {v}")));
            }
        }
        Ok(None)
    }

    pub fn bool_any(&self, keys: &[&str]) -> Result<Option<bool>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| self.error(k, format!("expected true or false, got {v}")));
            }
        }
        Ok(None)
    }

    pub fn str_any(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k).and_then(Value::as_str))
    }

    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> EngineError {
        EngineError::file(&self.path, format!("`{key}`: {message}"))
    }

    pub fn model_type(&self) -> Option<&str> {
        self.str_any(&["model_type"])
    }

    pub fn architectures(&self) -> Vec<String> {
        self.get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// The per-layer attention kinds (`full_attention` / `sliding_attention`) when listed.
    pub fn layer_types(&self) -> Option<Vec<String>> {
        self.get("layer_types")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
    }

    /// RoPE parameters from either layout. `layer_kind` picks a per-kind entry when the v5
    /// `rope_parameters` is keyed by layer type (Gemma 3).
    pub fn rope(&self, default_theta: f64, layer_kind: Option<&str>) -> Result<RopeParams> {
        let mut params = self.get("rope_parameters").cloned();
        if let (Some(Value::Object(map)), Some(kind)) = (&params, layer_kind)
            && let Some(inner) = map.get(kind)
        {
            params = Some(inner.clone());
        }
        if let Some(Value::Object(map)) = &params
            && !map.contains_key("rope_type")
            && !map.contains_key("rope_theta")
        {
            // Keyed by layer kind but no kind asked: take the full-attention entry.
            params = map.get("full_attention").cloned().or(params);
        }
        // Gemma 3 in the v4 layout: sliding layers use `rope_local_base_freq` without scaling.
        if layer_kind == Some("sliding_attention")
            && self.get("rope_parameters").is_none()
            && let Some(local) = self.f64_any(&["rope_local_base_freq"])?
        {
            let partial_factor = self.f64_any(&["partial_rotary_factor", "rotary_pct"])?.unwrap_or(1.0);
            return Ok(RopeParams { theta: local, scaling: RopeScaling::None, partial_factor });
        }
        let scaling_obj = params.clone().or_else(|| self.get("rope_scaling").cloned());
        let theta = params
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.f64_any(&["rope_theta", "rotary_emb_base", "rope_embedding_base"])?)
            .unwrap_or(default_theta);
        let partial_factor = params
            .as_ref()
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or(self.f64_any(&["partial_rotary_factor", "rotary_pct"])?)
            .unwrap_or(1.0);
        let scaling = match scaling_obj {
            Some(obj @ Value::Object(_)) => self.parse_scaling(&obj)?,
            _ => RopeScaling::None,
        };
        Ok(RopeParams { theta, scaling, partial_factor })
    }

    fn parse_scaling(&self, s: &Value) -> Result<RopeScaling> {
        let key = if self.get("rope_parameters").is_some() { "rope_parameters" } else { "rope_scaling" };
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let factor = || num("factor").ok_or_else(|| self.error(&format!("{key}.factor"), "missing"));
        let original_max = num("original_max_position_embeddings")
            .map(|v| v as usize)
            .or(self.usize_any(&["original_max_position_embeddings"]).ok().flatten())
            .or(self.usize_any(&["max_position_embeddings"]).ok().flatten())
            .unwrap_or(2048);
        let list = |k: &str| -> Vec<f64> {
            s.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor()?,
                original_max: self.usize_any(&["max_position_embeddings"])?.unwrap_or(original_max),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                original_max,
            },
            "yarn" => RopeScaling::Yarn {
                factor: factor()?,
                original_max,
                beta_fast: num("beta_fast").unwrap_or(32.0),
                beta_slow: num("beta_slow").unwrap_or(1.0),
                attention_factor: num("attention_factor"),
                mscale: num("mscale"),
                mscale_all_dim: num("mscale_all_dim"),
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            },
            "longrope" | "su" => RopeScaling::LongRope {
                short_factor: list("short_factor"),
                long_factor: list("long_factor"),
                original_max,
                factor: num("factor").unwrap_or_else(|| {
                    let max =
                        self.usize_any(&["max_position_embeddings"]).ok().flatten().unwrap_or(original_max);
                    max as f64 / original_max as f64
                }),
                attention_factor: num("attention_factor"),
            },
            other => {
                return Err(
                    self.error(&format!("{key}.rope_type"), format!("unsupported RoPE scaling `{other}`"))
                );
            }
        })
    }
}

/// Inverse frequencies (`rot_dim / 2` of them) and the attention scaling for a RoPE setup, as
/// Hugging Face's `rope_utils` computes them for sequences of `max_positions` tokens (only
/// dynamic NTK and LongRoPE depend on it).
pub fn rope_inv_freq(params: &RopeParams, rot_dim: usize, max_positions: usize) -> (Vec<f64>, f64) {
    let half = rot_dim / 2;
    // HF computes `1 / base ** (arange(0, dim, 2) / dim)` in float32.
    let base_freq = |theta: f64| -> Vec<f64> {
        (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rot_dim as f32) as f64).collect()
    };
    let theta = params.theta;
    match &params.scaling {
        RopeScaling::None => (base_freq(theta), 1.0),
        RopeScaling::Linear { factor } => (base_freq(theta).into_iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Dynamic { factor, original_max } => {
            if max_positions > *original_max {
                let base = theta
                    * ((factor * max_positions as f64 / *original_max as f64) - (factor - 1.0))
                        .powf(rot_dim as f64 / (rot_dim as f64 - 2.0));
                (base_freq(base), 1.0)
            } else {
                (base_freq(theta), 1.0)
            }
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
            let low_wavelen = *original_max as f64 / low_freq_factor;
            let high_wavelen = *original_max as f64 / high_freq_factor;
            let freqs = base_freq(theta)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (*original_max as f64 / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attn = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                (Some(m), Some(a)) => get_mscale(*factor, *m) / get_mscale(*factor, *a),
                _ => get_mscale(*factor, 1.0),
            });
            let dim = rot_dim as f64;
            let correction = |rot: f64| {
                dim * ((*original_max as f64) / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0);
            let high = high.min(dim - 1.0);
            let pos = base_freq(theta);
            let freqs = (0..half)
                .map(|i| {
                    let extrapolation = pos[i];
                    let interpolation = pos[i] / factor;
                    let span = if (high - low).abs() < 1e-9 { high - low + 0.001 } else { high - low };
                    let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                })
                .collect();
            (freqs, attn)
        }
        RopeScaling::LongRope { short_factor, long_factor, original_max, factor, attention_factor } => {
            let ext = if max_positions > *original_max { long_factor } else { short_factor };
            let freqs = base_freq(theta)
                .into_iter()
                .enumerate()
                .map(|(i, f)| f / ext.get(i).copied().unwrap_or(1.0))
                .collect();
            let factor = *factor;
            let attn = attention_factor.unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (*original_max as f64).ln()).sqrt()
            });
            (freqs, attn)
        }
    }
}
