//! [`ModelDims`]: the resolved numbers of one model (sizes, heads, norms, positions, windows),
//! read from `config.json` under whichever key its family uses.

use super::config::{HfConfig, RopeParams};
use crate::arch::{ArchSpec, Bias, NormKind, WindowRule};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            _ => return None,
        })
    }

    /// The fused kernel for `act(gate) * up`, when this activation has one.
    pub fn fused_gate(&self) -> Option<crate::ops::GateAct> {
        match self {
            Self::Silu => Some(crate::ops::GateAct::Silu),
            Self::GeluTanh => Some(crate::ops::GateAct::GeluTanh),
            _ => None,
        }
    }

    pub fn apply(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub act: Activation,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Sliding attention window of each layer (None: full attention).
    pub windows: Vec<Option<usize>>,
    pub rope: Option<RopeParams>,
    pub eos_token_id: Option<u32>,
}

fn bias(cfg: &HfConfig, rule: Bias) -> Result<bool> {
    Ok(match rule {
        Bias::Never => false,
        Bias::Always => true,
        Bias::Config(key, default) => cfg.bool_any(&[key])?.unwrap_or(default),
    })
}

impl ModelDims {
    pub fn from_config(cfg: &HfConfig, spec: &ArchSpec) -> Result<Self> {
        let hidden = cfg.require_usize(&["hidden_size", "n_embd", "d_model"])?;
        let heads = cfg.require_usize(&["num_attention_heads", "n_head", "num_heads"])?;
        let layers = cfg.require_usize(&["num_hidden_layers", "n_layer", "num_layers"])?;
        let vocab = cfg.require_usize(&["vocab_size", "padded_vocab_size"])?;
        if heads == 0 || hidden == 0 || layers == 0 || vocab == 0 {
            return Err(cfg.error("num_attention_heads", "sizes must be positive"));
        }
        let kv_heads = cfg.usize_any(&["num_key_value_heads", "num_kv_heads", "multi_query_group_num"])?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(cfg.error("num_key_value_heads", format!("{kv_heads} does not divide {heads} attention heads")));
        }
        let head_dim = cfg.usize_any(&["head_dim", "kv_channels"])?.unwrap_or(hidden / heads);
        let intermediate = cfg.usize_any(&["intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"])?.unwrap_or(4 * hidden);
        let default_eps = if matches!(spec.norm, NormKind::Rms { .. }) { 1e-6 } else { 1e-5 };
        let norm_eps = cfg
            .f64_any(&["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "layernorm_epsilon"])?
            .unwrap_or(default_eps);
        let act_name = cfg.str_any(&["hidden_act", "activation_function", "hidden_activation"]).unwrap_or("silu");
        let act = Activation::parse(act_name)
            .ok_or_else(|| cfg.error("hidden_act", format!("unsupported activation `{act_name}`")))?;
        let max_positions = cfg.usize_any(&["max_position_embeddings", "n_positions", "seq_length"])?.unwrap_or(2048);
        let tie_embeddings = cfg.bool_any(&["tie_word_embeddings"])?.unwrap_or(false);
        let window = cfg.usize_any(&["sliding_window"])?;
        let window_on = match spec.window {
            WindowRule::Never => false,
            WindowRule::Config => true,
            WindowRule::WhenEnabled(key) => cfg.bool_any(&[key])?.unwrap_or(false),
        };
        let layer_types = cfg.layer_types();
        let windows = (0..layers)
            .map(|i| {
                if !window_on {
                    return None;
                }
                match &layer_types {
                    Some(types) => types.get(i).filter(|t| t.as_str() == "sliding_attention").and(window),
                    None => window,
                }
            })
            .collect();
        let rope = if spec.is_rope() { Some(cfg.rope(spec.default_theta, None)?) } else { None };
        let eos_token_id = cfg.get("eos_token_id").and_then(|v| {
            v.as_u64().or_else(|| v.as_array().and_then(|a| a.first()).and_then(|x| x.as_u64())).map(|x| x as u32)
        });
        Ok(Self {
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            norm_eps,
            act,
            max_positions,
            tie_embeddings,
            qkv_bias: bias(cfg, spec.qkv_bias)?,
            o_bias: bias(cfg, spec.o_bias)?,
            mlp_bias: bias(cfg, spec.mlp_bias)?,
            windows,
            rope,
            eos_token_id,
        })
    }

    /// Parameters of the whole model (embeddings counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads);
        let mlp = 3 * self.hidden * self.intermediate;
        let per_layer = attn + mlp + 2 * self.hidden;
        let embed = self.vocab * self.hidden;
        embed * if self.tie_embeddings { 1 } else { 2 } + self.layers * per_layer + self.hidden
    }
}
