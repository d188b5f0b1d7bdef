//! What a job produced, for the person at the machine: open its output folder in the file
//! manager (only when the studio runs locally) and download its adapter as a `.tar` (the
//! deployed checkpoint when one was deployed, else the final output).

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
use crate::tar;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::path::PathBuf;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(open_folder)).routes(routes!(download_adapter))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenedFolder {
    pub path: String,
}

fn opener() -> &'static str {
    if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    }
}

/// Open the job's output folder in the file manager of the machine the studio runs on.
#[utoipa::path(post, path = "/jobs/{id}/open-folder", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = OpenedFolder), (status = 404, body = ErrorBody), (status = 409, description = "Not a local studio, or no folder yet", body = ErrorBody)))]
async fn open_folder(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<OpenedFolder>> {
    let job = st.store().require_job(&id)?;
    if !st.cfg.is_loopback() {
        return Err(ApiError::Conflict(
            "this studio runs on another machine; its folders cannot be opened here".into(),
        ));
    }
    let dir = PathBuf::from(&job.output_dir);
    let dir = if dir.is_dir() { dir } else { dir.parent().map(PathBuf::from).unwrap_or(dir) };
    if !dir.is_dir() {
        return Err(ApiError::Conflict("the job has not written anything yet".into()));
    }
    let path = dir.to_string_lossy().into_owned();
    std::process::Command::new(opener())
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ApiError::Conflict(format!("could not start `{}` to open {path}: {e}", opener())))?;
    Ok(Json(OpenedFolder { path }))
}

/// A job's name as the start of a downloaded file's name: `My run #1` -> `my-run--1`.
pub(crate) fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let s = s.trim_matches('-').chars().take(60).collect::<String>();
    if s.is_empty() { "job".into() } else { s }
}

/// The folder holding the job's adapter: the deployed checkpoint, else the final output.
fn adapter_dir(job: &finetune_jobs::Job) -> Option<PathBuf> {
    let is_adapter =
        |d: &std::path::Path| d.join("adapter_config.json").is_file() || d.join("config.json").is_file();
    job.published_adapter
        .as_deref()
        .map(PathBuf::from)
        .filter(|d| is_adapter(d))
        .or_else(|| Some(PathBuf::from(&job.output_dir)).filter(|d| is_adapter(d)))
}

/// Download the job's adapter (PEFT layout; a full fine-tune's model folder) as a `.tar` file.
#[utoipa::path(get, path = "/jobs/{id}/adapter", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "application/x-tar", content_type = "application/x-tar"), (status = 404, body = ErrorBody), (status = 409, description = "No adapter yet", body = ErrorBody)))]
async fn download_adapter(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = st.store().require_job(&id)?;
    let dir = adapter_dir(&job).ok_or_else(|| {
        ApiError::Conflict("the job has no adapter yet: it is written when the job completes".into())
    })?;
    let top = format!("{}-adapter", file_stem(&job.name));
    let top2 = top.clone();
    let body = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .collect();
        files.sort_by_key(|e| e.file_name());
        let mut out = Vec::new();
        for e in files {
            let meta = e.metadata()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let data = std::fs::read(e.path())?;
            tar::append_file(&mut out, &format!("{top2}/{}", e.file_name().to_string_lossy()), &data, mtime);
        }
        tar::finish(&mut out);
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{top}.tar\"")),
        ],
        body,
    )
        .into_response())
}
