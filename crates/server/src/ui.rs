//! The web UI: the built `ui/dist` folder when there is one (unknown paths fall back to its
//! `index.html` for client-side routing), otherwise a small placeholder page that links to the
//! API description.

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use std::path::Path;
use tower_http::services::{ServeDir, ServeFile};

const PLACEHOLDER: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Finetune Studio</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}code{background:#eee;padding:0 .2rem}</style>
</head><body>
<h1>Finetune Studio</h1>
<p>The studio is running. The web UI has not been built into this installation
(<code>ui/dist</code> is missing), but the API is available:</p>
<ul>
<li><a href="/api/v1/openapi.json">API description (OpenAPI)</a></li>
<li><a href="/api/v1/fine-tuning/jobs">Jobs</a></li>
<li><a href="/api/v1/fine-tuning/configs/templates">Presets</a></li>
</ul>
</body></html>
"#;

pub fn service<S: Clone + Send + Sync + 'static>(ui_dir: Option<&Path>) -> Router<S> {
    match ui_dir.filter(|d| d.join("index.html").is_file()) {
        Some(dir) => {
            let files = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
            Router::new().fallback_service(files)
        }
        None => Router::new().route("/", get(|| async { Html(PLACEHOLDER) })),
    }
}
