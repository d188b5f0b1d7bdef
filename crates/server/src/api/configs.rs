//! `/configs`: templates (the built-in `presets/*.toml` and the user's saved presets), saving and
//! deleting user presets, and validating a training config with field-level errors.

use crate::config_check::{check_config, check_paths, split_job_options};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError};
use crate::extract::JsonBody;
use crate::presets::{self, PresetMeta, PresetView};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates, save_template))
        .routes(routes!(delete_template))
        .routes(routes!(validate_config))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<PresetView>,
}

/// Config templates: built-in presets, then the user's.
#[utoipa::path(get, path = "/configs/templates", tag = "configs", responses((status = 200, body = TemplateList)))]
async fn list_templates(State(st): State<AppState>) -> ApiResult<Json<TemplateList>> {
    let mut templates = presets::builtin();
    templates.extend(presets::user(&st.cfg.presets_dir()));
    Ok(Json(TemplateList { templates }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveTemplate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub hardware: String,
    pub min_memory_gb: Option<f64>,
    /// The training config (same sections and keys as a job's).
    #[schema(value_type = Object)]
    pub config: Value,
}

/// Save a user preset (replacing one with the same name).
#[utoipa::path(post, path = "/configs/templates", tag = "configs", request_body = SaveTemplate,
    responses((status = 201, body = PresetView), (status = 422, body = ErrorBody)))]
async fn save_template(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<SaveTemplate>,
) -> ApiResult<(StatusCode, Json<PresetView>)> {
    let cfg = check_config(req.config).map_err(|errs| {
        ApiError::Invalid(
            errs.into_iter().map(|e| FieldError::new(format!("config.{}", e.key), e.message)).collect(),
        )
    })?;
    let meta = PresetMeta {
        name: req.name,
        description: req.description,
        hardware: req.hardware,
        min_memory_gb: req.min_memory_gb,
    };
    let view = presets::save_user(&st.cfg.presets_dir(), meta, &cfg)?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Delete a user preset.
#[utoipa::path(delete, path = "/configs/templates/{id}", tag = "configs", params(("id" = String, Path, description = "Preset id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody), (status = 409, description = "Built-in", body = ErrorBody)))]
async fn delete_template(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    presets::delete_user(&st.cfg.presets_dir(), &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigValidation {
    pub valid: bool,
    /// Every invalid key (`train.lr`, `model.path`, ...).
    pub errors: Vec<FieldError>,
    /// Things that would stop a job but are fine in a template (no model or dataset yet).
    pub warnings: Vec<FieldError>,
    /// The config with every default filled in, when it parsed.
    #[schema(value_type = Object)]
    pub config: Option<Value>,
}

/// Validate a training config (the body of `POST /jobs`). Answers 200 with `valid: false` and
/// every error when it is invalid.
#[utoipa::path(post, path = "/configs/validate", tag = "configs",
    request_body(content = Object, description = "Training config sections plus an optional `job` object"),
    responses((status = 200, body = ConfigValidation), (status = 400, body = ErrorBody)))]
async fn validate_config(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<ConfigValidation>> {
    let (_, value) = match split_job_options(&st, body) {
        Ok(v) => v,
        Err(ApiError::Invalid(errors)) => {
            return Ok(Json(ConfigValidation { valid: false, errors, warnings: vec![], config: None }));
        }
        Err(e) => return Err(e),
    };
    Ok(Json(match check_config(value) {
        Err(errors) => ConfigValidation { valid: false, errors, warnings: vec![], config: None },
        Ok(cfg) => {
            let (errors, warnings) = check_paths(&cfg, false);
            ConfigValidation {
                valid: errors.is_empty(),
                errors,
                warnings,
                config: serde_json::to_value(&cfg).ok(),
            }
        }
    }))
}
