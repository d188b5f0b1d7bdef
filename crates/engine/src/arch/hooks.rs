//! [`super::Resolve`] hooks: the few places where a family's structure depends on its
//! `config.json`. Each hook changes the row (norm names, residual kind, positions) and the sizes
//! it owns, and refuses variants no fixture proves, naming the key.

use super::*;
use crate::model::Activation;
use crate::ops::RopeLayout;

fn unsupported(cfg: &HfConfig, key: &str, what: &str) -> crate::error::EngineError {
    cfg.error(key, format!("{what} is not supported"))
}

/// Gemma 1 configs say `gelu` but mean the tanh approximation (transformers rewrites it).
pub(super) fn gemma(_cfg: &HfConfig, _spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if d.act == Activation::GeluErf {
        d.act = Activation::GeluTanh;
    }
    Ok(())
}

/// Phi-1/1.5/2: optional per-head q/k LayerNorm.
pub(super) fn phi(cfg: &HfConfig, spec: &mut ArchSpec, _d: &mut ModelDims) -> Result<()> {
    if cfg.bool_any(&["qk_layernorm"])?.unwrap_or(false) {
        spec.qk_norm = QkNorm::PerHead;
    }
    Ok(())
}

pub(super) fn gpt2(cfg: &HfConfig, _spec: &mut ArchSpec, _d: &mut ModelDims) -> Result<()> {
    if cfg.bool_any(&["scale_attn_by_inverse_layer_idx"])?.unwrap_or(false) {
        return Err(unsupported(
            cfg,
            "scale_attn_by_inverse_layer_idx",
            "scaling attention by the layer index",
        ));
    }
    if !cfg.bool_any(&["scale_attn_weights"])?.unwrap_or(true) {
        return Err(unsupported(cfg, "scale_attn_weights", "unscaled attention"));
    }
    if cfg.bool_any(&["add_cross_attention"])?.unwrap_or(false) {
        return Err(unsupported(cfg, "add_cross_attention", "cross-attention in a decoder-only model"));
    }
    Ok(())
}

/// StarCoder / SantaCoder: one key-value head when `multi_query` (the default).
pub(super) fn gpt_bigcode(cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    gpt2(cfg, spec, d)?;
    d.kv_heads = if cfg.bool_any(&["multi_query"])?.unwrap_or(true) { 1 } else { d.heads };
    Ok(())
}

/// GPT-NeoX / Pythia: parallel residual unless `use_parallel_residual` is false.
pub(super) fn gpt_neox(cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    d.kv_heads = d.heads;
    if !cfg.bool_any(&["use_parallel_residual"])?.unwrap_or(true) {
        spec.residual = Residual::Sequential;
    }
    Ok(())
}

/// Falcon's three layouts: 7B (`multi_query`, one shared norm, parallel), 40B/180B
/// (`new_decoder_architecture`: grouped qkv, `ln_attn` + `ln_mlp`), and the sequential one.
pub(super) fn falcon(cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if cfg.bool_any(&["alibi"])?.unwrap_or(false) {
        return Err(unsupported(cfg, "alibi", "Falcon with ALiBi (falcon-rw)"));
    }
    let new_arch = cfg.bool_any(&["new_decoder_architecture"])?.unwrap_or(false);
    let parallel = cfg.bool_any(&["parallel_attn"])?.unwrap_or(true);
    let num_kv = cfg.usize_any(&["num_kv_heads", "n_head_kv"])?.unwrap_or(d.heads);
    if new_arch {
        if !parallel {
            return Err(unsupported(
                cfg,
                "parallel_attn",
                "new_decoder_architecture without parallel attention",
            ));
        }
        d.kv_heads = num_kv;
        spec.residual = Residual::Parallel;
        match cfg.usize_any(&["num_ln_in_parallel_attn"])?.unwrap_or(2) {
            2 => {
                spec.names.attn_norm = "ln_attn";
                spec.names.mlp_norm = "ln_mlp";
            }
            1 => spec.names.mlp_norm = "",
            n => return Err(cfg.error("num_ln_in_parallel_attn", format!("expected 1 or 2, got {n}"))),
        }
    } else {
        d.kv_heads = if cfg.bool_any(&["multi_query"])?.unwrap_or(true) { 1 } else { d.heads };
        if parallel {
            spec.residual = Residual::Parallel;
            spec.names.mlp_norm = "";
        } else {
            spec.residual = Residual::Sequential;
            spec.names.mlp_norm = "post_attention_layernorm";
        }
    }
    Ok(())
}

