//! PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`, tensors named
//! `base_model.model.<module>.lora_A.weight`): read for `init_from`, eval and merge; written at
//! the end of training and in checkpoints, so adapters load in PEFT, vLLM and llama.cpp tools.

use crate::config::{LoraSection, MethodKind};
use crate::error::{EngineError, Result};
use crate::fsutil;
use crate::layers::{AdapterPlan, TargetSet, peft_name};
use crate::model::{LanguageModel, SafetensorsWeights, WeightSource};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of `adapter_config.json` we read and write (PEFT keeps more; unknown ones are
/// ignored on read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// A list of module names, or a regex string matched against full module paths.
    pub target_modules: Value,
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub init_lora_weights: Value,
    #[serde(default)]
    pub modules_to_save: Value,
    #[serde(default)]
    pub rank_pattern: Value,
    #[serde(default)]
    pub alpha_pattern: Value,
    #[serde(default)]
    pub layers_to_transform: Value,
    #[serde(default)]
    pub layers_pattern: Value,
    #[serde(default)]
    pub revision: Value,
}

/// A PEFT adapter on disk.
pub struct PeftAdapter {
    pub config: AdapterConfig,
    pub weights: Arc<SafetensorsWeights>,
    /// Module paths that carry `lora_A`/`lora_B` tensors.
    pub modules: Vec<String>,
}

impl PeftAdapter {
    pub fn read(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::file(&cfg_path, format!("not a PEFT LoRA adapter config: {e}")))?;
        if config.peft_type != "LORA" {
            return Err(EngineError::file(
                &cfg_path,
                format!("peft_type `{}` is not supported (LORA only)", config.peft_type),
            ));
        }
        if config.use_dora {
            return Err(EngineError::file(&cfg_path, "DoRA adapters are not supported yet"));
        }
        // `fan_in_fan_out` (GPT-2 Conv1D) only says how PEFT merges into an `[in, out]` weight: the
        // stored lora_A `[r, in]` and lora_B `[out, r]` are the same, and the model transposes
        // Conv1D weights on load, so the adapter applies unchanged.
        if config.r == 0 {
            return Err(EngineError::file(&cfg_path, "`r` must be at least 1"));
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() {
            return Err(EngineError::file(
                &weights_path,
                "missing (only safetensors adapters are supported)",
            ));
        }
        let weights = SafetensorsWeights::from_files(dir, vec![weights_path.clone()])?;
        let mut modules = BTreeSet::new();
        for name in weights.names() {
            let path = name
                .strip_prefix("base_model.model.")
                .and_then(|n| n.strip_suffix(".lora_A.weight").or_else(|| n.strip_suffix(".lora_B.weight")))
                .ok_or_else(|| EngineError::tensor(&weights_path, &name, "not a LoRA tensor name"))?;
            modules.insert(path.to_string());
        }
        Ok(Self { config, weights: Arc::new(weights), modules: modules.into_iter().collect() })
    }

    /// The plan that rebuilds exactly this adapter (for eval, merge, generate and `init_from`).
    pub fn plan(&self, method: MethodKind, seed: u64) -> AdapterPlan {
        AdapterPlan {
            method,
            r: self.config.r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            use_rslora: self.config.use_rslora,
            targets: TargetSet::Paths(self.modules.clone()),
            seed,
            init_from: Some(self.weights.clone()),
            keep_stored_dtype: false,
            bf16_products: false,
        }
    }
}

/// Short module names that select exactly `adapted` among `all` module paths, if they exist.
fn short_names(adapted: &[String], all: &[String]) -> Option<Vec<String>> {
    let names: BTreeSet<String> =
        adapted.iter().map(|p| p.rsplit('.').next().unwrap_or(p).to_string()).collect();
    let targets = TargetSet::Modules(names.iter().cloned().collect());
    let selected: BTreeSet<&String> = all.iter().filter(|p| targets.matches(p)).collect();
    let wanted: BTreeSet<&String> = adapted.iter().collect();
    (selected == wanted).then(|| names.into_iter().collect())
}

/// Writes the model's adapters as a PEFT folder.
pub fn write_adapter(
    dir: &Path,
    model: &dyn LanguageModel,
    lora: &LoraSection,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut adapted = Vec::new();
    let all: Vec<String> = model.linears().into_iter().map(|(p, _)| p).collect();
    let mut r = lora.r;
    for (path, layer) in model.linears() {
        if let Some(l) = layer.as_lora() {
            r = l.rank();
            tensors.insert(peft_name(&path, "lora_A"), l.a.as_tensor().to_dtype(DType::F32)?);
            tensors.insert(peft_name(&path, "lora_B"), l.b.as_tensor().to_dtype(DType::F32)?);
            adapted.push(path);
        }
    }
    if adapted.is_empty() {
        return Err(EngineError::Other("the model has no LoRA adapter to save".into()));
    }
    let target_modules = match short_names(&adapted, &all) {
        Some(names) => serde_json::json!(names),
        None => {
            let alts: Vec<String> = adapted.iter().map(|p| p.replace('.', "\\.")).collect();
            Value::String(format!("^(?:{})$", alts.join("|")))
        }
    };
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: model.task_type().into(),
        r,
        lora_alpha: lora.alpha,
        lora_dropout: lora.dropout,
        target_modules,
        bias: "none".into(),
        use_rslora: lora.use_rslora,
        use_dora: false,
        fan_in_fan_out: model.fan_in_fan_out(),
        base_model_name_or_path: Some(base_model.to_string()),
        inference_mode: true,
        init_lora_weights: Value::Bool(true),
        modules_to_save: Value::Null,
        rank_pattern: serde_json::json!({}),
        alpha_pattern: serde_json::json!({}),
        layers_to_transform: Value::Null,
        layers_pattern: Value::Null,
        revision: Value::Null,
    };
    let weights_path = dir.join(WEIGHTS_FILE);
    fsutil::write_atomic_with(&weights_path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| EngineError::file(tmp, e.to_string()))
    })?;
    fsutil::write_json(&dir.join(CONFIG_FILE), &config)
}
