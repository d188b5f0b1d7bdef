//! The family table. Rows build on [`LLAMA`] with struct-update syntax, so each states only
//! what differs.

use super::*;
use crate::error::{EngineError, Result};
use crate::model::HfConfig;

const LLAMA_NAMES: Names = Names {
    embed: "model.embed_tokens",
    layer: "model.layers.{i}",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.o_proj",
    qkv: "",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    down: "mlp.down_proj",
    input_norm: "input_layernorm",
    post_norm: "post_attention_layernorm",
    final_norm: "model.norm",
    lm_head: "lm_head",
};

const LLAMA_LINEARS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Llama 2/3 and every config that reuses its layout (Yi, DeepSeek-LLM, InternLM3).
pub const LLAMA: ArchSpec = ArchSpec {
    family: "llama",
    model_types: &["llama", "internlm3", "yi", "deepseek"],
    architectures: &["LlamaForCausalLM", "InternLM3ForCausalLM", "YiForCausalLM"],
    names: LLAMA_NAMES,
    norm: NormKind::Rms { offset: 0.0 },
    qkv: QkvLayout::Separate,
    mlp: MlpKind::Gated,
    position: PositionKind::Rope(crate::ops::RopeLayout::HalfSplit),
    residual: Residual::Sequential,
    qkv_bias: Bias::Config("attention_bias", false),
    o_bias: Bias::Config("attention_bias", false),
    mlp_bias: Bias::Config("mlp_bias", false),
    window: WindowRule::Never,
    default_theta: 10000.0,
    default_targets: &["q_proj", "v_proj"],
    linear_modules: LLAMA_LINEARS,
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU"],
};

pub const MISTRAL: ArchSpec = ArchSpec {
    family: "mistral",
    model_types: &["mistral"],
    architectures: &["MistralForCausalLM"],
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    window: WindowRule::Config,
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU", "sliding-window attention"],
    ..LLAMA
};

pub const QWEN2: ArchSpec = ArchSpec {
    family: "qwen2",
    model_types: &["qwen2"],
    architectures: &["Qwen2ForCausalLM"],
    qkv_bias: Bias::Always,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    window: WindowRule::WhenEnabled("use_sliding_window"),
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU", "q/k/v bias"],
    ..LLAMA
};

/// Every supported family, in documentation order.
pub const FAMILIES: &[&ArchSpec] = &[&LLAMA, &MISTRAL, &QWEN2];

pub fn supported_families() -> String {
    FAMILIES.iter().map(|f| f.family).collect::<Vec<_>>().join(", ")
}

/// Picks the family from `architectures`, then `model_type`.
pub fn detect(cfg: &HfConfig) -> Result<&'static ArchSpec> {
    for arch in cfg.architectures() {
        if let Some(f) = FAMILIES.iter().find(|f| f.architectures.contains(&arch.as_str())) {
            return Ok(f);
        }
    }
    if let Some(mt) = cfg.model_type() {
        if let Some(f) = FAMILIES.iter().find(|f| f.model_types.contains(&mt)) {
            return Ok(f);
        }
    }
    let name = cfg
        .architectures()
        .first()
        .cloned()
        .or_else(|| cfg.model_type().map(String::from))
        .unwrap_or_else(|| "(none given)".into());
    Err(EngineError::UnsupportedArchitecture { name: format!("{name} in {}", cfg.path.display()), supported: supported_families() })
}