pub(super) fn bloom(cfg: &HfConfig, _spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if cfg.bool_any(&["apply_residual_connection_post_layernorm"])?.unwrap_or(false) {
        return Err(unsupported(
            cfg,
            "apply_residual_connection_post_layernorm",
            "a residual taken after the norm",
        ));
    }
    d.kv_heads = d.heads;
    Ok(())
}

/// MPT keeps its attention settings in `attn_config`; its MLP is always 4× wide in transformers.
pub(super) fn mpt(cfg: &HfConfig, _spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    let attn = cfg.get("attn_config").cloned().unwrap_or(serde_json::Value::Null);
    let get = |k: &str| attn.get(k).filter(|v| !v.is_null());
    if !get("alibi").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Err(unsupported(cfg, "attn_config.alibi", "MPT without ALiBi"));
    }
    if get("qk_ln").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Err(unsupported(cfg, "attn_config.qk_ln", "MPT q/k LayerNorm"));
    }
    if let Some(m) = get("alibi_bias_max").and_then(|v| v.as_f64()) {
        d.alibi_bias_max = m;
    }
    d.clip_qkv = get("clip_qkv").and_then(|v| v.as_f64());
    if let Some(s) = get("softmax_scale").and_then(|v| v.as_f64()) {
        d.attn_scale = s;
    }
    d.kv_heads = d.heads;
    d.intermediate = 4 * d.hidden;
    Ok(())
}

/// StableLM: optional parallel residual (one shared norm); per-head q/k LayerNorms (a separate
/// weight per head) are refused.
pub(super) fn stablelm(cfg: &HfConfig, spec: &mut ArchSpec, _d: &mut ModelDims) -> Result<()> {
    if cfg.bool_any(&["qk_layernorm"])?.unwrap_or(false) {
        return Err(unsupported(cfg, "qk_layernorm", "StableLM per-head q/k LayerNorm"));
    }
    if cfg.bool_any(&["use_parallel_residual"])?.unwrap_or(false) {
        spec.residual = Residual::Parallel;
        spec.names.mlp_norm = "";
    }
    Ok(())
}

pub(super) fn opt(cfg: &HfConfig, _spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if !cfg.bool_any(&["do_layer_norm_before"])?.unwrap_or(true) {
        return Err(unsupported(cfg, "do_layer_norm_before", "post-LayerNorm OPT (opt-350m)"));
    }
    if cfg.bool_any(&["_remove_final_layer_norm"])?.unwrap_or(false) {
        return Err(unsupported(cfg, "_remove_final_layer_norm", "OPT without a final LayerNorm"));
    }
    if !cfg.bool_any(&["layer_norm_elementwise_affine"])?.unwrap_or(true) {
        return Err(unsupported(cfg, "layer_norm_elementwise_affine", "OPT LayerNorms without weights"));
    }
    if let Some(p) = cfg.usize_any(&["word_embed_proj_dim"])?
        && p != d.hidden
    {
        return Err(unsupported(
            cfg,
            "word_embed_proj_dim",
            "an embedding projection (word_embed_proj_dim ≠ hidden_size)",
        ));
    }
    d.kv_heads = d.heads;
    Ok(())
}

