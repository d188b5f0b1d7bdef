//! `/models`: the models a job can start from (registered folders and the Hugging Face hub
//! cache), registering a folder, and validating one: its architecture, parameter count and a
//! first memory estimate per method (full, LoRA, QLoRA).

use crate::config_check::inspect_model;
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError};
use crate::extract::JsonBody;
use crate::hub;
use crate::state::AppState;
use crate::views::ModelView;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use finetune_engine::config::{MethodKind, Targets, TrainConfig};
use finetune_engine::memory::{self, Fit, MemoryEstimate};
use finetune_engine::model::HfConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_models, register_model)).routes(routes!(validate_model))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// Family, size and mechanisms of a model folder or GGUF file, or why it cannot be trained.
fn describe(view: &mut ModelView) {
    use finetune_engine::arch::Family;
    let path = std::path::Path::new(&view.path);
    let found = finetune_engine::model::ModelSource::open(path).and_then(|src| {
        Ok(match src.family()? {
            Family::Decoder(_) => {
                let (spec, dims) = src.resolve()?;
                (spec.family, dims.parameter_count() as u64, spec.mechanisms)
            }
            Family::Seq2Seq(s) => {
                let params =
                    finetune_engine::model::Seq2SeqDims::from_config(&src.config, s)?.parameter_count();
                (s.family, params as u64, s.mechanisms)
            }
        })
    });
    match found {
        Ok((family, params, mechanisms)) => {
            view.family = Some(family.to_string());
            view.parameters = Some(params);
            view.mechanisms = mechanisms.iter().map(|m| m.to_string()).collect();
        }
        Err(e) => view.problem = Some(e.to_string()),
    }
}

/// Registered model folders, then models in the Hugging Face hub cache.
#[utoipa::path(get, path = "/models", tag = "models", responses((status = 200, body = ModelList)))]
async fn list_models(State(st): State<AppState>) -> ApiResult<Json<ModelList>> {
    let mut models: Vec<ModelView> = st.store().models()?.iter().map(ModelView::registered).collect();
    if let Some(cache) = &st.cfg.hf_cache {
        for (repo, path) in hub::cached_models(cache) {
            models.push(ModelView {
                model_id: None,
                name: repo,
                path: path.to_string_lossy().into_owned(),
                source: "hf-cache".into(),
                family: None,
                parameters: None,
                mechanisms: Vec::new(),
                problem: None,
            });
        }
    }
    for m in &mut models {
        describe(m);
    }
    Ok(Json(ModelList { models }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    /// A Hugging Face model folder (config.json, safetensors, tokenizer).
    pub path: String,
    pub name: Option<String>,
}

/// Register a model folder so it is offered for new jobs.
#[utoipa::path(post, path = "/models", tag = "models", request_body = RegisterModel,
    responses((status = 201, body = ModelView), (status = 422, body = ErrorBody)))]
