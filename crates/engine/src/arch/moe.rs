//! Mixture-of-experts families: Mixtral and Qwen3-MoE (softmax top-k routing) and DeepSeek-V3
//! (multi-head latent attention, group-limited sigmoid routing, shared experts). They reuse the
//! dense rows' names and mechanisms and add the router and expert names.

use super::hooks;
use super::table::{LLAMA, LLAMA_NAMES, QK_NORMS, QWEN3};
use super::*;

pub const MIXTRAL: ArchSpec = ArchSpec {
    family: "mixtral",
    model_types: &["mixtral"],
    architectures: &["MixtralForCausalLM"],
    names: Names {
        gate: "w1",
        up: "w3",
        down: "w2",
        router: "block_sparse_moe.gate",
        experts: "block_sparse_moe.experts.{e}",
        ..LLAMA_NAMES
    },
    mlp: MlpKind::Moe(MoeRouting::SoftmaxTopK { renormalize: None }),
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    window: WindowRule::Config,
    linear_modules: &["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"],
    mechanisms: &["RMSNorm", "RoPE", "GQA", "sparse MoE (softmax top-k, renormalised)", "SwiGLU experts"],
    ..LLAMA
};

pub const QWEN3_MOE: ArchSpec = ArchSpec {
    family: "qwen3_moe",
    model_types: &["qwen3_moe"],
    architectures: &["Qwen3MoeForCausalLM"],
    names: Names {
        router: "mlp.gate",
        experts: "mlp.experts.{e}",
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
        ..QK_NORMS
    },
    mlp: MlpKind::Moe(MoeRouting::SoftmaxTopK { renormalize: Some("norm_topk_prob") }),
    mechanisms: &[
        "RMSNorm",
        "RoPE",
        "GQA",
        "per-head q/k norm",
        "sparse MoE (softmax top-k, norm_topk_prob)",
    ],
    ..QWEN3
};

pub const DEEPSEEK_V3: ArchSpec = ArchSpec {
    family: "deepseek_v3",
    model_types: &["deepseek_v3"],
    architectures: &["DeepseekV3ForCausalLM"],
    names: Names {
        q: "self_attn.q_proj",
        q_a: "self_attn.q_a_proj",
        q_b: "self_attn.q_b_proj",
        kv_a: "self_attn.kv_a_proj_with_mqa",
        kv_b: "self_attn.kv_b_proj",
        q_norm: "self_attn.q_a_layernorm",
        k_norm: "self_attn.kv_a_layernorm",
        router: "mlp.gate",
        experts: "mlp.experts.{e}",
        shared_experts: "mlp.shared_experts",
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
        ..LLAMA_NAMES
    },
    qkv: QkvLayout::Latent,
    mlp: MlpKind::Moe(MoeRouting::SigmoidGroupTopK),
    qkv_bias: Bias::Config("attention_bias", false),
    o_bias: Bias::Config("attention_bias", false),
    mlp_bias: Bias::Never,
    resolve: Some(hooks::deepseek_v3),
    default_targets: &["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
    linear_modules: &[
        "q_proj",
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
    mechanisms: &[
        "RMSNorm",
        "multi-head latent attention (low-rank q and kv, shared rotary key)",
        "interleaved RoPE on a slice of each head (YaRN mscale)",
        "sparse MoE: sigmoid scores, group-limited top-k, correction bias, shared experts",
        "first layers dense",
    ],
    ..LLAMA
};
