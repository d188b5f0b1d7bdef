//! Checkpoints: when to keep them is a pure policy ([`checkpoints_to_delete`]); writing one is
//! atomic at the directory level (files go into `step-N.partial/`, are synced, then the folder is
//! renamed to `step-N/`). A LoRA checkpoint is a PEFT adapter folder plus the optimizer state and
//! the trainer state, so any checkpoint can be used directly as an adapter.

use crate::config::{MethodKind, TrainConfig};
use crate::error::{EngineError, Result};
use crate::fsutil;
use crate::model::{LanguageModel, SafetensorsWeights, WeightSource};
use crate::peft;
use crate::train::optim::AdamW;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const FULL_WEIGHTS_FILE: &str = "trainable.safetensors";
/// Written last: every other file of the checkpoint with its SHA-256.
pub const MANIFEST_FILE: &str = "checkpoint.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub step: u64,
    pub files: std::collections::BTreeMap<String, String>,
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    /// Micro-batches consumed (the data cursor; the order itself is a function of seed and epoch).
    pub micro_batches: u64,
    pub best_loss: f64,
    pub last_loss: f64,
    pub tokens: u64,
    pub config_hash: String,
    pub engine_version: String,
    pub seed: u64,
    /// Learning-rate multiplier after recoveries (halved at each rollback), and their count.
    #[serde(default = "one")]
    pub lr_scale: f64,
    #[serde(default)]
    pub rollbacks: u32,
}

fn one() -> f64 {
    1.0
}

pub fn checkpoints_root(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

pub fn checkpoint_dir(output: &Path, step: u64) -> PathBuf {
    checkpoints_root(output).join(format!("step-{step}"))
}

/// Steps of the complete checkpoints under `output`, ascending.
pub fn list_checkpoints(output: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(checkpoints_root(output)) else { return vec![] };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse::<u64>().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Which checkpoints to delete after writing one: all but the newest `keep_last` (0 keeps all).
/// Pure, so it is tested without a disk.
pub fn checkpoints_to_delete(steps: &[u64], keep_last: usize) -> Vec<u64> {
    if keep_last == 0 || steps.len() <= keep_last {
        return vec![];
    }
    let mut sorted = steps.to_vec();
    sorted.sort_unstable();
    sorted[..sorted.len() - keep_last].to_vec()
}

/// Writes the checkpoint for `state.step` and applies the keep-last policy.
pub fn write_checkpoint(
    output: &Path,
    model: &dyn LanguageModel,
    params: &[(String, Var)],
    opt: &AdamW,
    state: &TrainerState,
    config: &TrainConfig,
) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(output, state.step);
    let partial = final_dir.with_file_name(format!("step-{}.partial", state.step));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| EngineError::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| EngineError::io(&partial, e))?;
    match config.method.kind {
        MethodKind::Full => {
            let tensors: HashMap<String, Tensor> =
                params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            save_tensors(&partial.join(FULL_WEIGHTS_FILE), &tensors)?;
        }
        _ => peft::write_adapter(&partial, model, &config.lora, &config.model.path.to_string_lossy())?,
    }
    save_tensors(&partial.join(OPTIMIZER_FILE), &opt.state()?)?;
    fsutil::write_json(&partial.join(STATE_FILE), state)?;
    fsutil::write_atomic(&partial.join("train_config.toml"), config.to_toml().as_bytes())?;
    if super::faults::Faults::from_env().at(super::faults::Fault::CheckpointIo, state.step) {
        return Err(EngineError::io(
            &partial,
            std::io::Error::other("injected fault: no space left on device"),
        ));
    }
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&partial).map_err(|e| EngineError::io(&partial, e))? {
        let path = entry.map_err(|e| EngineError::io(&partial, e))?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && !name.starts_with('.')
        {
            files.insert(name.to_string(), sha256_file(&path)?);
        }
    }
    fsutil::write_json(&partial.join(MANIFEST_FILE), &Manifest { format: 1, step: state.step, files })?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| EngineError::io(&final_dir, e))?;
    }
    std::fs::rename(&partial, &final_dir).map_err(|e| EngineError::io(&final_dir, e))?;
    fsutil::sync_dir(&checkpoints_root(output))?;
    for step in checkpoints_to_delete(&list_checkpoints(output), config.checkpoint.keep_last) {
        let dir = checkpoint_dir(output, step);
        std::fs::remove_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
    }
    Ok(final_dir)
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    fsutil::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| EngineError::file(tmp, e.to_string()))
    })
}

/// A checkpoint read back from disk.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    weights: SafetensorsWeights,
    optimizer: HashMap<String, Tensor>,
}

impl LoadedCheckpoint {
    /// Reads a checkpoint after checking every file against its manifest.
    pub fn read(dir: &Path, method: MethodKind) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| EngineError::file(&manifest_path, format!("incomplete checkpoint: {e}")))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| EngineError::file(&manifest_path, format!("corrupt manifest: {e}")))?;
        for (name, expected) in &manifest.files {
            let path = dir.join(name);
            if !path.exists() {
                return Err(EngineError::file(&path, "missing from the checkpoint"));
            }
            if &sha256_file(&path)? != expected {
                return Err(EngineError::file(&path, "checksum mismatch (the file is corrupt)"));
            }
        }
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| EngineError::io(&state_path, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| EngineError::file(&state_path, format!("invalid trainer state: {e}")))?;
        let weights_file = match method {
            MethodKind::Full => dir.join(FULL_WEIGHTS_FILE),
            _ => dir.join(peft::WEIGHTS_FILE),
        };
        let weights = SafetensorsWeights::from_files(dir, vec![weights_file])?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        let optimizer = candle_core::safetensors::load(&opt_path, &candle_core::Device::Cpu)
            .map_err(|e| EngineError::file(&opt_path, e.to_string()))?;
        Ok(Self { dir: dir.to_path_buf(), state, weights, optimizer })
    }

    /// Copies the saved trainable weights into the model's variables and the moments into the
    /// optimizer.
    pub fn restore(&self, params: &[(String, Var)], opt: &mut AdamW) -> Result<()> {
        for (name, var) in params {
            let peft_name = format!("base_model.model.{name}");
            let key = if self.weights.contains(&peft_name) { peft_name } else { name.clone() };
            let t = self.weights.load_shaped(&key, var.dims(), DType::F32, var.device())?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        opt.load_state(&self.optimizer, self.state.step)
    }
}

/// The newest checkpoint under `output` that reads back intact, and a warning for each newer
/// one that did not (it is skipped, never deleted).
pub fn newest_valid(output: &Path, method: MethodKind) -> (Option<LoadedCheckpoint>, Vec<String>) {
    let mut warnings = Vec::new();
    for step in list_checkpoints(output).into_iter().rev() {
        match LoadedCheckpoint::read(&checkpoint_dir(output, step), method) {
            Ok(c) => return (Some(c), warnings),
            Err(e) => warnings.push(format!("checkpoint step-{step} is unusable and was skipped: {e}")),
        }
    }
    (None, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_last_deletes_the_oldest() {
        assert_eq!(checkpoints_to_delete(&[30, 10, 20, 40], 2), vec![10, 20]);
        assert_eq!(checkpoints_to_delete(&[10, 20], 2), Vec::<u64>::new());
        assert_eq!(checkpoints_to_delete(&[10, 20, 30], 0), Vec::<u64>::new());
        assert_eq!(checkpoints_to_delete(&[5], 1), Vec::<u64>::new());
    }
}
