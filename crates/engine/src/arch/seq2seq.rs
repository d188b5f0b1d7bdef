//! Encoder-decoder families as data: where T5 and BART keep their weights and which of the shared
//! mechanisms (norm kind and placement, positions, biases, head) each uses. One
//! [`crate::model::Seq2SeqLm`] runs both.

use super::{NormKind, TargetInfo};

/// Module paths inside one encoder or decoder layer (relative to the layer). Cross-attention
/// names are empty in the encoder.
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub attn_norm: &'static str,
    pub cross_q: &'static str,
    pub cross_k: &'static str,
    pub cross_v: &'static str,
    pub cross_o: &'static str,
    pub cross_norm: &'static str,
    /// Gate of a gated MLP (T5 v1.1 `wi_0`).
    pub gate: &'static str,
    /// Up projection of a gated MLP (T5 v1.1 `wi_1`).
    pub up: &'static str,
    /// Up projection of a plain MLP (T5 `wi`, BART `fc1`).
    pub plain_up: &'static str,
    pub down: &'static str,
    pub mlp_norm: &'static str,
}

/// One stack (encoder or decoder).
#[derive(Debug, Clone, Copy)]
pub struct StackNames {
    pub layer: &'static str,
    pub layer_names: LayerNames,
    /// Learned position table (BART).
    pub positions: &'static str,
    /// Norm after the embeddings (BART `layernorm_embedding`).
    pub embed_norm: &'static str,
    /// Norm after the last layer (T5 `final_layer_norm`).
    pub final_norm: &'static str,
    /// T5's relative position bias table `[buckets, heads]` (in the first layer).
    pub relative_bias: &'static str,
}

/// Where each sub-layer's norm sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (T5).
    Pre,
    /// `norm(x + f(x))` (BART).
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seq2SeqPositions {
    /// T5 relative position buckets, a learned bias per (bucket, head).
    RelativeBuckets,
    Learned {
        offset: usize,
    },
}

/// One encoder-decoder family.
#[derive(Debug, Clone, Copy)]
pub struct Seq2SeqSpec {
    pub family: &'static str,
    pub model_types: &'static [&'static str],
    pub architectures: &'static [&'static str],
    /// The token embedding shared by encoder, decoder and (when tied) the head.
    pub shared: &'static str,
    pub encoder: StackNames,
    pub decoder: StackNames,
    pub lm_head: &'static str,
    /// A bias added to the logits, stored as a buffer `[1, vocab]` (BART).
    pub logits_bias: &'static str,
    pub norm: NormKind,
    pub placement: NormPlacement,
    pub positions: Seq2SeqPositions,
    /// Whether projections and norms have biases.
    pub biases: bool,
    /// Scores scaled by `1/sqrt(head_dim)` (BART) or not at all (T5).
    pub scaled_attention: bool,
    pub default_targets: &'static [&'static str],
    pub linear_modules: &'static [&'static str],
    pub mechanisms: &'static [&'static str],
}

impl Seq2SeqSpec {
    pub fn targets(&self) -> TargetInfo {
        TargetInfo {
            family: self.family,
            default_targets: self.default_targets,
            linear_modules: self.linear_modules,
            lm_head: self.lm_head,
        }
    }
}

const fn t5_layer(ff: &'static str, ff_norm: &'static str, decoder: bool) -> LayerNames {
    LayerNames {
        q: "layer.0.SelfAttention.q",
        k: "layer.0.SelfAttention.k",
        v: "layer.0.SelfAttention.v",
        o: "layer.0.SelfAttention.o",
        attn_norm: "layer.0.layer_norm",
        cross_q: if decoder { "layer.1.EncDecAttention.q" } else { "" },
        cross_k: if decoder { "layer.1.EncDecAttention.k" } else { "" },
        cross_v: if decoder { "layer.1.EncDecAttention.v" } else { "" },
        cross_o: if decoder { "layer.1.EncDecAttention.o" } else { "" },
        cross_norm: if decoder { "layer.1.layer_norm" } else { "" },
        gate: if decoder { "layer.2.DenseReluDense.wi_0" } else { "layer.1.DenseReluDense.wi_0" },
        up: if decoder { "layer.2.DenseReluDense.wi_1" } else { "layer.1.DenseReluDense.wi_1" },
        plain_up: if decoder { "layer.2.DenseReluDense.wi" } else { "layer.1.DenseReluDense.wi" },
        down: ff,
        mlp_norm: ff_norm,
    }
}

