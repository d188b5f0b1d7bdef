//! Checkpoints: list a job's, show one (with its trainer state and files), restore (continue the
//! job from it) and deploy (make it the job's published adapter). A checkpoint id is
//! `<job_id>-step-<step>`.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
use crate::views::{CheckpointView, JobView, parse_checkpoint_id};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use finetune_jobs::CheckpointRecord;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_checkpoints))
        .routes(routes!(get_checkpoint))
        .routes(routes!(restore_checkpoint))
        .routes(routes!(deploy_checkpoint))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointView>,
}

/// A job's checkpoints, oldest first.
#[utoipa::path(get, path = "/jobs/{id}/checkpoints", tag = "checkpoints", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = CheckpointList), (status = 404, body = ErrorBody)))]
async fn list_checkpoints(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckpointList>> {
    let job = st.store().require_job(&id)?;
    let list = st.store().checkpoints(&id)?;
    let published = job.published_adapter.as_deref();
    Ok(Json(CheckpointList { checkpoints: list.iter().map(|c| CheckpointView::new(c, published)).collect() }))
}

fn lookup(st: &AppState, checkpoint_id: &str) -> ApiResult<(finetune_jobs::Job, CheckpointRecord)> {
    let missing = || ApiError::not_found("checkpoint", checkpoint_id);
    let (job_id, step) = parse_checkpoint_id(checkpoint_id).ok_or_else(missing)?;
    let job = st.store().job(job_id)?.ok_or_else(missing)?;
    let ckpt = st.store().checkpoint(job_id, step)?.ok_or_else(missing)?;
    Ok((job, ckpt))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointDetail {
    #[serde(flatten)]
    pub checkpoint: CheckpointView,
    /// `trainer_state.json`: step, epoch, losses, tokens, config hash, engine version.
    #[schema(value_type = Object)]
    pub trainer_state: Option<Value>,
    pub files: Vec<FileEntry>,
}

/// One checkpoint with its trainer state and files.
#[utoipa::path(get, path = "/checkpoints/{checkpoint_id}", tag = "checkpoints",
    params(("checkpoint_id" = String, Path, description = "`<job_id>-step-<step>`")),
    responses((status = 200, body = CheckpointDetail), (status = 404, body = ErrorBody)))]
async fn get_checkpoint(
    State(st): State<AppState>,
    Path(checkpoint_id): Path<String>,
) -> ApiResult<Json<CheckpointDetail>> {
    let (job, ckpt) = lookup(&st, &checkpoint_id)?;
    let dir = std::path::Path::new(&ckpt.path);
    let trainer_state = std::fs::read_to_string(dir.join("trainer_state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut files: Vec<FileEntry> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    m.is_file().then(|| FileEntry {
                        name: e.file_name().to_string_lossy().into_owned(),
                        size_bytes: m.len(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(CheckpointDetail {
        checkpoint: CheckpointView::new(&ckpt, job.published_adapter.as_deref()),
        trainer_state,
        files,
    }))
}

/// Continue the job from this checkpoint: newer checkpoints are moved aside, the history after
/// it is forgotten, and the job is queued to resume.
#[utoipa::path(post, path = "/checkpoints/{checkpoint_id}/restore", tag = "checkpoints",
    params(("checkpoint_id" = String, Path, description = "`<job_id>-step-<step>`")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, description = "The job is pending or running", body = ErrorBody)))]
async fn restore_checkpoint(
    State(st): State<AppState>,
    Path(checkpoint_id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let (job, ckpt) = lookup(&st, &checkpoint_id)?;
    let job = st.sup.restore(&job.id, ckpt.step)?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))))
}

/// Deploy a checkpoint: make it the job's published adapter (`published_adapter` of the job).
#[utoipa::path(post, path = "/checkpoints/{checkpoint_id}/deploy", tag = "checkpoints",
    params(("checkpoint_id" = String, Path, description = "`<job_id>-step-<step>`")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn deploy_checkpoint(
    State(st): State<AppState>,
    Path(checkpoint_id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let (job, ckpt) = lookup(&st, &checkpoint_id)?;
    let job = st.sup.publish_checkpoint(&job.id, ckpt.step)?;
    Ok(Json(JobView::from(&job)))
}
