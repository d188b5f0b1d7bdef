//! Checking a training config sent by a client: every problem with every key at once (not just
//! the first), then whether the model folder and dataset it names exist and can be used. Shared
//! by `POST /jobs` (which refuses on any error) and `POST /configs/validate` (which reports).
//!
//! A create body may carry a `job` object next to the config sections: `name`, `max_restarts`,
//! `model_id` (a registered model, fills `model.path`) and `dataset_id` (fills `data.path`). It is
//! split off before the config is validated.

use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use finetune_engine::EngineError;
use finetune_engine::config::TrainConfig;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use utoipa::ToSchema;

/// The `job` object of a create body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    pub name: Option<String>,
    /// Times a crashed, out-of-memory or interrupted worker is restarted from the newest
    /// checkpoint (default 3).
    #[serde(default = "default_restarts")]
    pub max_restarts: u32,
    pub model_id: Option<String>,
    pub dataset_id: Option<String>,
    /// Reliability tests only: a `FINETUNE_FAULT` spec for the first attempt, ignored unless the
    /// studio runs with `FINETUNE_ALLOW_FAULTS=1`.
    #[serde(default)]
    #[schema(ignore)]
    pub fault: Option<String>,
}

fn default_restarts() -> u32 {
    3
}

impl Default for JobOptions {
    fn default() -> Self {
        Self { name: None, max_restarts: default_restarts(), model_id: None, dataset_id: None, fault: None }
    }
}

/// Splits the `job` object off a create body and applies its `model_id` / `dataset_id`.
pub fn split_job_options(state: &AppState, mut body: Value) -> Result<(JobOptions, Value), ApiError> {
    let Value::Object(map) = &mut body else {
        return Err(ApiError::field("config", "expected a JSON object with the config sections"));
    };
    let opts: JobOptions = match map.remove("job") {
        None => JobOptions::default(),
        Some(v) => serde_json::from_value(v).map_err(|e| ApiError::field("job", e.to_string()))?,
    };
    let mut set = |section: &str, key: &str, value: String| {
        let sec = map.entry(section.to_string()).or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(s) = sec {
            s.insert(key.to_string(), Value::String(value));
        }
    };
    if let Some(id) = &opts.model_id {
        let m = state
            .store()
            .model(id)?
            .ok_or_else(|| ApiError::field("job.model_id", format!("no registered model `{id}`")))?;
        set("model", "path", m.path);
    }
    if let Some(id) = &opts.dataset_id {
        let d = state
            .store()
            .dataset(id)?
            .ok_or_else(|| ApiError::field("job.dataset_id", format!("no dataset `{id}`")))?;
        set("data", "path", d.path);
    }
    Ok((opts, body))
}

/// The config, or every problem with it, each naming its key.
pub fn check_config(value: Value) -> Result<TrainConfig, Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new("config", "expected a JSON object with the config sections")]);
    }
    match TrainConfig::from_json(value.clone()) {
        Ok(c) => Ok(c),
        Err(EngineError::Config { key, message }) => {
            // The types were right if it deserializes: then list every out-of-range value.
            let all = serde_json::from_value::<TrainConfig>(value).map(|c| c.validate()).unwrap_or_default();
            if all.is_empty() {
                Err(vec![FieldError::new(key, message)])
            } else {
                Err(all.into_iter().map(|e| FieldError::new(e.key, e.message)).collect())
            }
        }
        Err(other) => Err(vec![FieldError::new("config", other.to_string())]),
    }
}

/// Problems with the model folder and dataset a config names. With `required`, unset paths are
/// errors; otherwise they are warnings (a template has none yet).
pub fn check_paths(cfg: &TrainConfig, required: bool) -> (Vec<FieldError>, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut unset = Vec::new();
    let model = cfg.model.path.as_path();
    if model.as_os_str().is_empty() {
        unset.push(FieldError::new("model.path", "no model folder given"));
    } else if let Err(e) = inspect_model(model) {
        errors.push(FieldError::new("model.path", e));
    }
    let data = cfg.data.path.as_path();
    if data.as_os_str().is_empty() {
        unset.push(FieldError::new("data.path", "no dataset given"));
    } else if !data.is_file() {
        errors.push(FieldError::new("data.path", format!("{}: no such file", data.display())));
    }
    let warnings = if required {
        errors.extend(unset);
        errors.sort_by(|a, b| a.key.cmp(&b.key).reverse());
        Vec::new()
    } else {
        unset
    };
    (errors, warnings)
}

/// A short reason a model path (a Hugging Face folder or a GGUF file) is not trainable, or its
/// family.
pub fn inspect_model(path: &Path) -> Result<&'static str, String> {
    if !path.exists() {
        return Err(format!("{}: no such folder or file", path.display()));
    }
    let source = finetune_engine::model::ModelSource::open(path).map_err(|e| e.to_string())?;
    let family = source.family().map_err(|e| e.to_string())?;
    Ok(family.name())
}

/// Makes the config's paths absolute, so the job does not depend on the studio's working dir.
pub fn absolutize(cfg: &mut TrainConfig) {
    for p in [&mut cfg.model.path, &mut cfg.data.path] {
        if let Ok(abs) = std::fs::canonicalize(&*p) {
            *p = abs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_out_of_range_value() {
        let errs =
            check_config(json!({"train": {"lr": -1.0, "batch_size": 0}, "lora": {"r": 0}})).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["lora.r", "train.lr", "train.batch_size"]);
        let errs = check_config(json!({"train": {"lr": "fast"}})).unwrap_err();
        assert_eq!(errs[0].key, "train.lr");
        let errs = check_config(json!({"trian": {}})).unwrap_err();
        assert_eq!(errs[0].key, "trian");
        assert!(check_config(json!([1])).is_err());
        assert!(check_config(json!({})).is_ok());
    }

    #[test]
    fn paths_are_checked() {
        let mut cfg = TrainConfig::default();
        let (errors, warnings) = check_paths(&cfg, false);
        assert!(errors.is_empty());
        assert_eq!(warnings.len(), 2);
        let (errors, _) = check_paths(&cfg, true);
        assert_eq!(errors.len(), 2);
        cfg.model.path = "/nonexistent/model".into();
        cfg.data.path = "/nonexistent/data.jsonl".into();
        let (errors, _) = check_paths(&cfg, true);
        assert!(errors[0].message.contains("/nonexistent/model"), "{errors:?}");
        assert!(errors[1].message.contains("no such file"), "{errors:?}");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        cfg.model.path = fixtures.join("models/llama");
        cfg.data.path = fixtures.join("data/alpaca.jsonl");
        assert_eq!(check_paths(&cfg, true), (vec![], vec![]));
        assert_eq!(inspect_model(&fixtures.join("models/llama")), Ok("llama"));
    }
}
