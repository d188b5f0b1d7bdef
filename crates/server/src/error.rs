//! The API's one error type. Each variant knows its HTTP status; the body is always
//! `{"error": {"code", "message", "fields"?}}`. Internal failures are logged with a reference
//! number and shown only as "internal error (ref N)", never with paths or SQL.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use finetune_jobs::JobsError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use utoipa::ToSchema;

/// One problem with one field of a request (`train.lr`, `model.path`, `file`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{}", summary(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("a bearer token is required: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{0}")]
    NotImplemented(String),
    /// Something outside the studio failed (a download).
    #[error("{0}")]
    Upstream(String),
    #[error("internal error")]
    Internal(String),
}

fn summary(fields: &[FieldError]) -> String {
    match fields {
        [one] => format!("`{}`: {}", one.key, one.message),
        many => format!("{} invalid fields", many.len()),
    }
}

/// The JSON body of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code: `not_found`, `bad_request`, `invalid`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `forbidden`, `unauthorized`,
    /// `not_implemented`, `upstream`, `internal`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

static REFERENCE: AtomicU64 = AtomicU64::new(1);

impl ApiError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { what, id: id.into() }
    }

    pub fn field(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(key, message)])
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Invalid(_) => "invalid",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Forbidden(_) => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::NotImplemented(_) => "not_implemented",
            Self::Upstream(_) => "upstream",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            Self::Internal(detail) => {
                let r = REFERENCE.fetch_add(1, Ordering::Relaxed);
                eprintln!("studio: internal error (ref {r}): {detail}");
                format!("internal error (ref {r}); the studio's log has the details")
            }
            other => other.to_string(),
        };
        let fields = match &self {
            Self::Invalid(f) => f.clone(),
            _ => Vec::new(),
        };
        let mut resp =
            (self.status(), Json(ErrorBody { error: ErrorDetail { code: self.code(), message, fields } }))
                .into_response();
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::JobNotFound(id) => Self::not_found("job", id),
            JobsError::CheckpointNotFound { job, step } => {
                Self::not_found("checkpoint", format!("{job}-step-{step}"))
            }
            e @ JobsError::InvalidState { .. } => Self::Conflict(e.to_string()),
            JobsError::Unsupported(m) => Self::NotImplemented(m),
            other => Self::internal(other),
        }
    }
}

impl From<finetune_engine::EngineError> for ApiError {
    /// Engine errors are about the user's files and settings: they name the file, line or key.
    fn from(e: finetune_engine::EngineError) -> Self {
        use finetune_engine::EngineError as E;
        match e {
            E::Config { key, message } => Self::field(key, message),
            E::Candle(c) => Self::internal(c),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details() {
        let resp = ApiError::internal("SELECT * FROM secret at /home/me/.db").into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let jobs: ApiError = JobsError::JobNotFound("job-1".into()).into();
        assert_eq!(jobs.status(), StatusCode::NOT_FOUND);
        let conflict: ApiError =
            JobsError::InvalidState { id: "j".into(), status: "completed".into(), message: "no".into() }
                .into();
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        let cfg: ApiError = finetune_engine::EngineError::config("train.lr", "must be > 0").into();
        assert_eq!(cfg.to_string(), "`train.lr`: must be > 0");
    }
}