pub const T5: Seq2SeqSpec = Seq2SeqSpec {
    family: "t5",
    model_types: &["t5"],
    architectures: &["T5ForConditionalGeneration"],
    shared: "shared",
    encoder: StackNames {
        layer: "encoder.block.{i}",
        layer_names: t5_layer("layer.1.DenseReluDense.wo", "layer.1.layer_norm", false),
        positions: "",
        embed_norm: "",
        final_norm: "encoder.final_layer_norm",
        relative_bias: "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    },
    decoder: StackNames {
        layer: "decoder.block.{i}",
        layer_names: t5_layer("layer.2.DenseReluDense.wo", "layer.2.layer_norm", true),
        positions: "",
        embed_norm: "",
        final_norm: "decoder.final_layer_norm",
        relative_bias: "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    },
    lm_head: "lm_head",
    logits_bias: "",
    norm: NormKind::Rms { offset: 0.0 },
    placement: NormPlacement::Pre,
    positions: Seq2SeqPositions::RelativeBuckets,
    biases: false,
    scaled_attention: false,
    default_targets: &["q", "v"],
    linear_modules: &["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    mechanisms: &[
        "RMSNorm (pre-norm)",
        "relative position buckets",
        "unscaled attention",
        "gated-GELU (v1.1/Flan) or ReLU MLP",
        "tied head with d_model^-0.5 output scaling (original T5)",
    ],
};

const fn bart_layer(decoder: bool) -> LayerNames {
    LayerNames {
        q: "self_attn.q_proj",
        k: "self_attn.k_proj",
        v: "self_attn.v_proj",
        o: "self_attn.out_proj",
        attn_norm: "self_attn_layer_norm",
        cross_q: if decoder { "encoder_attn.q_proj" } else { "" },
        cross_k: if decoder { "encoder_attn.k_proj" } else { "" },
        cross_v: if decoder { "encoder_attn.v_proj" } else { "" },
        cross_o: if decoder { "encoder_attn.out_proj" } else { "" },
        cross_norm: if decoder { "encoder_attn_layer_norm" } else { "" },
        gate: "",
        up: "",
        plain_up: "fc1",
        down: "fc2",
        mlp_norm: "final_layer_norm",
    }
}

pub const BART: Seq2SeqSpec = Seq2SeqSpec {
    family: "bart",
    model_types: &["bart"],
    architectures: &["BartForConditionalGeneration"],
    shared: "model.shared",
    encoder: StackNames {
        layer: "model.encoder.layers.{i}",
        layer_names: bart_layer(false),
        positions: "model.encoder.embed_positions",
        embed_norm: "model.encoder.layernorm_embedding",
        final_norm: "",
        relative_bias: "",
    },
    decoder: StackNames {
        layer: "model.decoder.layers.{i}",
        layer_names: bart_layer(true),
        positions: "model.decoder.embed_positions",
        embed_norm: "model.decoder.layernorm_embedding",
        final_norm: "",
        relative_bias: "",
    },
    lm_head: "lm_head",
    logits_bias: "final_logits_bias",
    norm: NormKind::Layer,
    placement: NormPlacement::Post,
    positions: Seq2SeqPositions::Learned { offset: 2 },
    biases: true,
    scaled_attention: true,
    default_targets: &["q_proj", "v_proj"],
    linear_modules: &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    mechanisms: &[
        "LayerNorm (post-norm)",
        "learned positions (offset 2)",
        "embedding LayerNorm",
        "GELU MLP",
        "final_logits_bias",
        "tied head",
    ],
};

pub const SEQ2SEQ: &[&Seq2SeqSpec] = &[&T5, &BART];