async fn register_model(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<RegisterModel>,
) -> ApiResult<(StatusCode, Json<ModelView>)> {
    let dir = PathBuf::from(&body.path);
    let family = inspect_model(&dir).map_err(|e| ApiError::field("path", e))?;
    let abs = std::fs::canonicalize(&dir).unwrap_or(dir);
    let name = body.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| {
        abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| body.path.clone())
    });
    let rec = st.store().add_model(&name, &abs.to_string_lossy(), Some(family))?;
    let mut view = ModelView::registered(&rec);
    describe(&mut view);
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateModel {
    /// A model folder; or give `model_id`.
    pub path: Option<String>,
    pub model_id: Option<String>,
    /// Assumptions for the memory estimate (defaults: batch 4, 512 tokens, bf16, r=16, the
    /// family's default targets).
    pub batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    /// f32, bf16 or f16.
    pub dtype: Option<String>,
    pub lora_r: Option<usize>,
    pub targets: Option<Vec<String>>,
    pub grad_checkpointing: Option<bool>,
    /// Memory of the target device in GB, for a fits / tight / won't fit verdict.
    pub available_memory_gb: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub tie_embeddings: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Estimate {
    pub weights: u64,
    pub trainable: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub total: u64,
    pub trainable_params: u64,
    /// fits, tight or wont_fit, when `available_memory_gb` was given.
    #[schema(value_type = Option<String>)]
    pub fit: Option<Fit>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryByMethod {
    pub batch_size: usize,
    pub seq_len: usize,
    pub dtype: String,
    pub lora_r: usize,
    pub targets: Vec<String>,
    pub full: Estimate,
    pub lora: Estimate,
    pub qlora: Estimate,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelValidation {
    pub valid: bool,
    pub path: String,
    pub family: String,
    pub model_type: Option<String>,
    pub architectures: Vec<String>,
    /// Attention, position and MLP mechanisms of the family (GQA, RoPE, SwiGLU, ...).
    pub mechanisms: Vec<String>,
    pub default_targets: Vec<String>,
    pub linear_modules: Vec<String>,
    pub parameters: u64,
    pub dims: Dims,
    pub has_tokenizer: bool,
    pub has_chat_template: bool,
    /// Bytes per method, from the engine's first estimate (see `finetune_engine::memory`).
    pub memory: MemoryByMethod,
}

/// Check a model folder: architecture, parameter count, tokenizer and memory per method.
#[utoipa::path(post, path = "/models/validate", tag = "models", request_body = ValidateModel,
    responses((status = 200, body = ModelValidation), (status = 422, description = "Not a usable model: `fields` says why", body = ErrorBody)))]
async fn validate_model(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<ValidateModel>,
) -> ApiResult<Json<ModelValidation>> {
    let path = match (&req.path, &req.model_id) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(id)) => PathBuf::from(
            st.store()
                .model(id)?
                .ok_or_else(|| ApiError::field("model_id", format!("no registered model `{id}`")))?
                .path,
        ),
        (None, None) => return Err(ApiError::field("path", "give `path` (a model folder) or `model_id`")),
    };
    let bad =
        |e: finetune_engine::EngineError| ApiError::Invalid(vec![FieldError::new("path", e.to_string())]);
    if !path.is_dir() {
        return Err(ApiError::field("path", format!("{}: no such folder", path.display())));
    }
    let hf = HfConfig::from_dir(&path).map_err(bad)?;
    // Memory estimates cover decoder-only models; an encoder-decoder gets a message saying so.
    let (spec, dims) = finetune_engine::arch::resolve(&hf).map_err(bad)?;
    let tokenizer = finetune_engine::tokenizer::TextTokenizer::from_dir(&path);
    let mut cfg = TrainConfig::default();
    cfg.model.dtype = req.dtype.clone().unwrap_or_else(|| "bf16".into());
    if !matches!(cfg.model.dtype.as_str(), "f32" | "bf16" | "f16") {
        return Err(ApiError::field("dtype", format!("must be f32, bf16 or f16, got `{}`", cfg.model.dtype)));
    }
    cfg.train.batch_size = req.batch_size.unwrap_or(4).clamp(1, 4096);
    cfg.data.max_len = req.seq_len.unwrap_or(512).clamp(2, 1 << 20);
    cfg.lora.r = req.lora_r.unwrap_or(16).clamp(1, 1024);
    if let Some(t) = &req.targets {
        cfg.lora.targets = Targets::Modules(t.clone());
    }
    cfg.train.grad_checkpointing = req.grad_checkpointing;
    let available = req.available_memory_gb.map(|gb| (gb * 1e9) as u64);
    let est = |method| {
        let opts = memory::options_for(&cfg, method, spec.default_targets);
        let e: MemoryEstimate = memory::estimate(&dims, &opts);
        Estimate {
            weights: e.weights,
            trainable: e.trainable,
            gradients: e.gradients,
            optimizer: e.optimizer,
            activations: e.activations,
            total: e.total,
            trainable_params: e.trainable_params,
            fit: available.map(|a| memory::fit(e.total, a)),
        }
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(Json(ModelValidation {
        valid: true,
        path: path.to_string_lossy().into_owned(),
        family: spec.family.to_string(),
        model_type: hf.get("model_type").and_then(|v| v.as_str()).map(String::from),
        architectures: hf
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default(),
        mechanisms: strings(spec.mechanisms),
        default_targets: strings(spec.default_targets),
        linear_modules: strings(spec.linear_modules),
        parameters: dims.parameter_count() as u64,
        dims: Dims {
            vocab: dims.vocab,
            hidden: dims.hidden,
            intermediate: dims.intermediate,
            layers: dims.layers,
            heads: dims.heads,
            kv_heads: dims.kv_heads,
            head_dim: dims.head_dim,
            max_positions: dims.max_positions,
            tie_embeddings: dims.tie_embeddings,
        },
        has_tokenizer: tokenizer.is_ok(),
        has_chat_template: tokenizer.as_ref().map(|t| t.has_chat_template()).unwrap_or(false),
        memory: MemoryByMethod {
            batch_size: cfg.train.batch_size,
            seq_len: cfg.data.max_len,
            dtype: cfg.model.dtype.clone(),
            lora_r: cfg.lora.r,
            targets: memory::targets_for(&cfg.lora.targets, spec.default_targets),
            full: est(MethodKind::Full),
            lora: est(MethodKind::Lora),
            qlora: est(MethodKind::Qlora),
        },
    }))
}
