//! `/datasets`: upload a JSONL/JSON file (multipart, with a size limit) or register one where it
//! is (JSON `{"path"}`), list, detail with a preview and token-length statistics, validation with
//! per-line errors, delete. Uploaded files live in `<data dir>/datasets/<id>/<name>`; the name is
//! reduced to a plain file name, so it cannot leave that folder.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::views::DatasetView;
use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use finetune_engine::config::DataSection;
use finetune_engine::data::{self, DataReport, PreviewRow, RecordError};
use finetune_engine::tokenizer::TextTokenizer;
use finetune_jobs::DatasetRecord;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_dataset, list_datasets))
        .routes(routes!(get_dataset, delete_dataset))
        .routes(routes!(validate_dataset))
}

/// A plain file name from whatever the client sent: no folders, no leading dots, only
/// letters, digits, `.`, `_` and `-`.
pub fn safe_file_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').chars().take(100).collect::<String>();
    if cleaned.is_empty() { "dataset.jsonl".into() } else { cleaned }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDataset {
    /// A JSONL or JSON file on this machine, used where it is.
    pub path: String,
    pub name: Option<String>,
}

/// Upload a dataset (`multipart/form-data` with a `file` part and an optional `name` part), or
/// register a local file (`application/json` `{"path", "name"?}`).
#[utoipa::path(post, path = "/datasets", tag = "datasets",
    request_body(content = RegisterDataset, description = "multipart/form-data (`file`, `name`) or JSON `{path, name}`"),
    responses((status = 201, body = DatasetView), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upload_dataset(
    State(st): State<AppState>,
    req: Request,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let rec = if ct.starts_with("multipart/form-data") {
        let mp = Multipart::from_request(req, &st).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        receive_upload(&st, mp).await?
    } else {
        let JsonBody(body) = JsonBody::<RegisterDataset>::from_request(req, &st).await?;
        let path = PathBuf::from(&body.path);
        let meta = std::fs::metadata(&path)
            .map_err(|e| ApiError::field("path", format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ApiError::field("path", format!("{}: not a file", path.display())));
        }
        let abs = std::fs::canonicalize(&path).unwrap_or(path);
        let name = body.name.unwrap_or_else(|| safe_file_name(&body.path));
        st.store().add_dataset(None, &name, &abs.to_string_lossy(), meta.len(), false)?
    };
    Ok((StatusCode::CREATED, Json(DatasetView::from(&rec))))
}

async fn receive_upload(st: &AppState, mut mp: Multipart) -> ApiResult<DatasetRecord> {
    let limit = st.cfg.max_upload_bytes;
    let id = finetune_jobs::ids::new_id("ds");
    let dir = st.cfg.datasets_dir().join(&id);
    let mut name = None;
    let mut stored: Option<(PathBuf, u64)> = None;
    let cleanup = |dir: &std::path::Path| {
        let _ = std::fs::remove_dir_all(dir);
    };
    while let Some(mut field) =
        mp.next_field().await.map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?
    {
        match field.name() {
            Some("name") => name = Some(field.text().await.map_err(|e| ApiError::BadRequest(e.to_string()))?),
            Some("file") => {
                let file_name = safe_file_name(field.file_name().unwrap_or("dataset.jsonl"));
                if !(file_name.ends_with(".jsonl") || file_name.ends_with(".json")) {
                    return Err(ApiError::field(
                        "file",
                        format!("`{file_name}`: datasets are .jsonl or .json files"),
                    ));
                }
                std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
                let path = dir.join(&file_name);
                let mut out = std::fs::File::create(&path).map_err(ApiError::internal)?;
                let mut size = 0u64;
                loop {
                    let chunk = match field.chunk().await {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => {
                            cleanup(&dir);
                            let too_big = e.to_string().contains("limit");
                            return Err(if too_big {
                                ApiError::PayloadTooLarge(format!("uploads are limited to {limit} bytes"))
                            } else {
                                ApiError::BadRequest(format!("upload interrupted: {e}"))
                            });
                        }
                    };
                    size += chunk.len() as u64;
                    if size > limit {
                        cleanup(&dir);
                        return Err(ApiError::PayloadTooLarge(format!(
                            "`{file_name}` is larger than the upload limit of {limit} bytes"
                        )));
                    }
                    out.write_all(&chunk).map_err(ApiError::internal)?;
                }
                out.sync_all().map_err(ApiError::internal)?;
                stored = Some((path, size));
            }
            _ => {}
        }
    }
    let Some((path, size)) = stored else {
        cleanup(&dir);
        return Err(ApiError::field("file", "no `file` part in the upload"));
    };
    let name = name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    Ok(st.store().add_dataset(Some(&id), &name, &path.to_string_lossy(), size, true)?)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetView>,
}

/// Datasets, newest first.
#[utoipa::path(get, path = "/datasets", tag = "datasets", responses((status = 200, body = DatasetList)))]
async fn list_datasets(State(st): State<AppState>) -> ApiResult<Json<DatasetList>> {
    Ok(Json(DatasetList { datasets: st.store().datasets()?.iter().map(DatasetView::from).collect() }))
}

fn dataset_or_404(st: &AppState, id: &str) -> ApiResult<DatasetRecord> {
    st.store().dataset(id)?.ok_or_else(|| ApiError::not_found("dataset", id))
}

/// The tokenizer of `model` (a registered model id or a folder), or of the newest registered
/// model when none is named.
fn tokenizer(st: &AppState, model: Option<&str>) -> ApiResult<Option<(String, TextTokenizer)>> {
    let dir = match model {
        Some(m) => match st.store().model(m)? {
            Some(rec) => rec.path,
            None => m.to_string(),
        },
        None => match st.store().models()?.into_iter().next() {
            Some(rec) => rec.path,
            None => return Ok(None),
        },
    };
    let tok = TextTokenizer::from_dir(std::path::Path::new(&dir))
        .map_err(|e| ApiError::field("model", e.to_string()))?;
    Ok(Some((dir, tok)))
}

fn data_section(format: Option<String>, max_len: Option<usize>) -> DataSection {
    let mut d = DataSection::default();
    if let Some(f) = format {
        d.format = f;
    }
    if let Some(m) = max_len {
        d.max_len = m;
    }
    d
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// Tokenizer to use: a registered model id or a model folder (default: the newest registered model).
    model: Option<String>,
    /// Records to preview (default 3, at most 20).
    preview: Option<usize>,
    /// auto, alpaca, chat, text or tokens.
    format: Option<String>,
    max_len: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LengthStats {
    pub min: usize,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub mean: f64,
    /// Examples per power-of-two length bucket: `[upper bound, count]`.
    pub histogram: Vec<(usize, usize)>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetDetail {
    #[serde(flatten)]
    pub dataset: DatasetView,
    /// The model folder whose tokenizer produced the statistics, if one was available.
    pub tokenizer_model: Option<String>,
    /// Rows, examples kept, truncated and skipped, token counts (needs a tokenizer).
    #[schema(value_type = Object)]
    pub report: Option<DataReport>,
    pub token_lengths: Option<LengthStats>,
    /// The first records as training would see them (needs a tokenizer).
    #[schema(value_type = Vec<Object>)]
    pub preview: Vec<PreviewRow>,
    /// Why there are no statistics, when there are none.
    pub note: Option<String>,
}

fn length_stats(mut lens: Vec<usize>) -> Option<LengthStats> {
    if lens.is_empty() {
        return None;
    }
    lens.sort_unstable();
    let at = |q: f64| lens[((lens.len() - 1) as f64 * q).round() as usize];
    let mut histogram: Vec<(usize, usize)> = Vec::new();
    for &l in &lens {
        let bound = l.max(1).next_power_of_two();
        match histogram.last_mut() {
            Some((b, n)) if *b == bound => *n += 1,
            _ => histogram.push((bound, 1)),
        }
    }
    Some(LengthStats {
        min: lens[0],
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: lens[lens.len() - 1],
        mean: lens.iter().sum::<usize>() as f64 / lens.len() as f64,
        histogram,
    })
}

/// A dataset with a preview and token-length statistics.
#[utoipa::path(get, path = "/datasets/{id}", tag = "datasets", params(("id" = String, Path, description = "Dataset id"), DetailQuery),
    responses((status = 200, body = DatasetDetail), (status = 404, body = ErrorBody), (status = 422, description = "The file has a bad record: the message names its line and field", body = ErrorBody)))]
async fn get_dataset(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> ApiResult<Json<DatasetDetail>> {
    let rec = dataset_or_404(&st, &id)?;
    let view = DatasetView::from(&rec);
    let Some((model_dir, tok)) = tokenizer(&st, q.model.as_deref())? else {
        return Ok(Json(DatasetDetail {
            dataset: view,
            tokenizer_model: None,
            report: None,
            token_lengths: None,
            preview: vec![],
            note: Some("register a model or pass ?model= to see token statistics and a preview".into()),
        }));
    };
    let section = data_section(q.format, q.max_len);
    let n = q.preview.unwrap_or(3).min(20);
    let path = PathBuf::from(&rec.path);
    let result = tokio::task::spawn_blocking(move || {
        let ds = data::load_dataset(&path, &section, &tok, 0)?;
        let preview = data::preview(&path, &section, &tok, n)?;
        Ok::<_, finetune_engine::EngineError>((ds, preview))
    })
    .await
    .map_err(ApiError::internal)?;
    let (ds, preview) = result.map_err(|e| ApiError::field("file", e.to_string()))?;
    let lens: Vec<usize> = ds.train.iter().chain(&ds.eval).map(|e| e.len()).collect();
    Ok(Json(DatasetDetail {
        dataset: view,
        tokenizer_model: Some(model_dir),
        report: Some(ds.report),
        token_lengths: length_stats(lens),
        preview,
        note: None,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateDataset {
    /// Also render every record with this model's tokenizer and chat template (a registered
    /// model id or a folder); without it only the structure is checked.
    pub model: Option<String>,
    pub format: Option<String>,
    pub max_len: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetValidation {
    pub valid: bool,
    /// One entry per bad record: 1-based line, the field at fault and a message (at most 100).
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<RecordError>,
    pub checked_with_tokenizer: bool,
}

/// Check every record of a dataset and report each bad one by line and field.
#[utoipa::path(post, path = "/datasets/{id}/validate", tag = "datasets", params(("id" = String, Path, description = "Dataset id")),
    request_body = ValidateDataset,
    responses((status = 200, body = DatasetValidation), (status = 404, body = ErrorBody)))]
async fn validate_dataset(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<DatasetValidation>> {
    let rec = dataset_or_404(&st, &id)?;
    let req: ValidateDataset = if body.iter().all(u8::is_ascii_whitespace) {
        ValidateDataset::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let tok = match &req.model {
        Some(m) => tokenizer(&st, Some(m))?.map(|(_, t)| t),
        None => None,
    };
    let section = data_section(req.format, req.max_len);
    let path = PathBuf::from(&rec.path);
    let checked_with_tokenizer = tok.is_some();
    let errors = tokio::task::spawn_blocking(move || data::validate_file(&path, &section, tok.as_ref()))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(DatasetValidation { valid: errors.is_empty(), errors, checked_with_tokenizer }))
}

/// Delete a dataset (an uploaded file is removed; a registered one is left where it is).
#[utoipa::path(delete, path = "/datasets/{id}", tag = "datasets", params(("id" = String, Path, description = "Dataset id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_dataset(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let rec = dataset_or_404(&st, &id)?;
    if rec.uploaded && finetune_jobs::ids::is_valid(&rec.id) {
        let dir = st.cfg.datasets_dir().join(&rec.id);
        if dir.is_dir() {
            std::fs::remove_dir_all(&dir).map_err(ApiError::internal)?;
        }
    }
    st.store().delete_dataset(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(safe_file_name("../../etc/passwd.jsonl"), "passwd.jsonl");
        assert_eq!(safe_file_name("..\\..\\x.json"), "x.json");
        assert_eq!(safe_file_name("..."), "dataset.jsonl");
        assert_eq!(safe_file_name(".hidden.jsonl"), "hidden.jsonl");
        assert_eq!(safe_file_name("my data (1).jsonl"), "my_data__1_.jsonl");
        assert_eq!(safe_file_name(""), "dataset.jsonl");
    }

    #[test]
    fn length_statistics() {
        let s = length_stats(vec![3, 1, 2, 100, 5]).unwrap();
        assert_eq!((s.min, s.p50, s.max), (1, 3, 100));
        assert_eq!(s.histogram, vec![(1, 1), (2, 1), (4, 1), (8, 1), (128, 1)]);
        assert!(length_stats(vec![]).is_none());
    }
}
