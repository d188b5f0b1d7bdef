//! [`ModelDims`]: the resolved numbers of one decoder-only model (sizes, heads, norms, positions,
//! windows, scalar multipliers), read from `config.json` under whichever key its family uses,
//! then adjusted by the family's [`crate::arch::Resolve`] hook.

use super::config::{HfConfig, RopeParams};
use crate::arch::{ArchSpec, Bias, MlpKind, MoeRouting, NormKind, Scalar, WindowRule};
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
            "silu" | "swish" | "swiglu" => Self::Silu,
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" | "bloom_gelu" => Self::GeluTanh,
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

/// Sizes of a sparse mixture of experts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeDims {
    pub experts: usize,
    pub top_k: usize,
    pub expert_intermediate: usize,
    /// Renormalise the top-k weights to sum to 1.
    pub renormalize: bool,
    /// Layers that use the experts (the others have a dense MLP of `intermediate`).
    pub sparse_layers: Vec<bool>,
    /// Group-limited routing (DeepSeek): experts in `groups` groups, the best `topk_group` kept.
    pub groups: usize,
    pub topk_group: usize,
    /// Multiplies the routing weights (DeepSeek `routed_scaling_factor`).
    pub routed_scale: f64,
    /// Width of the always-on shared experts (0: none).
    pub shared_intermediate: usize,
}

/// Sizes of multi-head latent attention (DeepSeek-V2/V3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    /// Rank of the query down-projection (None: a full `q_proj`).
    pub q_rank: Option<usize>,
    pub kv_rank: usize,
    /// Per-head query/key features without and with rotation, and value features.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
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
    pub norm_bias: bool,
    pub head_bias: bool,
    /// Sliding attention window of each layer (None: full attention).
    pub windows: Vec<Option<usize>>,
    /// RoPE parameters of each layer (empty when the family does not rotate).
    pub rope: Vec<RopeParams>,
    /// Multiplies `q · kᵀ`.
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub embed_scale: Option<f64>,
    pub residual_scale: Option<f64>,
    /// Multiplies the logits (Granite divides by `logits_scaling`).
    pub logit_scale: Option<f64>,
    pub clip_qkv: Option<f64>,
    /// MPT's `alibi_bias_max`.
    pub alibi_bias_max: f64,
    pub moe: Option<MoeDims>,
    pub mla: Option<MlaDims>,
    pub eos_token_id: Option<u32>,
}

pub(crate) fn bias(cfg: &HfConfig, rule: Bias) -> Result<bool> {
    Ok(match rule {
        Bias::Never => false,
        Bias::Always => true,
        Bias::Config(key, default) => cfg.bool_any(&[key])?.unwrap_or(default),
        Bias::Unless(key) => !cfg.bool_any(&[key])?.unwrap_or(false),
    })
}

