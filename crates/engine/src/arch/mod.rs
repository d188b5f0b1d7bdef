//! Architectures are data: one [`ArchSpec`] row per family says how its weights are named and
//! which mechanisms it uses; one generic decoder ([`crate::model::CausalLm`]) runs them all.
//! Adding a family is a row in [`table`] plus a parity fixture.

mod table;

pub use table::{FAMILIES, detect, supported_families};

use crate::ops::RopeLayout;

/// Where a family keeps its weights, as Hugging Face module paths. `{i}` in `layer` is the
/// block index; the per-block names are relative to it.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub embed: &'static str,
    pub layer: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    /// The fused q/k/v projection when [`QkvLayout::Fused`].
    pub qkv: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    pub input_norm: &'static str,
    pub post_norm: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// RMSNorm; `offset` 1 means the weight is applied as `(1 + w)` (Gemma).
    Rms { offset: f64 },
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    Separate,
    Fused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))`: SwiGLU / GeGLU.
    Gated,
    /// `down(act(up(x)))`.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PositionKind {
    Rope(RopeLayout),
    Alibi,
    /// Learned absolute positions; `offset` is added to position ids (BART/OPT use 2).
    Learned { offset: usize },
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
    Sequential,
    /// `x + attn(norm(x)) + mlp(norm(x))` (GPT-J, NeoX, Phi, Falcon).
    Parallel,
}

/// Whether a projection has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    Never,
    Always,
    /// Read from a boolean config key, with a default.
    Config(&'static str, bool),
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

/// One family of models.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub family: &'static str,
    pub model_types: &'static [&'static str],
    pub architectures: &'static [&'static str],
    pub names: Names,
    pub norm: NormKind,
    pub qkv: QkvLayout,
    pub mlp: MlpKind,
    pub position: PositionKind,
    pub residual: Residual,
    pub qkv_bias: Bias,
    pub o_bias: Bias,
    pub mlp_bias: Bias,
    pub window: WindowRule,
    pub default_theta: f64,
    /// PEFT's default LoRA targets for the family.
    pub default_targets: &'static [&'static str],
    /// Every adaptable linear module name (for `all-linear` and documentation).
    pub linear_modules: &'static [&'static str],
    /// Human-readable list of mechanisms, for the API and docs.
    pub mechanisms: &'static [&'static str],
}

impl ArchSpec {
    pub fn is_rope(&self) -> bool {
        matches!(self.position, PositionKind::Rope(_))
    }
}
