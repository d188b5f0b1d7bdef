//! Architectures are data: one [`ArchSpec`] row per family says how its weights are named and
//! which mechanisms it uses; one generic decoder ([`crate::model::CausalLm`]) runs them all, and
//! one encoder-decoder ([`crate::model::Seq2SeqLm`]) runs T5 and BART from the same pieces.
//! Adding a family is a row in `table` (native transformers families), `moe` (mixtures of
//! experts), `remote` (`trust_remote_code` layouts mapped onto the same mechanisms) or `seq2seq`,
//! plus a parity fixture; docs/architectures.md lists each row and its proof. Where a
//! family's structure depends on its `config.json` (Falcon's three layouts, NeoX's parallel
//! residual), the row names a small [`Resolve`] hook (in `hooks`).

mod hooks;
mod moe;
mod remote;
mod seq2seq;
mod table;

pub use moe::{DEEPSEEK_V3, MIXTRAL, QWEN3_MOE};
pub use remote::{BAICHUAN, BAICHUAN_13B, CHATGLM, INTERNLM2};
pub use seq2seq::{BART, LayerNames, NormPlacement, Seq2SeqPositions, Seq2SeqSpec, StackNames, T5};
pub use table::{FAMILIES, Family, SEQ2SEQ_FAMILIES, detect, resolve, supported_families};

use crate::error::Result;
use crate::model::{HfConfig, ModelDims};
use crate::ops::RopeLayout;

/// Where a family keeps its weights, as Hugging Face module paths. `{i}` in `layer` is the block
/// index; the per-block names are relative to it. An empty string means "this family has none".
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub embed: &'static str,
    /// Learned absolute position table (GPT-2 `wpe`, OPT `embed_positions`).
    pub positions: &'static str,
    /// A norm right after the embedding (BLOOM `word_embeddings_layernorm`).
    pub embed_norm: &'static str,
    pub layer: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    /// The fused q/k/v projection when the layout is not [`QkvLayout::Separate`].
    pub qkv: &'static str,
    /// Query/key norms ([`QkNorm`]).
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    /// Gate and up in one matrix, gate rows first ([`MlpKind::FusedGated`]).
    pub gate_up: &'static str,
    pub down: &'static str,
    /// Norm before attention (`input_layernorm`).
    pub attn_norm: &'static str,
    /// Norm of the attention output before the residual add (Gemma 2/3, OLMo 2, GLM-4).
    pub attn_out_norm: &'static str,
    /// Norm before the MLP (`post_attention_layernorm` in Llama; absent when parallel blocks
    /// share the attention norm).
    pub mlp_norm: &'static str,
    /// Norm of the MLP output before the residual add.
    pub mlp_out_norm: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    /// Mixture-of-experts router (`mlp.gate`) and expert prefix (`mlp.experts.{e}`); inside an
    /// expert, `gate`/`up`/`down` are relative to the prefix.
    pub router: &'static str,
    pub experts: &'static str,
    /// Experts every token goes through (DeepSeek `mlp.shared_experts`).
    pub shared_experts: &'static str,
    /// Multi-head latent attention ([`QkvLayout::Latent`]): the query down/up projections (or
    /// `q` when there is no query rank), the key-value down projection (latent + shared rotary
    /// key) and its up projection; `q_norm`/`k_norm` name the latent norms.
    pub q_a: &'static str,
    pub q_b: &'static str,
    pub kv_a: &'static str,
    pub kv_b: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// RMSNorm; `offset` 1 means the weight is applied as `(1 + w)` (Gemma).
    Rms { offset: f64 },
    /// LayerNorm with a weight (and a bias per [`ArchSpec::norm_bias`]).
    Layer,
    /// LayerNorm without any parameters (OLMo).
    LayerNoAffine,
}

/// How q, k and v come out of the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    Separate,
    /// One matrix whose output is `[q (heads·d) | k (kv·d) | v (kv·d)]` (Phi-3, GPT-2 `c_attn`,
    /// StarCoder `c_attn`, MPT `Wqkv`, ChatGLM `query_key_value`, Baichuan `W_pack`).
    Fused,
    /// One matrix whose output is grouped per kv head: `[q × heads/kv, k, v]` for each kv head.
    /// With kv = heads this is GPT-NeoX/BLOOM's per-head `[q, k, v]`; with kv = 1 it equals
    /// [`QkvLayout::Fused`] (Falcon multi-query); in between it is Falcon-40B and InternLM2 `wqkv`.
    Grouped,
    /// Multi-head latent attention (DeepSeek-V2/V3): low-rank query and key-value projections,
    /// RoPE on a separate slice of each head with one rotary key shared by all heads.
    Latent,
}

/// Normalisation of queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// One weight of `head_dim` shared by all heads (Qwen3, Gemma 3, Phi `qk_layernorm`).
    PerHead,
    /// One weight over the whole projection (`heads·head_dim`; OLMo 2).
    Full,
}

