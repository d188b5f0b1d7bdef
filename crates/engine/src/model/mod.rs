//! Models: reading Hugging Face folders (config, weights) and the generic decoder built from an
//! architecture row. The pieces (norm, attention, MLP, positions) are shared by every family.

mod attention;
mod blocks;
mod config;
mod decoder;
mod dims;
mod mlp;
mod norm;
mod positions;
mod seq2seq;
mod weights;

pub use attention::LayerCache;
pub use config::{HfConfig, RopeParams, RopeScaling, rope_inv_freq};
pub use decoder::{CausalLm, next_token_targets};
pub use dims::{Activation, MlaDims, ModelDims, MoeDims};
pub use positions::{alibi_slopes, t5_bucket};
pub use seq2seq::{Seq2SeqBatch, Seq2SeqDims, Seq2SeqLm, shift_right};
pub use weights::{SafetensorsWeights, WeightSource};

use crate::arch::{self, Family};
use crate::error::{EngineError, Result};
use crate::layers::{AdapterPlan, LayerFactory, Linear};
use candle_core::{DType, Device, Tensor, Var};
use std::path::Path;
use std::sync::Arc;

/// Loads a causal LM from a Hugging Face folder with the given adapter plan.
pub fn load_causal_lm(dir: &Path, plan: AdapterPlan, dtype: DType, device: &Device) -> Result<CausalLm> {
    let cfg = HfConfig::from_dir(dir)?;
    let (spec, dims) = arch::resolve(&cfg)?;
    let weights: Arc<dyn WeightSource> = Arc::new(SafetensorsWeights::from_dir(dir)?);
    let factory = LayerFactory::new(weights, dtype, device.clone(), plan);
    CausalLm::build(spec, dims, &factory)
}

/// What the PEFT writer, the exporter, checkpoints and the trainer need from any model,
/// decoder-only or encoder-decoder.
pub trait LanguageModel {
    fn family(&self) -> &'static str;
    /// PEFT's `task_type` (`CAUSAL_LM` or `SEQ_2_SEQ_LM`).
    fn task_type(&self) -> &'static str;
    /// Whether projections are stored `[in, out]` (PEFT's `fan_in_fan_out`).
    fn fan_in_fan_out(&self) -> bool;
    /// Every trainable variable with its Hugging Face / PEFT-relative name.
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Every linear layer with its module path.
    fn linears(&self) -> Vec<(String, &dyn Linear)>;
    /// All weights with adapters merged, by Hugging Face name, in the file layout.
    fn merged_weights(&self) -> Result<Vec<(String, Tensor)>>;
    /// Bytes of the frozen base weights.
    fn base_bytes(&self) -> usize;
    fn parameter_count(&self) -> usize;
}

/// Loads an encoder-decoder model (T5, BART) from a Hugging Face folder.
pub fn load_seq2seq_lm(dir: &Path, plan: AdapterPlan, dtype: DType, device: &Device) -> Result<Seq2SeqLm> {
    let cfg = HfConfig::from_dir(dir)?;
    let Family::Seq2Seq(spec) = arch::detect(&cfg)? else {
        return Err(EngineError::file(&cfg.path, "not an encoder-decoder model; load it as a causal LM"));
    };
    let dims = Seq2SeqDims::from_config(&cfg, spec)?;
    let weights: Arc<dyn WeightSource> = Arc::new(SafetensorsWeights::from_dir(dir)?);
    let factory = LayerFactory::new(weights, dtype, device.clone(), plan);
    Seq2SeqLm::build(*spec, dims, &factory)
}

/// A loaded model of either kind.
pub enum AnyModel {
    Causal(CausalLm),
    Seq2Seq(Seq2SeqLm),
}

impl AnyModel {
    pub fn as_dyn(&self) -> &dyn LanguageModel {
        match self {
            AnyModel::Causal(m) => m,
            AnyModel::Seq2Seq(m) => m,
        }
    }

    pub fn adapted(&self) -> &[String] {
        match self {
            AnyModel::Causal(m) => &m.adapted,
            AnyModel::Seq2Seq(m) => &m.adapted,
        }
    }
}

/// Loads whatever model a Hugging Face folder holds.
pub fn load_model(dir: &Path, plan: AdapterPlan, dtype: DType, device: &Device) -> Result<AnyModel> {
    let cfg = HfConfig::from_dir(dir)?;
    Ok(match arch::detect(&cfg)? {
        Family::Decoder(_) => AnyModel::Causal(load_causal_lm(dir, plan, dtype, device)?),
        Family::Seq2Seq(_) => AnyModel::Seq2Seq(load_seq2seq_lm(dir, plan, dtype, device)?),
    })
}
