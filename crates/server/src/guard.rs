//! Request checks that run before any handler:
//!
//! 1. **Host** must be a loopback name (`localhost`, `127.0.0.1`, `[::1]`), the configured host
//!    or an allowed extra name; anything else is refused (a DNS-rebinding page sends its own
//!    name). A server bound to all interfaces (`0.0.0.0`) relies on the token instead.
//! 2. **State-changing requests** (POST, PUT, PATCH) must be `application/json`, which a
//!    cross-site form cannot send without a CORS preflight we never grant; the dataset upload
//!    route alone also takes `multipart/form-data`. A request carrying a foreign `Origin` is
//!    refused outright.
//! 3. **Bearer token** for `/api/...` when the server has one (always when bound beyond
//!    loopback): `Authorization: Bearer <token>`, or `?access_token=` for `EventSource`.

use crate::error::ApiError;
use crate::state::{AppState, is_loopback_name};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The path that accepts multipart bodies.
pub const UPLOAD_PATH: &str = "/api/v1/fine-tuning/datasets";

fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn host_allowed(state: &AppState, name: &str) -> bool {
    let cfg = &state.cfg;
    let configured = cfg.host.trim_start_matches('[').trim_end_matches(']');
    is_loopback_name(name)
        || name.eq_ignore_ascii_case(configured)
        || configured == "0.0.0.0"
        || configured == "::"
        || cfg.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn origin_allowed(state: &AppState, origin: &str) -> bool {
    if origin == "null" {
        return false;
    }
    if matches!(origin, "tauri://localhost" | "http://tauri.localhost" | "https://tauri.localhost") {
        return true;
    }
    let Some((_, rest)) = origin.split_once("://") else { return false };
    host_allowed(state, host_name(rest.trim_end_matches('/')))
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("access_token="))
}

fn check(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .ok_or_else(|| ApiError::BadRequest("the request has no Host header".into()))?;
    if !host_allowed(state, host_name(host)) {
        return Err(ApiError::Forbidden(format!(
            "host `{}` is not served here; use http://127.0.0.1 or http://localhost",
            host_name(host)
        )));
    }
    let path = req.uri().path();
    if path.starts_with("/api/")
        && let Some(token) = &state.cfg.token
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .or_else(|| query_token(req.uri().query()));
        if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes())) {
            return Err(ApiError::Unauthorized);
        }
    }
    let changes_state = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    if changes_state
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok())
        && !origin_allowed(state, origin)
    {
        return Err(ApiError::Forbidden(format!("requests from origin `{origin}` are not accepted")));
    }
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or("");
        let multipart_ok = path == UPLOAD_PATH && ct.to_ascii_lowercase().starts_with("multipart/form-data");
        if !is_json(ct) && !multipart_ok {
            let also = if path == UPLOAD_PATH { " (or multipart/form-data for an upload)" } else { "" };
            return Err(ApiError::UnsupportedMediaType(format!(
                "state-changing requests must send `Content-Type: application/json`{also}; got `{}`",
                if ct.is_empty() { "nothing" } else { ct }
            )));
        }
    }
    Ok(())
}

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_drop_the_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:80"), "evil.example");
        assert!(is_json("application/json; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert_eq!(query_token(Some("after_step=3&access_token=xyz")), Some("xyz"));
    }
}
