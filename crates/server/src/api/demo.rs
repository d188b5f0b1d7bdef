//! `POST /demo`: sets up the demo (downloads the model on first use, registers it and the demo
//! dataset) and answers with the ids the new-job wizard pre-fills. What the "Try the demo"
//! button calls; `finetune-studio demo` does the same in-process.

use crate::demo::{self, DemoError, DemoSetup};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(setup_demo))
}

/// One setup at a time: a second click waits for the first download instead of starting another.
static BUSY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Set up the demo: model (downloaded when missing), dataset and preset.
#[utoipa::path(post, path = "/demo", tag = "models",
    responses((status = 200, body = DemoSetup), (status = 502, description = "The model could not be downloaded", body = ErrorBody)))]
async fn setup_demo(State(st): State<AppState>) -> ApiResult<Json<DemoSetup>> {
    let _guard = BUSY.lock().await;
    let store = st.store().clone();
    let cfg = st.cfg.clone();
    let setup = tokio::task::spawn_blocking(move || demo::prepare(&cfg.demo, &store, &cfg.data_dir))
        .await
        .map_err(ApiError::internal)?;
    match setup {
        Ok(s) => Ok(Json(s)),
        Err(DemoError::Fetch(message)) => Err(ApiError::Upstream(message)),
        Err(DemoError::Jobs(e)) => Err(e.into()),
        Err(e @ DemoError::Io { .. }) => Err(ApiError::internal(e)),
    }
}
