//! Families whose checkpoints need `trust_remote_code` in transformers (their modelling files
//! live in the model repository). Their weight layouts map onto the same mechanisms by name;
//! each is proven by a fixture that repacks a native family's tiny model into the layout.

use super::hooks;
use super::table::{LLAMA, LLAMA_NAMES};
use super::*;
use crate::ops::RopeLayout::Interleaved;

/// ChatGLM2, ChatGLM3 and GLM-4 (`THUDM/chatglm3-6b`, `THUDM/glm-4-9b-chat`): fused
/// `query_key_value` (q | k | v), multi-query groups, fused `dense_h_to_4h` (gate | up), RoPE on
/// half of each head with interleaved pairs.
pub const CHATGLM: ArchSpec = ArchSpec {
    family: "chatglm",
    model_types: &["chatglm"],
    architectures: &["ChatGLMModel", "ChatGLMForConditionalGeneration"],
    names: Names {
        embed: "transformer.embedding.word_embeddings",
        layer: "transformer.encoder.layers.{i}",
        q: "",
        k: "",
        v: "",
        qkv: "self_attention.query_key_value",
        o: "self_attention.dense",
        gate: "",
        up: "",
        gate_up: "mlp.dense_h_to_4h",
        down: "mlp.dense_4h_to_h",
        final_norm: "transformer.encoder.final_layernorm",
        lm_head: "transformer.output_layer",
        ..LLAMA_NAMES
    },
    qkv: QkvLayout::Fused,
    mlp: MlpKind::FusedGated,
    position: PositionKind::Rope(Interleaved),
    qkv_bias: Bias::Config("add_qkv_bias", false),
    o_bias: Bias::Config("add_bias_linear", false),
    mlp_bias: Bias::Config("add_bias_linear", false),
    resolve: Some(hooks::chatglm),
    default_targets: &["query_key_value"],
    linear_modules: &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    mechanisms: &[
        "RMSNorm",
        "RoPE on half of each head, interleaved",
        "multi-query groups",
        "fused query_key_value",
        "fused dense_h_to_4h (SwiGLU)",
    ],
    remote_code: true,
    ..LLAMA
};

/// Baichuan-7B (`BaiChuanForCausalLM`): Llama with q/k/v packed into `W_pack`.
pub const BAICHUAN: ArchSpec = ArchSpec {
    family: "baichuan",
    model_types: &["baichuan"],
    architectures: &["BaiChuanForCausalLM"],
    names: Names { q: "", k: "", v: "", qkv: "self_attn.W_pack", ..LLAMA_NAMES },
    qkv: QkvLayout::Fused,
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    resolve: Some(hooks::mha),
    default_targets: &["W_pack"],
    linear_modules: &["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"],
    mechanisms: &["RMSNorm", "RoPE", "MHA", "fused W_pack", "SwiGLU"],
    remote_code: true,
    ..LLAMA
};

/// Baichuan-13B and Baichuan2 (`BaichuanForCausalLM`): `W_pack` with ALiBi (13B) or RoPE (7B).
pub const BAICHUAN_13B: ArchSpec = ArchSpec {
    family: "baichuan-13b",
    architectures: &["BaichuanForCausalLM"],
    position: PositionKind::Alibi(AlibiSlopes::Bloom),
    resolve: Some(hooks::baichuan_13b),
    mechanisms: &["RMSNorm", "ALiBi (13B) / RoPE (Baichuan2-7B)", "MHA", "fused W_pack", "SwiGLU"],
    ..BAICHUAN
};

/// InternLM2 / InternLM2.5: `wqkv` packed per kv group (`[q × group, k, v]`), `feed_forward.w1/w3/w2`.
pub const INTERNLM2: ArchSpec = ArchSpec {
    family: "internlm2",
    model_types: &["internlm2"],
    architectures: &["InternLM2ForCausalLM"],
    names: Names {
        embed: "model.tok_embeddings",
        q: "",
        k: "",
        v: "",
        qkv: "attention.wqkv",
        o: "attention.wo",
        gate: "feed_forward.w1",
        up: "feed_forward.w3",
        down: "feed_forward.w2",
        attn_norm: "attention_norm",
        mlp_norm: "ffn_norm",
        lm_head: "output",
        ..LLAMA_NAMES
    },
    qkv: QkvLayout::Grouped,
    qkv_bias: Bias::Config("bias", false),
    o_bias: Bias::Config("bias", false),
    mlp_bias: Bias::Never,
    default_targets: &["wqkv"],
    linear_modules: &["wqkv", "wo", "w1", "w2", "w3"],
    mechanisms: &["RMSNorm", "RoPE (incl. dynamic NTK)", "GQA", "wqkv packed per kv group", "SwiGLU"],
    remote_code: true,
    ..LLAMA
};
