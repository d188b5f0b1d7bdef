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
mod weights;

pub use attention::LayerCache;
pub use config::{HfConfig, RopeParams, RopeScaling, rope_inv_freq};
pub use decoder::{CausalLm, next_token_targets};
pub use dims::{Activation, ModelDims, MoeDims};
pub use positions::{alibi_slopes, t5_bucket};
pub use weights::{SafetensorsWeights, WeightSource};

use crate::arch;
use crate::error::Result;
use crate::layers::{AdapterPlan, LayerFactory};
use candle_core::{DType, Device};
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
