//! The family table of transformers' own decoder-only models. Rows build on [`LLAMA`] with
//! struct-update syntax, so each states only what differs; [`detect`] picks a row (or an
//! encoder-decoder row) from `architectures`, then `model_type`.

use super::hooks;
use super::moe::{DEEPSEEK_V3, MIXTRAL, QWEN3_MOE};
use super::remote::{BAICHUAN, BAICHUAN_13B, CHATGLM, INTERNLM2};
use super::seq2seq::{SEQ2SEQ, Seq2SeqSpec};
use super::*;
use crate::error::{EngineError, Result};
use crate::model::{HfConfig, ModelDims};
use crate::ops::RopeLayout::{HalfSplit, Interleaved};

pub(super) const LLAMA_NAMES: Names = Names {
    embed: "model.embed_tokens",
    positions: "",
    embed_norm: "",
    layer: "model.layers.{i}",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.o_proj",
    qkv: "",
    q_norm: "",
    k_norm: "",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    gate_up: "",
    down: "mlp.down_proj",
    attn_norm: "input_layernorm",
    attn_out_norm: "",
    mlp_norm: "post_attention_layernorm",
    mlp_out_norm: "",
    final_norm: "model.norm",
    lm_head: "lm_head",
    router: "",
    experts: "",
    shared_experts: "",
    q_a: "",
    q_b: "",
    kv_a: "",
    kv_b: "",
};

pub(super) const LLAMA_LINEARS: &[&str] =
    &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
pub(super) const QK_NORMS: Names =
    Names { q_norm: "self_attn.q_norm", k_norm: "self_attn.k_norm", ..LLAMA_NAMES };
const SANDWICH: Names = Names {
    attn_out_norm: "post_attention_layernorm",
    mlp_norm: "pre_feedforward_layernorm",
    mlp_out_norm: "post_feedforward_layernorm",
    ..LLAMA_NAMES
};
const GLM_NAMES: Names = Names { gate: "", up: "", gate_up: "mlp.gate_up_proj", ..LLAMA_NAMES };
const GLM_LINEARS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"];
const NEOX_LINEARS: &[&str] = &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];
const GPT2_NAMES: Names = Names {
    embed: "transformer.wte",
    positions: "transformer.wpe",
    layer: "transformer.h.{i}",
    qkv: "attn.c_attn",
    o: "attn.c_proj",
    gate: "",
    up: "mlp.c_fc",
    down: "mlp.c_proj",
    attn_norm: "ln_1",
    mlp_norm: "ln_2",
    final_norm: "transformer.ln_f",
    ..LLAMA_NAMES
};
const GPT2_LINEARS: &[&str] = &["c_attn", "c_proj", "c_fc"];

