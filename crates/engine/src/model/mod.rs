//! Models: reading Hugging Face folders or GGUF files (config, weights, tokenizer) and the
//! generic decoder (and encoder-decoder) built from an architecture row; the pieces (norm,
//! attention, MLP, positions) are shared by every family. [`ModelSource`] is the one way in: it
//! opens either kind of path and hands the rest of the engine an HF-style config, a
//! [`WeightSource`] with HF tensor names and a tokenizer.

mod attention;
mod blocks;
mod config;
mod decoder;
mod dims;
mod gguf;
mod gguf_tokenizer;
mod mlp;
mod norm;
mod positions;
mod seq2seq;
mod weights;

pub use attention::LayerCache;
pub use config::{HfConfig, RopeParams, RopeScaling, rope_inv_freq};
pub use decoder::{CausalLm, next_token_targets};
pub use dims::{Activation, MlaDims, ModelDims, MoeDims};
pub use gguf::{GgufFile, is_gguf, unpermute_order};
pub use positions::{alibi_slopes, t5_bucket};
pub use seq2seq::{Seq2SeqBatch, Seq2SeqDims, Seq2SeqLm, shift_right};
pub use weights::{SafetensorsWeights, WeightSource};

use crate::arch::{self, ArchSpec, Family};
use crate::error::{EngineError, Result};
use crate::layers::{AdapterPlan, LayerFactory, Linear};
use crate::quant::QuantSpec;
use crate::tokenizer::TextTokenizer;
use candle_core::{DType, Device, Tensor, Var};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model on disk: a Hugging Face folder or a GGUF file, opened (config parsed, weights mapped).
pub struct ModelSource {
    pub path: PathBuf,
    pub config: HfConfig,
    pub weights: Arc<dyn WeightSource>,
    gguf: Option<Arc<GgufFile>>,
}

impl ModelSource {
    /// Opens `path`: a `.gguf` file (or any file starting with the GGUF magic), else an HF folder.
    pub fn open(path: &Path) -> Result<Self> {
        if is_gguf(path) {
            let file = Arc::new(GgufFile::open(path)?);
            return Ok(Self {
                path: path.to_path_buf(),
                config: file.config()?,
                weights: file.clone(),
                gguf: Some(file),
            });
        }
        let config = HfConfig::from_dir(path)?;
        let weights: Arc<dyn WeightSource> = Arc::new(SafetensorsWeights::from_dir(path)?);
        Ok(Self { path: path.to_path_buf(), config, weights, gguf: None })
    }

    pub fn is_gguf(&self) -> bool {
        self.gguf.is_some()
    }

    pub fn family(&self) -> Result<Family> {
        arch::detect(&self.config)
    }

    /// The decoder row (with config-dependent structure resolved) and its dimensions.
    pub fn resolve(&self) -> Result<(ArchSpec, ModelDims)> {
        arch::resolve(&self.config)
    }

    /// The tokenizer: `tokenizer.json` (+ config, chat template) of the folder, or the GGUF
    /// file's metadata.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        match &self.gguf {
            Some(g) => g.tokenizer(),
            None => TextTokenizer::from_dir(&self.path),
        }
    }

    fn factory(
        &self,
        plan: AdapterPlan,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &Device,
    ) -> LayerFactory {
        let factory = LayerFactory::new(self.weights.clone(), dtype, device.clone(), plan);
        match quant {
            Some(q) => factory.with_quant(q),
            None => factory,
        }
    }

    /// Builds the decoder. `quant` quantizes dense projection weights on load (QLoRA); GGUF
    /// block-quantized weights stay quantized whatever it says (except in full fine-tuning).
    pub fn build(
        &self,
        plan: AdapterPlan,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &Device,
    ) -> Result<CausalLm> {
        let (spec, dims) = self.resolve()?;
        CausalLm::build(spec, dims, &self.factory(plan, quant, dtype, device))
    }

    /// Builds whatever model this is, decoder-only or encoder-decoder.
    pub fn build_any(
        &self,
        plan: AdapterPlan,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &Device,
    ) -> Result<AnyModel> {
        Ok(match self.family()? {
            Family::Decoder(_) => AnyModel::Causal(self.build(plan, quant, dtype, device)?),
            Family::Seq2Seq(spec) => {
                let dims = Seq2SeqDims::from_config(&self.config, spec)?;
                AnyModel::Seq2Seq(Seq2SeqLm::build(*spec, dims, &self.factory(plan, quant, dtype, device))?)
            }
        })
    }
}

/// Loads a causal LM from a Hugging Face folder or a GGUF file with the given adapter plan.
pub fn load_causal_lm(path: &Path, plan: AdapterPlan, dtype: DType, device: &Device) -> Result<CausalLm> {
    ModelSource::open(path)?.build(plan, None, dtype, device)
}

/// The tokenizer of a Hugging Face folder or a GGUF file.
pub fn load_tokenizer(path: &Path) -> Result<TextTokenizer> {
    if is_gguf(path) { GgufFile::open(path)?.tokenizer() } else { TextTokenizer::from_dir(path) }
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
    match ModelSource::open(dir)?.build_any(plan, None, dtype, device)? {
        AnyModel::Seq2Seq(m) => Ok(m),
        AnyModel::Causal(_) => {
            Err(EngineError::file(dir, "not an encoder-decoder model; load it as a causal LM"))
        }
    }
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

/// Loads whatever model a Hugging Face folder or GGUF file holds.
pub fn load_model(path: &Path, plan: AdapterPlan, dtype: DType, device: &Device) -> Result<AnyModel> {
    ModelSource::open(path)?.build_any(plan, None, dtype, device)
}
