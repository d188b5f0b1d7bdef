//! CORS for the desktop shell only: its webview shows the bundled UI from `tauri://localhost`
//! (`http://tauri.localhost` on Windows) and calls this server on `127.0.0.1:<port>`. No other
//! origin is granted anything, so browsers keep refusing cross-site reads. This layer sits
//! outside the guard so that preflight requests (which carry no token) are answered here.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub const SHELL_ORIGINS: &[&str] =
    &["tauri://localhost", "http://tauri.localhost", "https://tauri.localhost"];

pub fn layer() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(SHELL_ORIGINS.iter().map(|o| HeaderValue::from_static(o))))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::CONTENT_DISPOSITION])
}