impl ModelDims {
    /// Reads the sizes generically, lets the family's hook adjust `spec` and the sizes, then
    /// derives everything that depends on the final row (biases, windows, positions, scalars).
    pub fn from_config(cfg: &HfConfig, spec: &mut ArchSpec) -> Result<Self> {
        let hidden = cfg.require_usize(&["hidden_size", "n_embd", "d_model"])?;
        let heads = cfg.require_usize(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let layers = cfg.require_usize(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?;
        let vocab = cfg.require_usize(&["vocab_size", "padded_vocab_size"])?;
        if heads == 0 || hidden == 0 || layers == 0 || vocab == 0 {
            return Err(cfg.error("num_attention_heads", "sizes must be positive"));
        }
        let kv_heads = cfg.usize_any(&["num_key_value_heads"])?.unwrap_or(heads);
        let head_dim = cfg.usize_any(&["head_dim", "kv_channels"])?.unwrap_or(hidden / heads);
        let intermediate = cfg
            .usize_any(&["intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"])?
            .unwrap_or(4 * hidden);
        let default_eps = if matches!(spec.norm, NormKind::Rms { .. }) { 1e-6 } else { 1e-5 };
        let norm_eps = cfg
            .f64_any(&[
                "rms_norm_eps",
                "layer_norm_eps",
                "layer_norm_epsilon",
                "norm_eps",
                "layernorm_epsilon",
                "norm_epsilon",
            ])?
            .unwrap_or(default_eps);
        let act_name = cfg
            .str_any(&["hidden_activation", "hidden_act", "activation_function", "activation"])
            .unwrap_or(spec.default_act);
        let act = Activation::parse(act_name)
            .ok_or_else(|| cfg.error("hidden_act", format!("unsupported activation `{act_name}`")))?;
        let max_positions = cfg
            .usize_any(&["max_position_embeddings", "n_positions", "max_seq_len", "seq_length"])?
            .unwrap_or(2048);
        // Far above any released model: a corrupt or hostile config is an error naming the key,
        // not a per-layer allocation of many GiB or an overflowing parameter count.
        let bounds = [
            ("num_hidden_layers", layers, 1 << 12),
            ("hidden_size", hidden, 1 << 20),
            ("num_attention_heads", heads, 1 << 14),
            ("num_key_value_heads", kv_heads, 1 << 14),
            ("head_dim", head_dim, 1 << 16),
            ("intermediate_size", intermediate, 1 << 24),
            ("vocab_size", vocab, 1 << 26),
            ("max_position_embeddings", max_positions, 1 << 24),
        ];
        if let Some((key, v, max)) = bounds.into_iter().find(|(_, v, max)| v > max) {
            return Err(cfg.error(key, format!("{v} is not a plausible size (at most {max})")));
        }
        let tie_embeddings = cfg.bool_any(&["tie_word_embeddings"])?.unwrap_or(false);
        let eos_token_id = cfg.get("eos_token_id").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_array().and_then(|a| a.first()).and_then(|x| x.as_u64()))
                .map(|x| x as u32)
        });
        let mut d = Self {
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
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            norm_bias: false,
            head_bias: false,
            windows: vec![None; layers],
            rope: vec![],
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            residual_scale: None,
            logit_scale: None,
            clip_qkv: None,
            alibi_bias_max: 8.0,
            moe: None,
            mla: None,
            eos_token_id,
        };
        d.moe = moe_dims(cfg, spec, layers)?;
        if let Some(hook) = spec.resolve {
            hook(cfg, spec, &mut d)?;
        }
        if d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) {
            return Err(cfg.error(
                "num_key_value_heads",
                format!("{} does not divide {} attention heads", d.kv_heads, d.heads),
            ));
        }
        d.qkv_bias = bias(cfg, spec.qkv_bias)?;
        d.o_bias = bias(cfg, spec.o_bias)?;
        d.mlp_bias = bias(cfg, spec.mlp_bias)?;
        d.norm_bias = spec.norm == NormKind::Layer && bias(cfg, spec.norm_bias)?;
        d.head_bias = bias(cfg, spec.head_bias)?;
        d.windows = windows(cfg, spec, d.layers)?;
        if spec.is_rope() && d.rope.is_empty() {
            let kinds = cfg.layer_types();
            d.rope = (0..d.layers)
                .map(|i| {
                    cfg.rope(spec.default_theta, kinds.as_ref().and_then(|k| k.get(i)).map(String::as_str))
                })
                .collect::<Result<_>>()?;
        }
        if !spec.is_rope() {
            d.rope.clear();
        }
        d.read_scalars(cfg, spec)?;
        Ok(d)
    }

    fn read_scalars(&mut self, cfg: &HfConfig, spec: &ArchSpec) -> Result<()> {
        let num = |key: &str| cfg.f64_any(&[key]);
        for s in spec.scalars {
            match s {
                Scalar::EmbedSqrtHidden => self.embed_scale = Some((self.hidden as f64).sqrt()),
                Scalar::EmbeddingMultiplier => self.embed_scale = num("embedding_multiplier")?,
                Scalar::ResidualMultiplier => self.residual_scale = num("residual_multiplier")?,
                Scalar::LogitsScaling => self.logit_scale = num("logits_scaling")?.map(|s| 1.0 / s),
                Scalar::AttentionMultiplier => {
                    if let Some(m) = num("attention_multiplier")? {
                        self.attn_scale = m;
                    }
                }
                Scalar::QueryPreAttnScalar => {
                    if let Some(s) = num("query_pre_attn_scalar")? {
                        self.attn_scale = 1.0 / s.sqrt();
                    }
                }
                Scalar::AttnSoftcap => self.attn_softcap = num("attn_logit_softcapping")?,
                Scalar::FinalSoftcap => self.final_softcap = num("final_logit_softcapping")?,
                Scalar::ClipQkv => {
                    if self.clip_qkv.is_none() {
                        self.clip_qkv = num("clip_qkv")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Parameters of the whole model (embeddings counted once when tied); approximate for
    /// fused and expert layouts.
    /// Counted in `u128` and saturated, so no config can overflow it.
    pub fn parameter_count(&self) -> usize {
        let [hidden, head_dim, heads, kv_heads, intermediate, vocab, layers] = [
            self.hidden,
            self.head_dim,
            self.heads,
            self.kv_heads,
            self.intermediate,
            self.vocab,
            self.layers,
        ]
        .map(|v| v as u128);
        let attn = hidden * head_dim * (2 * heads + 2 * kv_heads);
        let mlp = match &self.moe {
            Some(m) => {
                let (experts, inter) = (m.experts as u128, m.expert_intermediate as u128);
                experts * 3 * hidden * inter + experts * hidden
            }
            None => 3 * hidden * intermediate,
        };
        let per_layer = attn + mlp + 2 * hidden;
        let embed = vocab * hidden;
        let total = embed * if self.tie_embeddings { 1 } else { 2 } + layers * per_layer + hidden;
        usize::try_from(total).unwrap_or(usize::MAX)
    }
}

fn windows(cfg: &HfConfig, spec: &ArchSpec, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = cfg.usize_any(&["sliding_window"])?;
    let on = match spec.window {
        WindowRule::Never => false,
        WindowRule::Config => true,
        WindowRule::WhenEnabled(key) => cfg.bool_any(&[key])?.unwrap_or(false),
    };
    let types = cfg.layer_types();
    Ok((0..layers)
        .map(|i| {
            if !on {
                return None;
            }
            match &types {
                Some(types) => types.get(i).filter(|t| t.as_str() == "sliding_attention").and(window),
                None => window,
            }
        })
        .collect())
}

fn moe_dims(cfg: &HfConfig, spec: &ArchSpec, layers: usize) -> Result<Option<MoeDims>> {
    let MlpKind::Moe(routing) = spec.mlp else { return Ok(None) };
    let experts = cfg.require_usize(&["num_local_experts", "num_experts", "n_routed_experts"])?;
    let top_k = cfg.require_usize(&["num_experts_per_tok"])?;
    if top_k == 0 || top_k > experts {
        return Err(
            cfg.error("num_experts_per_tok", format!("{top_k} is not between 1 and {experts} experts"))
        );
    }
    let expert_intermediate =
        cfg.usize_any(&["moe_intermediate_size", "intermediate_size"])?.unwrap_or(4 * experts);
    let mut m = MoeDims {
        experts,
        top_k,
        expert_intermediate,
        renormalize: true,
        sparse_layers: vec![true; layers],
        groups: 1,
        topk_group: 1,
        routed_scale: 1.0,
        shared_intermediate: 0,
    };
    match routing {
        MoeRouting::SoftmaxTopK { renormalize } => {
            if let Some(key) = renormalize {
                m.renormalize = cfg.bool_any(&[key])?.unwrap_or(false);
            }
            let step = cfg.usize_any(&["decoder_sparse_step"])?.unwrap_or(1).max(1);
            let dense: Vec<usize> = cfg
                .get("mlp_only_layers")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64().map(|n| n as usize)).collect())
                .unwrap_or_default();
            m.sparse_layers = (0..layers).map(|i| !dense.contains(&i) && (i + 1) % step == 0).collect();
        }
        MoeRouting::SigmoidGroupTopK => {
            m.renormalize = cfg.bool_any(&["norm_topk_prob"])?.unwrap_or(true);
            m.groups = cfg.usize_any(&["n_group"])?.unwrap_or(1).max(1);
            m.topk_group = cfg.usize_any(&["topk_group"])?.unwrap_or(1).max(1);
            if experts % m.groups != 0 || m.topk_group > m.groups {
                return Err(cfg.error(
                    "n_group",
                    format!(
                        "{experts} experts cannot form {} groups of which {} are kept",
                        m.groups, m.topk_group
                    ),
                ));
            }
            if experts / m.groups < 2 {
                return Err(cfg.error(
                    "n_group",
                    "each group needs at least 2 experts (groups are ranked by their top-2 scores)",
                ));
            }
            m.routed_scale = cfg.f64_any(&["routed_scaling_factor"])?.unwrap_or(1.0);
            m.shared_intermediate = cfg.usize_any(&["n_shared_experts"])?.unwrap_or(0) * expert_intermediate;
            let first_dense = cfg.usize_any(&["first_k_dense_replace"])?.unwrap_or(0);
            let freq = cfg.usize_any(&["moe_layer_freq"])?.unwrap_or(1).max(1);
            m.sparse_layers = (0..layers).map(|i| i >= first_dense && i % freq == 0).collect();
        }
    }
    Ok(Some(m))
}
