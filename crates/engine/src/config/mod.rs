//! The training configuration: TOML files, `--set section.key=value` overrides and the JSON body
//! of the studio's create-job request all land in one [`TrainConfig`]. Unknown keys, wrong types
//! and out-of-range values are errors that name the key (`train.lr`) and what is allowed.

mod diff;
mod validate;

pub use diff::result_affecting_changes;
pub use validate::FieldError;

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub method: MethodSection,
    pub lora: LoraSection,
    pub quant: QuantSection,
    pub data: DataSection,
    pub train: TrainSection,
    pub checkpoint: CheckpointSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A Hugging Face model folder or a GGUF file.
    pub path: PathBuf,
    /// Compute and storage dtype of the base weights: auto, f32, bf16 or f16.
    pub dtype: String,
    /// auto, cpu, cuda, cuda:N or metal.
    pub device: String,
    /// How a frozen base (LoRA, evaluation) is held when the run computes in f32 on the CPU:
    /// `compute` (an f32 copy), `stored` (the checkpoint's bf16/f16 values, half the memory,
    /// widened exactly inside each product: the same results) or `auto` (see
    /// [`ModelSection::keeps_stored_dtype`]).
    pub frozen_dtype: String,
}

impl ModelSection {
    /// Whether a frozen 16-bit base stays as stored: `stored`, or `auto` for a run computing in
    /// f32 (or `auto` dtype, f32 on the CPU) where the CPU kernels widen W as they pack it
    /// ([`crate::quant::fused_half_products`]): there the stored base is as fast as an f32 copy
    /// at half its memory. Elsewhere `auto` is `compute` (bf16 products keep their prepared
    /// layout; on a GPU the setting does nothing).
    pub fn keeps_stored_dtype(&self) -> bool {
        match self.frozen_dtype.as_str() {
            "stored" => true,
            "auto" => {
                matches!(self.dtype.as_str(), "auto" | "f32")
                    && crate::ops::cpu_kernels_enabled()
                    && crate::quant::fused_half_products()
            }
            _ => false,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            dtype: "auto".into(),
            device: "auto".into(),
            frozen_dtype: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    Lora,
    Qlora,
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodSection {
    pub kind: MethodKind,
}

impl Default for MethodSection {
    fn default() -> Self {
        Self { kind: MethodKind::Lora }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`), `all-linear`, or `default` (the family's usual targets).
    pub targets: Targets,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Start from an existing PEFT adapter folder instead of a fresh initialisation.
    pub init_from: Option<PathBuf>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: Targets::default(),
            use_rslora: false,
            init_from: None,
        }
    }
}

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// `"default"` or `"all-linear"`.
    Keyword(String),
    Modules(Vec<String>),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::Keyword("default".into())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantSection {
    /// nf4, fp4 or int8.
    pub kind: String,
    pub double_quant: bool,
    pub block_size: usize,
    /// Dtype the base is dequantized into for each matmul: bf16, f16 or f32.
    pub compute_dtype: String,
}

impl Default for QuantSection {
    fn default() -> Self {
        Self { kind: "nf4".into(), double_quant: true, block_size: 64, compute_dtype: "bf16".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub path: PathBuf,
    /// auto, alpaca, chat, text or tokens.
    pub format: String,
    pub max_len: usize,
    /// What to do with examples longer than `max_len`: truncate or skip.
    pub overlong: String,
    pub eval_fraction: f64,
    pub shuffle: bool,
    /// Also compute the loss on prompt tokens (by default only responses are learned).
    pub train_on_prompt: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            format: "auto".into(),
            max_len: 512,
            overlong: "truncate".into(),
            eval_fraction: 0.0,
            shuffle: true,
            train_on_prompt: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub lr: f64,
    /// constant, linear or cosine.
    pub scheduler: String,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Optimizer steps to run; 0 means `epochs` decides.
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub weight_decay: f64,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub seed: u64,
    /// Recompute each block in backward instead of keeping its activations.
    pub grad_checkpointing: Option<bool>,
    /// Evaluate on the held-out split every N optimizer steps (0: only at the end).
    pub eval_every_steps: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            scheduler: "cosine".into(),
            warmup_steps: 0,
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            seed: 42,
            grad_checkpointing: None,
            eval_every_steps: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Write a checkpoint every N optimizer steps (0: only the final output).
    pub every_steps: usize,
    /// How many step checkpoints to keep (0 keeps all).
    pub keep_last: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every_steps: 0, keep_last: 3 }
    }
}

impl TrainConfig {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        let value: toml::Table =
            toml::from_str(text).map_err(|e| EngineError::file(origin, format!("invalid TOML: {e}")))?;
        Self::from_json(serde_json::to_value(value).map_err(|e| EngineError::file(origin, e.to_string()))?)
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Builds a config from a JSON object with the same sections and keys as the TOML file.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let config: TrainConfig = validate::deserialize(value)?;
        if let Some(first) = config.validate().into_iter().next() {
            return Err(EngineError::config(first.key, first.message));
        }
        Ok(config)
    }

    /// Applies `section.key=value` overrides (values parse as TOML, else as plain strings).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self> {
        let mut value = serde_json::to_value(self).map_err(|e| EngineError::Other(e.to_string()))?;
        for item in overrides {
            validate::apply_override(&mut value, item)?;
        }
        Self::from_json(value)
    }

    /// Every problem with the values, each naming its key.
    pub fn validate(&self) -> Vec<FieldError> {
        validate::check(self)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Whether gradient checkpointing is on (QLoRA turns it on unless told otherwise).
    pub fn grad_checkpointing(&self) -> bool {
        self.train.grad_checkpointing.unwrap_or(self.method.kind == MethodKind::Qlora)
    }

    /// The data settings with `max_len` capped at the model's context length, and a note when
    /// the cap applied.
    pub fn data_for_context(&self, max_positions: usize) -> (DataSection, Option<String>) {
        let mut data = self.data.clone();
        if data.max_len > max_positions {
            let note = format!(
                "data.max_len {} exceeds the model's context of {max_positions} tokens; using {max_positions}",
                data.max_len
            );
            data.max_len = max_positions;
            return (data, Some(note));
        }
        (data, None)
    }

    /// A stable hash of every setting that changes the result of training.
    pub fn result_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(json.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}
