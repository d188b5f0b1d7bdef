//! Finetune Studio's HTTP server: the API under `/api/v1/fine-tuning` (jobs, live events over
//! SSE, models, configs, datasets, checkpoints), its OpenAPI description, and the web UI.
//!
//! - [`api`]: one router per resource; [`views`]: the JSON shapes; [`error`]: the one error type;
//! - [`guard`]: Host, JSON-only and bearer-token checks in front of every route;
//! - [`config_check`] and [`presets`]: config validation shared by jobs, templates and presets;
//! - [`hub`]: models in the Hugging Face cache; [`ui`]: static files or a placeholder page;
//! - [`cors`]: lets the desktop shell's webview (`tauri://localhost`) call the API;
//! - [`demo`]: the demo model, dataset and preset; [`tar`]: adapter downloads.
//!
//! [`Server::bind`] opens the store, starts the supervisor (which recovers jobs a previous
//! studio left running) and binds the socket; [`Server::run`] serves until shutdown.

pub mod api;
pub mod config_check;
pub mod cors;
pub mod demo;
pub mod error;
pub mod extract;
pub mod guard;
pub mod hub;
pub mod presets;
pub mod state;
pub mod tar;
pub mod ui;
pub mod views;

pub use state::{AppState, ServerConfig};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use finetune_jobs::{Store, Supervisor, SupervisorConfig};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Jobs(#[from] finetune_jobs::JobsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the store and starts the supervisor for `cfg`.
pub async fn start_state(cfg: ServerConfig) -> Result<AppState, StartError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| StartError::Io { path: cfg.data_dir.clone(), source })?;
    let store = Arc::new(Store::open(&cfg.db_path())?);
    let mut sup_cfg = SupervisorConfig::new(&cfg.worker_exe, cfg.jobs_dir());
    sup_cfg.worker_args = cfg.worker_args.clone();
    sup_cfg.max_concurrent_per_device = cfg.max_concurrent_per_device;
    sup_cfg.cancel_grace = cfg.cancel_grace;
    sup_cfg.tensorboard_dir = Some(cfg.runs_dir());
    // Reliability tests inject faults into jobs; never on in normal use.
    sup_cfg.allow_faults = std::env::var("FINETUNE_ALLOW_FAULTS").is_ok_and(|v| v == "1");
    if let Some(ms) = std::env::var("FINETUNE_RESTART_BACKOFF_MS").ok().and_then(|v| v.parse().ok()) {
        sup_cfg.restart_backoff = std::time::Duration::from_millis(ms);
    }
    let sup = Supervisor::start(store, sup_cfg).await?;
    Ok(AppState { sup, cfg: Arc::new(cfg) })
}

/// The whole application: API, OpenAPI document, UI, with the guard in front.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api::routes(state.cfg.max_upload_bytes);
    let doc = Arc::new(doc);
    let api_404 =
        || async { error::ApiError::NotFound { what: "route", id: "this path".into() }.into_response() };
    Router::new()
        .merge(api)
        .route("/api/v1/openapi.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .route("/api/{*rest}", axum::routing::any(api_404))
        .merge(ui::service(state.cfg.ui_dir.as_deref()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(cors::layer())
        .with_state(state)
}

/// A bound, not yet serving, studio server.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
    state: AppState,
}

/// 128 random bits as hex, from the OS (`/dev/urandom`) or the standard library's random keys.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 16];
    let from_os =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if from_os.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    /// Prepares the studio: a token is generated when the host is not loopback and none is set.
    pub async fn bind(mut cfg: ServerConfig) -> Result<Self, StartError> {
        if !cfg.is_loopback() && cfg.token.is_none() {
            cfg.token = Some(generate_token());
        }
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']').to_string();
        let addr_text = if host.contains(':') {
            format!("[{host}]:{}", cfg.port)
        } else {
            format!("{host}:{}", cfg.port)
        };
        let listener = tokio::net::TcpListener::bind(&addr_text)
            .await
            .map_err(|source| StartError::Bind { addr: addr_text.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: addr_text, source })?;
        let state = start_state(cfg).await?;
        let router = app(state.clone());
        Ok(Self { listener, router, addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token clients must send, if any.
    pub fn token(&self) -> Option<&str> {
        self.state.cfg.token.as_deref()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await
    }
}
