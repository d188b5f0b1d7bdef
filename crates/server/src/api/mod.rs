//! The API under `/api/v1/fine-tuning`, one router per resource, assembled with the OpenAPI
//! document generated from the handlers' annotations (served at `/api/v1/openapi.json`).

pub mod checkpoints;
pub mod configs;
pub mod datasets;
pub mod demo;
pub mod events;
pub mod jobs;
pub mod models;
pub mod monitor;
pub mod outputs;
pub mod system;

use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;

pub const PREFIX: &str = "/api/v1/fine-tuning";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Finetune Studio API",
        description = "Fine-tune open LLMs locally with LoRA, QLoRA or full fine-tuning: jobs, live events, models, configs, datasets and checkpoints. State-changing requests must be JSON (uploads: multipart); errors are `{\"error\": {\"code\", \"message\", \"fields\"?}}`."
    ),
    tags(
        (name = "jobs", description = "Create, list, inspect and control fine-tuning jobs"),
        (name = "monitoring", description = "Progress, metrics, logs, telemetry, alerts, reports and live events of a job"),
        (name = "models", description = "Models to fine-tune and their memory estimates"),
        (name = "configs", description = "Config templates (presets) and validation"),
        (name = "checkpoints", description = "Checkpoints of a job: restore and deploy"),
        (name = "datasets", description = "Upload, inspect and validate training data"),
        (name = "system", description = "This machine and the studio")
    )
)]
struct ApiDoc;

/// The API routes (with state still to be given) and their OpenAPI document.
pub fn routes(max_upload_bytes: u64) -> (Router<AppState>, OpenApiDoc) {
    let upload_limit = usize::try_from(max_upload_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20);
    let api = OpenApiRouter::new()
        .merge(jobs::router())
        .merge(events::router())
        .merge(monitor::router())
        .merge(checkpoints::router())
        .merge(models::router())
        .merge(configs::router())
        .merge(outputs::router())
        .merge(system::router())
        .merge(demo::router())
        .merge(datasets::router().layer(DefaultBodyLimit::max(upload_limit)));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest(PREFIX, api).split_for_parts()
}