/// Llama 2/3 and every config that reuses its layout (Yi, DeepSeek-LLM, InternLM3).
pub const LLAMA: ArchSpec = ArchSpec {
    family: "llama",
    model_types: &["llama", "internlm3", "yi", "deepseek"],
    architectures: &["LlamaForCausalLM", "InternLM3ForCausalLM", "YiForCausalLM"],
    names: LLAMA_NAMES,
    norm: NormKind::Rms { offset: 0.0 },
    norm_bias: Bias::Never,
    qkv: QkvLayout::Separate,
    qk_norm: QkNorm::None,
    mlp: MlpKind::Gated,
    position: PositionKind::Rope(HalfSplit),
    residual: Residual::Sequential,
    qkv_bias: Bias::Config("attention_bias", false),
    o_bias: Bias::Config("attention_bias", false),
    mlp_bias: Bias::Config("mlp_bias", false),
    head_bias: Bias::Never,
    window: WindowRule::Never,
    default_theta: 10000.0,
    default_act: "silu",
    weight_layout: WeightLayout::OutIn,
    scalars: &[],
    resolve: None,
    default_targets: &["q_proj", "v_proj"],
    linear_modules: LLAMA_LINEARS,
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU"],
    remote_code: false,
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

pub const QWEN3: ArchSpec = ArchSpec {
    family: "qwen3",
    model_types: &["qwen3"],
    architectures: &["Qwen3ForCausalLM"],
    names: QK_NORMS,
    qk_norm: QkNorm::PerHead,
    mlp_bias: Bias::Never,
    window: WindowRule::WhenEnabled("use_sliding_window"),
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU", "per-head q/k RMSNorm", "head_dim ≠ hidden/heads"],
    ..LLAMA
};

pub const GEMMA: ArchSpec = ArchSpec {
    family: "gemma",
    model_types: &["gemma"],
    architectures: &["GemmaForCausalLM"],
    norm: NormKind::Rms { offset: 1.0 },
    mlp_bias: Bias::Never,
    default_act: "gelu_pytorch_tanh",
    scalars: &[Scalar::EmbedSqrtHidden],
    resolve: Some(hooks::gemma),
    mechanisms: &[
        "RMSNorm (1+w)",
        "RoPE",
        "MQA/GQA",
        "GeGLU (tanh)",
        "embeddings × √hidden",
        "tied embeddings",
    ],
    ..LLAMA
};

pub const GEMMA2: ArchSpec = ArchSpec {
    family: "gemma2",
    model_types: &["gemma2"],
    architectures: &["Gemma2ForCausalLM"],
    names: SANDWICH,
    window: WindowRule::Config,
    scalars: &[
        Scalar::EmbedSqrtHidden,
        Scalar::QueryPreAttnScalar,
        Scalar::AttnSoftcap,
        Scalar::FinalSoftcap,
    ],
    mechanisms: &[
        "RMSNorm (1+w), pre+post norms",
        "RoPE",
        "GQA",
        "GeGLU (tanh)",
        "attention and final logit soft-capping",
        "local (sliding) / global layers",
        "query_pre_attn_scalar",
        "embeddings × √hidden",
    ],
    ..GEMMA
};

pub const GEMMA3: ArchSpec = ArchSpec {
    family: "gemma3_text",
    model_types: &["gemma3_text"],
    architectures: &["Gemma3ForCausalLM"],
    names: Names { q_norm: "self_attn.q_norm", k_norm: "self_attn.k_norm", ..SANDWICH },
    qk_norm: QkNorm::PerHead,
    scalars: &[Scalar::EmbedSqrtHidden, Scalar::QueryPreAttnScalar, Scalar::FinalSoftcap],
    mechanisms: &[
        "RMSNorm (1+w), pre+post norms",
        "per-head q/k norm",
        "RoPE with per-layer-type theta (local/global)",
        "local (sliding) / global layers",
        "final logit soft-capping",
        "query_pre_attn_scalar",
        "embeddings × √hidden",
    ],
    ..GEMMA2
};

pub const PHI: ArchSpec = ArchSpec {
    family: "phi",
    model_types: &["phi"],
    architectures: &["PhiForCausalLM"],
    names: Names {
        o: "self_attn.dense",
        q_norm: "self_attn.q_layernorm",
        k_norm: "self_attn.k_layernorm",
        gate: "",
        up: "mlp.fc1",
        down: "mlp.fc2",
        mlp_norm: "",
        final_norm: "model.final_layernorm",
        ..LLAMA_NAMES
    },
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    mlp: MlpKind::Plain,
    residual: Residual::Parallel,
    qkv_bias: Bias::Always,
    o_bias: Bias::Always,
    mlp_bias: Bias::Always,
    head_bias: Bias::Always,
    default_act: "gelu_new",
    resolve: Some(hooks::phi),
    default_targets: &["q_proj", "v_proj"],
    linear_modules: &["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    mechanisms: &[
        "LayerNorm",
        "partial RoPE",
        "parallel attention + MLP (one norm)",
        "GELU MLP",
        "biases everywhere",
    ],
    ..LLAMA
};

pub const PHI3: ArchSpec = ArchSpec {
    family: "phi3",
    model_types: &["phi3"],
    architectures: &["Phi3ForCausalLM"],
    names: Names {
        q: "",
        k: "",
        v: "",
        qkv: "self_attn.qkv_proj",
        gate: "",
        up: "",
        gate_up: "mlp.gate_up_proj",
        ..LLAMA_NAMES
    },
    qkv: QkvLayout::Fused,
    mlp: MlpKind::FusedGated,
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    window: WindowRule::Config,
    default_targets: &["qkv_proj"],
    linear_modules: &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    mechanisms: &["RMSNorm", "RoPE (incl. LongRoPE)", "GQA", "fused qkv_proj", "fused gate_up_proj (SwiGLU)"],
    ..LLAMA
};

pub const GPT2: ArchSpec = ArchSpec {
    family: "gpt2",
    model_types: &["gpt2"],
    architectures: &["GPT2LMHeadModel"],
    names: GPT2_NAMES,
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    qkv: QkvLayout::Fused,
    mlp: MlpKind::Plain,
    position: PositionKind::Learned { offset: 0 },
    qkv_bias: Bias::Always,
    o_bias: Bias::Always,
    mlp_bias: Bias::Always,
    default_act: "gelu_new",
    weight_layout: WeightLayout::InOut,
    resolve: Some(hooks::gpt2),
    default_targets: &["c_attn"],
    linear_modules: GPT2_LINEARS,
    mechanisms: &[
        "LayerNorm",
        "learned positions",
        "MHA",
        "fused c_attn",
        "Conv1D [in,out] weights",
        "GELU MLP",
    ],
    ..LLAMA
};

pub const GPT_BIGCODE: ArchSpec = ArchSpec {
    family: "gpt_bigcode",
    model_types: &["gpt_bigcode"],
    architectures: &["GPTBigCodeForCausalLM"],
    weight_layout: WeightLayout::OutIn,
    resolve: Some(hooks::gpt_bigcode),
    mechanisms: &[
        "LayerNorm",
        "learned positions",
        "MQA (fused c_attn: q, then one k and one v head)",
        "GELU MLP",
    ],
    ..GPT2
};

pub const GPT_NEOX: ArchSpec = ArchSpec {
    family: "gpt_neox",
    model_types: &["gpt_neox"],
    architectures: &["GPTNeoXForCausalLM"],
    names: Names {
        embed: "gpt_neox.embed_in",
        layer: "gpt_neox.layers.{i}",
        qkv: "attention.query_key_value",
        o: "attention.dense",
        gate: "",
        up: "mlp.dense_h_to_4h",
        down: "mlp.dense_4h_to_h",
        final_norm: "gpt_neox.final_layer_norm",
        lm_head: "embed_out",
        ..LLAMA_NAMES
    },
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    qkv: QkvLayout::Grouped,
    mlp: MlpKind::Plain,
    residual: Residual::Parallel,
    qkv_bias: Bias::Config("attention_bias", true),
    o_bias: Bias::Config("attention_bias", true),
    mlp_bias: Bias::Always,
    default_act: "gelu",
    resolve: Some(hooks::gpt_neox),
    default_targets: &["query_key_value"],
    linear_modules: NEOX_LINEARS,
    mechanisms: &[
        "LayerNorm",
        "partial RoPE (rotary_pct)",
        "parallel residual (two norms)",
        "per-head fused qkv",
        "GELU MLP",
    ],
    ..LLAMA
};

pub const FALCON: ArchSpec = ArchSpec {
    family: "falcon",
    model_types: &["falcon", "RefinedWeb", "RefinedWebModel"],
    architectures: &["FalconForCausalLM", "RWForCausalLM"],
    names: Names {
        embed: "transformer.word_embeddings",
        layer: "transformer.h.{i}",
        qkv: "self_attention.query_key_value",
        o: "self_attention.dense",
        mlp_norm: "",
        final_norm: "transformer.ln_f",
        lm_head: "lm_head",
        ..GPT_NEOX.names
    },
    qkv_bias: Bias::Config("bias", false),
    o_bias: Bias::Config("bias", false),
    mlp_bias: Bias::Config("bias", false),
    resolve: Some(hooks::falcon),
    mechanisms: &[
        "LayerNorm",
        "RoPE",
        "MQA (7B) / grouped fused qkv (40B)",
        "parallel attention + MLP",
        "GELU MLP",
    ],
    ..GPT_NEOX
};

pub const BLOOM: ArchSpec = ArchSpec {
    family: "bloom",
    model_types: &["bloom"],
    architectures: &["BloomForCausalLM"],
    names: Names {
        embed: "transformer.word_embeddings",
        embed_norm: "transformer.word_embeddings_layernorm",
        layer: "transformer.h.{i}",
        qkv: "self_attention.query_key_value",
        o: "self_attention.dense",
        final_norm: "transformer.ln_f",
        lm_head: "lm_head",
        ..GPT_NEOX.names
    },
    position: PositionKind::Alibi(AlibiSlopes::Bloom),
    residual: Residual::Sequential,
    qkv_bias: Bias::Always,
    o_bias: Bias::Always,
    default_act: "gelu_new",
    resolve: Some(hooks::bloom),
    mechanisms: &["LayerNorm", "ALiBi", "embedding LayerNorm", "per-head fused qkv", "GELU (tanh) MLP"],
    ..GPT_NEOX
};

pub const MPT: ArchSpec = ArchSpec {
    family: "mpt",
    model_types: &["mpt"],
    architectures: &["MptForCausalLM", "MPTForCausalLM"],
    names: Names {
        embed: "transformer.wte",
        layer: "transformer.blocks.{i}",
        qkv: "attn.Wqkv",
        o: "attn.out_proj",
        gate: "",
        up: "ffn.up_proj",
        down: "ffn.down_proj",
        attn_norm: "norm_1",
        mlp_norm: "norm_2",
        final_norm: "transformer.norm_f",
        ..LLAMA_NAMES
    },
    norm: NormKind::Layer,
    norm_bias: Bias::Unless("no_bias"),
    qkv: QkvLayout::Fused,
    mlp: MlpKind::Plain,
    position: PositionKind::Alibi(AlibiSlopes::Mpt),
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    default_act: "gelu",
    resolve: Some(hooks::mpt),
    default_targets: &["Wqkv"],
    linear_modules: &["Wqkv", "out_proj", "up_proj", "down_proj"],
    mechanisms: &[
        "LayerNorm (optionally without bias)",
        "ALiBi (alibi_bias_max)",
        "fused Wqkv",
        "clip_qkv",
        "GELU MLP",
    ],
    ..LLAMA
};

pub const STARCODER2: ArchSpec = ArchSpec {
    family: "starcoder2",
    model_types: &["starcoder2"],
    architectures: &["Starcoder2ForCausalLM"],
    names: Names { gate: "", up: "mlp.c_fc", down: "mlp.c_proj", ..LLAMA_NAMES },
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    mlp: MlpKind::Plain,
    qkv_bias: Bias::Config("use_bias", true),
    o_bias: Bias::Config("use_bias", true),
    mlp_bias: Bias::Config("use_bias", true),
    window: WindowRule::Config,
    default_act: "gelu_pytorch_tanh",
    linear_modules: &["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    mechanisms: &["LayerNorm", "RoPE", "GQA", "GELU MLP", "biases", "sliding window"],
    ..LLAMA
};

pub const OLMO: ArchSpec = ArchSpec {
    family: "olmo",
    model_types: &["olmo"],
    architectures: &["OlmoForCausalLM"],
    norm: NormKind::LayerNoAffine,
    scalars: &[Scalar::ClipQkv],
    mechanisms: &["non-parametric LayerNorm", "RoPE", "SwiGLU", "clip_qkv"],
    ..LLAMA
};

pub const OLMO2: ArchSpec = ArchSpec {
    family: "olmo2",
    model_types: &["olmo2"],
    architectures: &["Olmo2ForCausalLM"],
    names: Names {
        attn_norm: "",
        attn_out_norm: "post_attention_layernorm",
        mlp_norm: "",
        mlp_out_norm: "post_feedforward_layernorm",
        ..QK_NORMS
    },
    qk_norm: QkNorm::Full,
    mechanisms: &[
        "RMSNorm after attention/MLP (post-norm)",
        "q/k RMSNorm over the whole projection",
        "RoPE",
        "SwiGLU",
    ],
    ..LLAMA
};

pub const GLM: ArchSpec = ArchSpec {
    family: "glm",
    model_types: &["glm"],
    architectures: &["GlmForCausalLM"],
    names: GLM_NAMES,
    mlp: MlpKind::FusedGated,
    position: PositionKind::Rope(Interleaved),
    qkv_bias: Bias::Config("attention_bias", true),
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    linear_modules: GLM_LINEARS,
    mechanisms: &["RMSNorm", "partial interleaved RoPE", "GQA", "q/k/v bias", "fused gate_up_proj (SwiGLU)"],
    ..LLAMA
};

pub const GLM4: ArchSpec = ArchSpec {
    family: "glm4",
    model_types: &["glm4"],
    architectures: &["Glm4ForCausalLM"],
    names: Names {
        attn_out_norm: "post_self_attn_layernorm",
        mlp_out_norm: "post_mlp_layernorm",
        ..GLM_NAMES
    },
    mechanisms: &[
        "RMSNorm, pre+post norms",
        "partial interleaved RoPE",
        "GQA",
        "q/k/v bias",
        "fused gate_up_proj (SwiGLU)",
    ],
    ..GLM
};

pub const STABLELM: ArchSpec = ArchSpec {
    family: "stablelm",
    model_types: &["stablelm"],
    architectures: &["StableLmForCausalLM"],
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    qkv_bias: Bias::Config("use_qkv_bias", false),
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    resolve: Some(hooks::stablelm),
    mechanisms: &["LayerNorm", "partial RoPE", "GQA", "SwiGLU", "q/k/v bias", "optional parallel residual"],
    ..LLAMA
};

pub const GRANITE: ArchSpec = ArchSpec {
    family: "granite",
    model_types: &["granite"],
    architectures: &["GraniteForCausalLM"],
    scalars: &[
        Scalar::EmbeddingMultiplier,
        Scalar::ResidualMultiplier,
        Scalar::LogitsScaling,
        Scalar::AttentionMultiplier,
    ],
    mechanisms: &["RMSNorm", "RoPE", "GQA", "SwiGLU", "embedding/residual/attention/logit multipliers"],
    ..LLAMA
};

pub const OPT: ArchSpec = ArchSpec {
    family: "opt",
    model_types: &["opt"],
    architectures: &["OPTForCausalLM"],
    names: Names {
        embed: "model.decoder.embed_tokens",
        positions: "model.decoder.embed_positions",
        layer: "model.decoder.layers.{i}",
        o: "self_attn.out_proj",
        gate: "",
        up: "fc1",
        down: "fc2",
        attn_norm: "self_attn_layer_norm",
        mlp_norm: "final_layer_norm",
        final_norm: "model.decoder.final_layer_norm",
        ..LLAMA_NAMES
    },
    norm: NormKind::Layer,
    norm_bias: Bias::Always,
    mlp: MlpKind::Plain,
    position: PositionKind::Learned { offset: 2 },
    qkv_bias: Bias::Config("enable_bias", true),
    o_bias: Bias::Config("enable_bias", true),
    mlp_bias: Bias::Config("enable_bias", true),
    default_act: "relu",
    resolve: Some(hooks::opt),
    linear_modules: &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    mechanisms: &["LayerNorm", "learned positions (offset 2)", "MHA", "ReLU MLP", "biases"],
    ..LLAMA
};

/// Every supported decoder-only family, in documentation order.
pub const FAMILIES: &[&ArchSpec] = &[
    &LLAMA,
    &MISTRAL,
    &QWEN2,
    &QWEN3,
    &GEMMA,
    &GEMMA2,
    &GEMMA3,
    &PHI,
    &PHI3,
    &GPT2,
    &GPT_NEOX,
    &FALCON,
    &BLOOM,
    &MPT,
    &STARCODER2,
    &OLMO,
    &OLMO2,
    &GLM,
    &GLM4,
    &STABLELM,
    &GRANITE,
    &OPT,
    &GPT_BIGCODE,
    &MIXTRAL,
    &QWEN3_MOE,
    &DEEPSEEK_V3,
    &CHATGLM,
    &BAICHUAN,
    &BAICHUAN_13B,
    &INTERNLM2,
];

/// Every supported encoder-decoder family.
pub const SEQ2SEQ_FAMILIES: &[&Seq2SeqSpec] = SEQ2SEQ;

/// The names of every supported family, decoder-only first.
pub fn supported_families() -> String {
    FAMILIES
        .iter()
        .map(|f| f.family)
        .chain(SEQ2SEQ_FAMILIES.iter().map(|f| f.family))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`detect`] found.
#[derive(Debug, Clone, Copy)]
pub enum Family {
    Decoder(&'static ArchSpec),
    Seq2Seq(&'static Seq2SeqSpec),
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self {
            Family::Decoder(s) => s.family,
            Family::Seq2Seq(s) => s.family,
        }
    }
}

/// Picks the family from `architectures`, then `model_type`.
pub fn detect(cfg: &HfConfig) -> Result<Family> {
    for arch in cfg.architectures() {
        if let Some(f) = FAMILIES.iter().find(|f| f.architectures.contains(&arch.as_str())) {
            return Ok(Family::Decoder(f));
        }
        if let Some(f) = SEQ2SEQ_FAMILIES.iter().find(|f| f.architectures.contains(&arch.as_str())) {
            return Ok(Family::Seq2Seq(f));
        }
    }
    if let Some(mt) = cfg.model_type() {
        if let Some(f) = FAMILIES.iter().find(|f| f.model_types.contains(&mt)) {
            return Ok(Family::Decoder(f));
        }
        if let Some(f) = SEQ2SEQ_FAMILIES.iter().find(|f| f.model_types.contains(&mt)) {
            return Ok(Family::Seq2Seq(f));
        }
    }
    let name = cfg
        .architectures()
        .first()
        .cloned()
        .or_else(|| cfg.model_type().map(String::from))
        .unwrap_or_else(|| "(none given)".into());
    Err(EngineError::UnsupportedArchitecture {
        name: format!("{name} in {}", cfg.path.display()),
        supported: supported_families(),
    })
}

/// The decoder-only row for a config, adjusted to it, with its resolved sizes. Fails for
/// encoder-decoder models (load those with [`crate::model::load_seq2seq_lm`]).
pub fn resolve(cfg: &HfConfig) -> Result<(ArchSpec, ModelDims)> {
    match detect(cfg)? {
        Family::Decoder(row) => {
            let mut spec = *row;
            let dims = ModelDims::from_config(cfg, &mut spec)?;
            Ok((spec, dims))
        }
        Family::Seq2Seq(s) => Err(EngineError::file(
            &cfg.path,
            format!("{} is an encoder-decoder model; it is loaded as a sequence-to-sequence model", s.family),
        )),
    }
}
