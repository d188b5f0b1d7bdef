//! Models: reading Hugging Face folders or GGUF files (config, weights, tokenizer) and the
//! generic decoder built from an architecture row. [`ModelSource`] is the one way in: it opens
//! either kind of path and hands the rest of the engine an HF-style config, a [`WeightSource`]
//! with HF tensor names and a tokenizer.

mod blocks;
mod config;
mod decoder;
mod dims;
mod gguf;
mod gguf_tokenizer;
mod weights;

pub use blocks::LayerCache;
pub use config::{HfConfig, RopeParams, RopeScaling, rope_inv_freq};
pub use decoder::{CausalLm, next_token_targets};
pub use dims::{Activation, ModelDims};
pub use gguf::{GgufFile, is_gguf, unpermute_order};
pub use weights::{SafetensorsWeights, WeightSource};

use crate::arch::{self, ArchSpec};
use crate::error::Result;
use crate::layers::{AdapterPlan, LayerFactory};
use crate::quant::QuantSpec;
use crate::tokenizer::TextTokenizer;
use candle_core::{DType, Device};
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
            return Ok(Self { path: path.to_path_buf(), config: file.config()?, weights: file.clone(), gguf: Some(file) });
        }
        let config = HfConfig::from_dir(path)?;
        let weights: Arc<dyn WeightSource> = Arc::new(SafetensorsWeights::from_dir(path)?);
        Ok(Self { path: path.to_path_buf(), config, weights, gguf: None })
    }

    pub fn is_gguf(&self) -> bool {
        self.gguf.is_some()
    }

    pub fn spec(&self) -> Result<&'static ArchSpec> {
        arch::detect(&self.config)
    }

    pub fn dims(&self) -> Result<ModelDims> {
        ModelDims::from_config(&self.config, self.spec()?)
    }

    /// The tokenizer: `tokenizer.json` (+ config, chat template) of the folder, or the GGUF
    /// file's metadata.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        match &self.gguf {
            Some(g) => g.tokenizer(),
            None => TextTokenizer::from_dir(&self.path),
        }
    }

    /// Builds the model. `quant` quantizes dense projection weights on load (QLoRA); GGUF
    /// block-quantized weights stay quantized whatever it says (except in full fine-tuning).
    pub fn build(&self, plan: AdapterPlan, quant: Option<QuantSpec>, dtype: DType, device: &Device) -> Result<CausalLm> {
        let spec = self.spec()?;
        let dims = ModelDims::from_config(&self.config, spec)?;
        let mut factory = LayerFactory::new(self.weights.clone(), dtype, device.clone(), plan);
        if let Some(q) = quant {
            factory = factory.with_quant(q);
        }
        CausalLm::build(spec, dims, &factory)
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