/// ChatGLM2/3/4 (remote code): RoPE on the first half of each head, interleaved pairs, base
/// `10000 · rope_ratio`; multi-query groups; RMSNorm or LayerNorm.
pub(super) fn chatglm(cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if cfg.get("position_encoding_2d").is_some() {
        return Err(unsupported(cfg, "position_encoding_2d", "ChatGLM-6B (v1) with 2D positions"));
    }
    if cfg.bool_any(&["apply_residual_connection_post_layernorm"])?.unwrap_or(false) {
        return Err(unsupported(
            cfg,
            "apply_residual_connection_post_layernorm",
            "a residual taken after the norm",
        ));
    }
    if !cfg.bool_any(&["post_layer_norm"])?.unwrap_or(true) {
        return Err(unsupported(cfg, "post_layer_norm", "ChatGLM without a final norm"));
    }
    if cfg.bool_any(&["original_rope"])? == Some(false) {
        return Err(unsupported(cfg, "original_rope", "ChatGLM's non-original RoPE"));
    }
    if !cfg.bool_any(&["rmsnorm"])?.unwrap_or(true) {
        spec.norm = NormKind::Layer;
        spec.norm_bias = Bias::Always;
    }
    d.kv_heads = if cfg.bool_any(&["multi_query_attention"])?.unwrap_or(false) {
        cfg.require_usize(&["multi_query_group_num"])?
    } else {
        d.heads
    };
    let ratio = cfg.f64_any(&["rope_ratio"])?.unwrap_or(1.0);
    let params = crate::model::RopeParams {
        theta: 10000.0 * ratio,
        scaling: crate::model::RopeScaling::None,
        partial_factor: 0.5,
    };
    spec.position = PositionKind::Rope(RopeLayout::Interleaved);
    d.rope = vec![params; d.layers];
    Ok(())
}

/// Baichuan-13B and Baichuan2 share `BaichuanForCausalLM`: the 13B models use ALiBi, the 7B
/// (hidden 4096) RoPE — the rule vLLM follows too.
pub(super) fn baichuan_13b(_cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    if d.hidden == 4096 {
        spec.position = PositionKind::Rope(RopeLayout::HalfSplit);
    }
    d.kv_heads = d.heads;
    Ok(())
}

pub(super) fn mha(_cfg: &HfConfig, _spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    d.kv_heads = d.heads;
    Ok(())
}

/// DeepSeek-V3: multi-head latent attention sizes, the rotary slice as the RoPE head size, the
/// pair layout (`rope_interleave`) and the YaRN `mscale_all_dim` correction of the score scale.
pub(super) fn deepseek_v3(cfg: &HfConfig, spec: &mut ArchSpec, d: &mut ModelDims) -> Result<()> {
    let mla = crate::model::MlaDims {
        q_rank: cfg.usize_any(&["q_lora_rank"])?,
        kv_rank: cfg.require_usize(&["kv_lora_rank"])?,
        nope: cfg.require_usize(&["qk_nope_head_dim"])?,
        rope: cfg.require_usize(&["qk_rope_head_dim"])?,
        v: cfg.require_usize(&["v_head_dim"])?,
    };
    if !mla.rope.is_multiple_of(2) {
        return Err(cfg.error("qk_rope_head_dim", "must be even"));
    }
    d.mla = Some(mla);
    d.head_dim = mla.rope;
    d.kv_heads = d.heads;
    let interleave = cfg.bool_any(&["rope_interleave"])?.unwrap_or(true);
    spec.position =
        PositionKind::Rope(if interleave { RopeLayout::Interleaved } else { RopeLayout::HalfSplit });
    let mut scale = 1.0 / ((mla.nope + mla.rope) as f64).sqrt();
    if let crate::model::RopeScaling::Yarn { factor, mscale_all_dim: Some(all), .. } =
        cfg.rope(spec.default_theta, None)?.scaling
        && all != 0.0
        && factor > 1.0
    {
        let m = 0.1 * all * factor.ln() + 1.0;
        scale *= m * m;
    }
    d.attn_scale = scale;
    Ok(())
}
