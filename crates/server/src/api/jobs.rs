//! `/jobs`: create (the body is the training config as JSON), list with filters and paging,
//! detail, cancel, delete, pause, resume, progress, logs and metrics.

use crate::config_check::{JobOptions, absolutize, check_config, check_paths, split_job_options};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::views::{AttemptView, JobDetail, JobView, LogView, MetricPointView, state_json};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use finetune_jobs::{JobFilter, JobStatus, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(cancel_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(job_progress))
        .routes(routes!(job_logs))
        .routes(routes!(job_metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedJob {
    pub job_id: String,
    pub status: String,
}

fn default_name(cfg: &finetune_engine::config::TrainConfig) -> String {
    let stem =
        |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(
        "{} {} on {}",
        format!("{:?}", cfg.method.kind).to_lowercase(),
        stem(&cfg.model.path),
        stem(&cfg.data.path)
    )
}

/// Create a fine-tuning job.
///
/// The body is the training config as JSON with the same sections and keys as a TOML config
/// (`model`, `method`, `lora`, `quant`, `data`, `train`, `checkpoint`), plus an optional `job`
/// object (`name`, `max_restarts`, `model_id`, `dataset_id`). Every invalid key is reported.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    request_body(content = Object, description = "Training config sections plus an optional `job` object"),
    responses(
        (status = 201, description = "Queued", body = CreatedJob),
        (status = 422, description = "Invalid config: `fields` names each key", body = ErrorBody),
    ))]
async fn create_job(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<CreatedJob>)> {
    let (opts, value): (JobOptions, Value) = split_job_options(&st, body)?;
    let mut cfg = check_config(value).map_err(ApiError::Invalid)?;
    let (errors, _) = check_paths(&cfg, true);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    absolutize(&mut cfg);
    let name = opts.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| default_name(&cfg));
    let new = NewJob {
        name,
        method: format!("{:?}", cfg.method.kind).to_lowercase(),
        model_path: cfg.model.path.to_string_lossy().into_owned(),
        dataset_path: cfg.data.path.to_string_lossy().into_owned(),
        device: cfg.model.device.clone(),
        config_json: serde_json::to_string(&cfg).map_err(ApiError::internal)?,
        max_restarts: opts.max_restarts.min(100),
        fault: opts.fault,
    };
    let job = st.sup.submit(&new)?;
    Ok((StatusCode::CREATED, Json(CreatedJob { job_id: job.id, status: job.status.to_string() })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Comma-separated statuses, e.g. `running,pending`.
    status: Option<String>,
    /// Text found in the name, model path or dataset path.
    q: Option<String>,
    /// lora, qlora or full.
    method: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    offset: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Jobs matching the filters, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
async fn list_jobs(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<JobList>> {
    let mut statuses = Vec::new();
    for s in q.status.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let status = JobStatus::parse(s).ok_or_else(|| {
            let all: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::field("status", format!("unknown status `{s}`; one of {}", all.join(", ")))
        })?;
        statuses.push(status);
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let offset = q.offset.unwrap_or(0);
    let filter = JobFilter { statuses, search: q.q, method: q.method, limit, offset };
    let (jobs, total) = st.store().list_jobs(&filter)?;
    Ok(Json(JobList { jobs: jobs.iter().map(JobView::from).collect(), total, limit, offset }))
}

/// A job with its config and attempts.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody)))]
async fn get_job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<JobDetail>> {
    let job = st.store().require_job(&id)?;
    let attempts = st.store().attempts(&id)?;
    Ok(Json(JobDetail {
        state: state_json(&job.state()),
        config: serde_json::from_str(&job.config_json).unwrap_or(Value::Null),
        attempts: attempts.iter().map(AttemptView::from).collect(),
        job: JobView::from(&job),
    }))
}

/// Delete a job that is not running, with its output and history.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody), (status = 409, description = "Running: cancel it first", body = ErrorBody)))]
async fn delete_job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    st.store().require_job(&id)?;
    st.sup.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel a job. A running worker gets SIGTERM, then SIGKILL after the grace period; the job
/// ends `cancelled` with its checkpoints kept.
#[utoipa::path(method(put, post), path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let job = st.sup.cancel(&id)?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))))
}

/// Pause a job: the worker finishes its step, writes a checkpoint and exits (`paused`).
#[utoipa::path(post, path = "/jobs/{id}/pause", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn pause_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let job = st.sup.pause(&id)?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))))
}

/// Resume a paused, interrupted, failed or cancelled job from its newest checkpoint.
#[utoipa::path(post, path = "/jobs/{id}/resume", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let job = st.sup.resume(&id)?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub job_id: String,
    pub status: String,
    pub progress: f64,
    pub current_step: u64,
    pub total_steps: u64,
    pub current_epoch: f64,
    pub total_epochs: f64,
    pub current_loss: Option<f64>,
    pub best_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: Option<f64>,
    pub eta_s: Option<f64>,
    /// Memory of the newest step (GPU when reported, else the worker's resident memory).
    pub mem_bytes: Option<u64>,
}

/// Where a job is: step, epoch, loss, speed, time left and memory.
#[utoipa::path(get, path = "/jobs/{id}/progress", tag = "monitoring", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Progress), (status = 404, body = ErrorBody)))]
async fn job_progress(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Progress>> {
    let j = st.store().require_job(&id)?;
    let last = st.store().metrics(&id, j.current_step.saturating_sub(1), 1)?;
    Ok(Json(Progress {
        job_id: j.id.clone(),
        status: j.status.to_string(),
        progress: j.progress(),
        current_step: j.current_step,
        total_steps: j.total_steps,
        current_epoch: j.current_epoch,
        total_epochs: j.total_epochs,
        current_loss: j.current_loss,
        best_loss: j.best_loss,
        eval_loss: j.eval_loss,
        tokens_per_s: j.tokens_per_s,
        elapsed_s: j.elapsed_s,
        eta_s: j.eta_s,
        mem_bytes: last.first().and_then(|p| p.mem_bytes),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Return lines after this id (0: from the start).
    after_id: Option<i64>,
    /// 1 to 5000 (default 1000).
    limit: Option<u32>,
    /// Only lines of this level (info, warn, error).
    level: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub logs: Vec<LogView>,
    /// Pass as `after_id` for the next page.
    pub next_after_id: i64,
}

/// The job's log: engine messages, the worker's stderr and the studio's own notes.
#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "monitoring", params(("id" = String, Path, description = "Job id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody)))]
async fn job_logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<LogPage>> {
    st.store().require_job(&id)?;
    let after = q.after_id.unwrap_or(0);
    let lines = st.store().logs(&id, after, q.limit.unwrap_or(1000).clamp(1, 5000), q.level.as_deref())?;
    let next_after_id = lines.last().map(|l| l.id).unwrap_or(after);
    Ok(Json(LogPage { logs: lines.iter().map(LogView::from).collect(), next_after_id }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only steps after this one (0: from the start).
    after_step: Option<u64>,
    /// 1 to 100000 (default 10000).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricPage {
    pub points: Vec<MetricPointView>,
}

/// The job's metric points, one per optimizer step.
#[utoipa::path(get, path = "/jobs/{id}/metrics", tag = "monitoring", params(("id" = String, Path, description = "Job id"), MetricsQuery),
    responses((status = 200, body = MetricPage), (status = 404, body = ErrorBody)))]
async fn job_metrics(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Json<MetricPage>> {
    st.store().require_job(&id)?;
    let points =
        st.store().metrics(&id, q.after_step.unwrap_or(0), q.limit.unwrap_or(10_000).clamp(1, 100_000))?;
    Ok(Json(MetricPage { points: points.iter().map(MetricPointView::from).collect() }))
}