/// Routing of a sparse mixture of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeRouting {
    /// softmax over experts, top-k, optionally renormalised (`norm_topk_prob`; Mixtral always).
    SoftmaxTopK { renormalize: Option<&'static str> },
    /// DeepSeek-V3: sigmoid scores; the choice adds `e_score_correction_bias` and is limited to
    /// the `topk_group` groups with the best top-2 sums; chosen scores are renormalised
    /// (`norm_topk_prob`) and scaled by `routed_scaling_factor`.
    SigmoidGroupTopK,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))`: SwiGLU / GeGLU.
    Gated,
    /// Gated with gate and up stored as one matrix, gate first (Phi-3, GLM, ChatGLM).
    FusedGated,
    /// `down(act(up(x)))`.
    Plain,
    /// A sparse mixture of gated experts.
    Moe(MoeRouting),
}

/// How ALiBi slopes are drawn for a number of heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlibiSlopes {
    /// BLOOM / Baichuan-13B: powers of `2^(-8/n)` for the closest power of two, then odd powers
    /// of the next one's base for the remaining heads.
    Bloom,
    /// MPT: `2^(-max·i/n2)` for the next power of two `n2`, odd-then-even interleave when `n` is
    /// not a power of two; `max` from `attn_config.alibi_bias_max`.
    Mpt,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PositionKind {
    Rope(RopeLayout),
    Alibi(AlibiSlopes),
    /// Learned absolute positions; `offset` is added to position ids (BART/OPT use 2).
    Learned {
        offset: usize,
    },
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
    Sequential,
    /// `x + attn(norm1(x)) + mlp(norm2(x))`; without an MLP norm both read `norm1(x)`
    /// (GPT-J, Phi, Falcon-7B share one norm; GPT-NeoX and Falcon-40B have two).
    Parallel,
}

/// Whether a projection (or LayerNorm) has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    Never,
    Always,
    /// Read from a boolean config key, with a default.
    Config(&'static str, bool),
    /// True unless the boolean key is set (MPT `no_bias`).
    Unless(&'static str),
}

/// When layers use a sliding attention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowRule {
    Never,
    /// `sliding_window` applies to every layer (or to those `layer_types` marks as sliding).
    Config,
    /// Only when the boolean key is true (Qwen2's `use_sliding_window`).
    WhenEnabled(&'static str),
}

/// How projection weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]` (`nn.Linear`).
    OutIn,
    /// `[in, out]` (GPT-2's `Conv1D`); transposed on load and back on export.
    InOut,
}

/// Scalar mechanisms a family honours, each read from its config key when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// Embeddings multiplied by `sqrt(hidden)` (Gemma).
    EmbedSqrtHidden,
    /// `embedding_multiplier` (Granite).
    EmbeddingMultiplier,
    /// `residual_multiplier`: block outputs scaled before the residual add (Granite).
    ResidualMultiplier,
    /// Logits divided by `logits_scaling` (Granite).
    LogitsScaling,
    /// `attention_multiplier` replaces `1/sqrt(head_dim)` (Granite).
    AttentionMultiplier,
    /// Scores scaled by `query_pre_attn_scalar^-0.5` (Gemma 2/3).
    QueryPreAttnScalar,
    /// `attn_logit_softcapping` (Gemma 2).
    AttnSoftcap,
    /// `final_logit_softcapping` (Gemma 2/3).
    FinalSoftcap,
    /// `clip_qkv`: q, k, v clamped to `[-c, c]` (OLMo; MPT reads `attn_config.clip_qkv`).
    ClipQkv,
}

/// A config-dependent adjustment of a row (and of the resolved sizes), applied after the generic
/// reading of `config.json`. Fails with a message naming the key for variants that are not
/// supported.
pub type Resolve = fn(&HfConfig, &mut ArchSpec, &mut ModelDims) -> Result<()>;

/// One family of decoder-only models.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub family: &'static str,
    pub model_types: &'static [&'static str],
    pub architectures: &'static [&'static str],
    pub names: Names,
    pub norm: NormKind,
    /// Bias of LayerNorms (ignored for RMSNorm).
    pub norm_bias: Bias,
    pub qkv: QkvLayout,
    pub qk_norm: QkNorm,
    pub mlp: MlpKind,
    pub position: PositionKind,
    pub residual: Residual,
    pub qkv_bias: Bias,
    pub o_bias: Bias,
    pub mlp_bias: Bias,
    pub head_bias: Bias,
    pub window: WindowRule,
    pub default_theta: f64,
    /// Activation when the config names none (BLOOM and MPT hard-code theirs).
    pub default_act: &'static str,
    pub weight_layout: WeightLayout,
    pub scalars: &'static [Scalar],
    pub resolve: Option<Resolve>,
    /// PEFT's default LoRA targets for the family.
    pub default_targets: &'static [&'static str],
    /// Every adaptable linear module name (for `all-linear` and documentation).
    pub linear_modules: &'static [&'static str],
    /// Human-readable list of mechanisms, for the API and docs.
    pub mechanisms: &'static [&'static str],
    /// Layout written by `trust_remote_code` modelling files rather than transformers itself.
    pub remote_code: bool,
}

/// What LoRA target selection needs to know about a family.
#[derive(Debug, Clone, Copy)]
pub struct TargetInfo {
    pub family: &'static str,
    pub default_targets: &'static [&'static str],
    pub linear_modules: &'static [&'static str],
    pub lm_head: &'static str,
}

impl ArchSpec {
    pub fn targets(&self) -> TargetInfo {
        TargetInfo {
            family: self.family,
            default_targets: self.default_targets,
            linear_modules: self.linear_modules,
            lm_head: self.names.lm_head,
        }
    }

    pub fn is_rope(&self) -> bool {
        matches!(self.position, PositionKind::Rope(_))
    }

    pub fn has(&self, s: Scalar) -> bool {
        self.scalars.contains(&s)
    }
}
