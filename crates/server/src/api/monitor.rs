//! The training monitor's API: a job's telemetry samples and alerts, the newest alerts across
//! jobs (the dashboard), shareable reports (HTML, Markdown, PNG, SVG) and exports of the metric
//! history (CSV, MLflow JSON). Live telemetry and alerts also arrive on the job's SSE stream.

use super::outputs::file_stem;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use finetune_jobs::AlertRecord;
use finetune_monitor::export;
use finetune_monitor::report::{ReportFormat, RunRecord, render};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(job_telemetry))
        .routes(routes!(job_alerts))
        .routes(routes!(recent_alerts))
        .routes(routes!(job_report))
        .routes(routes!(export_metrics))
}

/// One GPU in a telemetry sample; every reading is null when the driver does not report it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct GpuTelemetryView {
    pub index: u32,
    pub name: String,
    /// Whether the training process holds memory on it.
    pub in_use: bool,
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// Memory the training process holds on this GPU.
    pub process_memory_bytes: Option<u64>,
}

/// A sample of the training process, the machine and its GPUs (also the SSE `telemetry` event).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct TelemetrySampleView {
    /// Unix ms.
    pub ts_ms: i64,
    /// The newest optimizer step when the sample was taken.
    pub step: u64,
    pub process_rss_bytes: u64,
    /// Percent of one core.
    pub process_cpu_percent: Option<f64>,
    pub system_memory_used_bytes: u64,
    pub system_memory_total_bytes: u64,
    pub system_cpu_percent: Option<f64>,
    /// `ok`, or `unavailable: <why>` (no NVIDIA driver, no GPU).
    pub gpu_status: String,
    pub gpus: Vec<GpuTelemetryView>,
}

impl TelemetrySampleView {
    pub fn from_json(v: serde_json::Value) -> Option<Self> {
        serde_json::from_value(v).ok()
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryQuery {
    /// Only samples taken after this time (Unix ms; 0: from the start).
    after_ts_ms: Option<i64>,
    /// 1 to 100000 (default 20000).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryPage {
    pub samples: Vec<TelemetrySampleView>,
}

/// The job's telemetry samples, oldest first.
#[utoipa::path(get, path = "/jobs/{id}/telemetry", tag = "monitoring", params(("id" = String, Path, description = "Job id"), TelemetryQuery),
    responses((status = 200, body = TelemetryPage), (status = 404, body = ErrorBody)))]
async fn job_telemetry(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TelemetryQuery>,
) -> ApiResult<Json<TelemetryPage>> {
    st.store().require_job(&id)?;
    let rows =
        st.store().telemetry(&id, q.after_ts_ms.unwrap_or(0), q.limit.unwrap_or(20_000).clamp(1, 100_000))?;
    Ok(Json(TelemetryPage {
        samples: rows.into_iter().filter_map(|r| TelemetrySampleView::from_json(r.sample)).collect(),
    }))
}

/// An anomaly the engine found, or a decision the studio took for a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    pub id: i64,
    pub job_id: String,
    pub job_name: Option<String>,
    /// Unix ms.
    pub ts_ms: i64,
    pub step: u64,
    /// `nan_loss`, `nan_gradient`, `loss_spike`, `recovered`, `divergence`, `plateau`,
    /// `exploding_gradient`, `memory_pressure`, `throughput_drop`, or a studio decision
    /// (`restart`, `oom_restart`, ...).
    pub kind: String,
    pub message: String,
    pub suggestion: String,
    /// `worker` (the engine) or `studio` (the supervisor).
    pub source: String,
}

impl From<AlertRecord> for AlertView {
    fn from(a: AlertRecord) -> Self {
        Self {
            id: a.id,
            job_id: a.job_id,
            job_name: a.job_name,
            ts_ms: a.ts,
            step: a.step,
            kind: a.kind,
            message: a.message,
            suggestion: a.suggestion,
            source: a.source,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
}

/// The job's alerts, oldest first.
#[utoipa::path(get, path = "/jobs/{id}/alerts", tag = "monitoring", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = AlertList), (status = 404, body = ErrorBody)))]
async fn job_alerts(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<AlertList>> {
    st.store().require_job(&id)?;
    Ok(Json(AlertList { alerts: st.store().alerts(&id)?.into_iter().map(AlertView::from).collect() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentAlertsQuery {
    /// 1 to 500 (default 20).
    limit: Option<u32>,
}

/// The newest alerts of every job, newest first (the dashboard).
#[utoipa::path(get, path = "/alerts", tag = "monitoring", params(RecentAlertsQuery),
    responses((status = 200, body = AlertList)))]
async fn recent_alerts(
    State(st): State<AppState>,
    Query(q): Query<RecentAlertsQuery>,
) -> ApiResult<Json<AlertList>> {
    let rows = st.store().recent_alerts(q.limit.unwrap_or(20).clamp(1, 500))?;
    Ok(Json(AlertList { alerts: rows.into_iter().map(AlertView::from).collect() }))
}

/// The job's history (a missing job is a 404 through `JobsError::JobNotFound`).
async fn load_run(st: &AppState, id: &str) -> ApiResult<RunRecord> {
    let store = st.sup.store().clone();
    let id = id.to_string();
    let run = tokio::task::spawn_blocking(move || RunRecord::load(&store, &id))
        .await
        .map_err(ApiError::internal)?;
    Ok(run?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// `html` (default), `md`, `png` or `svg`.
    format: Option<String>,
    /// Send as a file to save rather than to show.
    download: Option<bool>,
}

/// A shareable report of the job: the chart of loss, eval loss, learning rate and memory, and a
/// summary (config, hardware, duration, tokens, losses, alerts).
#[utoipa::path(get, path = "/jobs/{id}/report", tag = "monitoring", params(("id" = String, Path, description = "Job id"), ReportQuery),
    responses((status = 200, description = "text/html, text/markdown, image/png or image/svg+xml"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_report(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Response> {
    let name = q.format.as_deref().unwrap_or("html");
    let format = ReportFormat::parse(name).ok_or_else(|| {
        ApiError::BadRequest(format!("`format`: {name:?} is not one of html, md, png, svg"))
    })?;
    let run = load_run(&st, &id).await?;
    let file = format!("{}-report.{}", file_stem(&run.job.name), format.extension());
    let body = tokio::task::spawn_blocking(move || render(&run, format))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::Internal)?;
    let disposition = if q.download.unwrap_or(false) { "attachment" } else { "inline" };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, format!("{disposition}; filename=\"{file}\"")),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default: one row per step) or `json` (MLflow's metric list).
    format: Option<String>,
}

/// The job's metric history as a file: CSV, or MLflow's `{"metrics": [{key, value, timestamp, step}]}`.
#[utoipa::path(get, path = "/jobs/{id}/metrics/export", tag = "monitoring", params(("id" = String, Path, description = "Job id"), ExportQuery),
    responses((status = 200, description = "text/csv or application/json"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn export_metrics(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    let format = q.format.as_deref().unwrap_or("csv");
    if !matches!(format, "csv" | "json") {
        return Err(ApiError::BadRequest(format!("`format`: {format:?} is not one of csv, json")));
    }
    let run = load_run(&st, &id).await?;
    let (body, content_type, ext) = if format == "csv" {
        (export::csv(&run), "text/csv; charset=utf-8", "csv")
    } else {
        (format!("{:#}", export::mlflow_json(&run)), "application/json", "mlflow.json")
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-metrics.{ext}\"", file_stem(&run.job.name)),
            ),
        ],
        body,
    )
        .into_response())
}
