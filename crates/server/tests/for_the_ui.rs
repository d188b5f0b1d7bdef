//! The routes added for the web UI and the desktop shell, in process: the machine summary, the
//! demo setup (with a fixture model in place of the download), adapter downloads as `.tar`,
//! "open folder" refusals, and CORS granted to the desktop webview's origin only.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use finetune_server::{ServerConfig, app, start_state};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

const API: &str = "/api/v1/fine-tuning";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn config(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir.join("data"), "/bin/false");
    cfg.hf_cache = None;
    cfg.demo.cache_dir = dir.join("cache");
    cfg.demo.model_override = Some(fixtures().join("models/llama"));
    cfg
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri).header("host", "127.0.0.1:7860");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, bytes.to_vec())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn system_summary_and_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let (status, _, body) = call(&router, "GET", &format!("{API}/system"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let s = json(&body);
    assert_eq!(s["first_run"], true);
    assert_eq!(s["local"], true);
    assert!(s["cpu_threads"].as_u64().unwrap() >= 1);
    assert!(s["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(s["gpus"].is_array());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn the_demo_registers_its_model_dataset_and_preset_once() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let ct = [("content-type", "application/json")];
    let (status, _, body) = call(&router, "POST", &format!("{API}/demo"), &ct).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let setup = json(&body);
    assert_eq!(setup["preset_id"], "demo-smollm2-cpu");
    let (_, _, again) = call(&router, "POST", &format!("{API}/demo"), &ct).await;
    assert_eq!(json(&again)["model_id"], setup["model_id"]);
    assert_eq!(json(&again)["dataset_id"], setup["dataset_id"]);
    let (_, _, models) = call(&router, "GET", &format!("{API}/models"), &[]).await;
    let models = json(&models);
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    assert_eq!(models["models"][0]["family"], "llama");
    // The dataset is valid chat data for the model, and the preset exists.
    let id = setup["dataset_id"].as_str().unwrap();
    let (status, _, v) = call(&router, "POST", &format!("{API}/datasets/{id}/validate"), &ct).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&v)["valid"], true, "{}", String::from_utf8_lossy(&v));
    let (_, _, t) = call(&router, "GET", &format!("{API}/configs/templates"), &[]).await;
    assert!(json(&t)["templates"].as_array().unwrap().iter().any(|p| p["id"] == "demo-smollm2-cpu"));
}

#[tokio::test]
async fn a_failed_download_is_a_plain_502() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.demo.model_override = None;
    // A cache dir that cannot be created: the fetch fails before any download.
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    cfg.demo.cache_dir = dir.path().join("file").join("cache");
    let router = app(start_state(cfg).await.unwrap());
    let (status, _, body) =
        call(&router, "POST", &format!("{API}/demo"), &[("content-type", "application/json")]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let e = json(&body);
    assert_eq!(e["error"]["code"], "upstream");
    assert!(e["error"]["message"].as_str().unwrap().contains("cache"), "{e}");
}

#[tokio::test]
async fn adapter_download_and_open_folder_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let state = start_state(config(dir.path())).await.unwrap();
    let store = state.store().clone();
    let router = app(state);
    let (status, _, _) = call(&router, "GET", &format!("{API}/jobs/job-000000000000/adapter"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A job whose output folder holds an adapter (as a completed worker leaves it).
    let job = store
        .create_job(
            &finetune_jobs::NewJob {
                name: "My run #1".into(),
                method: "lora".into(),
                model_path: "/m".into(),
                dataset_path: "/d.jsonl".into(),
                device: "cpu".into(),
                config_json: "{}".into(),
                max_restarts: 0,
                fault: None,
            },
            &dir.path().join("data/jobs"),
        )
        .unwrap();
    let (status, _, body) = call(&router, "GET", &format!("{API}/jobs/{}/adapter", job.id), &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("no adapter yet"));
    let out = PathBuf::from(&job.output_dir);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("adapter_config.json"), b"{\"r\": 8}").unwrap();
    std::fs::write(out.join("adapter_model.safetensors"), vec![3u8; 1000]).unwrap();
    let (status, headers, tar) = call(&router, "GET", &format!("{API}/jobs/{}/adapter", job.id), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-tar");
    assert!(headers["content-disposition"].to_str().unwrap().contains("my-run--1-adapter.tar"));
    assert_eq!(&tar[..31], b"my-run--1-adapter/adapter_confi");
    assert_eq!(&tar[512..520], b"{\"r\": 8}");
    assert_eq!(&tar[1024..1024 + 43], b"my-run--1-adapter/adapter_model.safetensors");
    assert_eq!(tar.len(), 512 + 512 + 512 + 1024 + 1024);
}

#[tokio::test]
async fn open_folder_is_refused_for_a_remote_studio() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.host = "0.0.0.0".into();
    cfg.token = Some("t".into());
    let state = start_state(cfg).await.unwrap();
    let job = state
        .store()
        .create_job(
            &finetune_jobs::NewJob {
                name: "x".into(),
                method: "lora".into(),
                model_path: "/m".into(),
                dataset_path: "/d".into(),
                device: "cpu".into(),
                config_json: "{}".into(),
                max_restarts: 0,
                fault: None,
            },
            &dir.path().join("data/jobs"),
        )
        .unwrap();
    let router = app(state);
    let (status, _, body) = call(
        &router,
        "POST",
        &format!("{API}/jobs/{}/open-folder", job.id),
        &[("content-type", "application/json"), ("authorization", "Bearer t")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("another machine"));
}

#[tokio::test]
async fn cors_is_granted_to_the_desktop_webview_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.token = Some("launch-token".into());
    let router = app(start_state(cfg).await.unwrap());
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization,content-type"),
        ]
    };
    let (status, h, _) =
        call(&router, "OPTIONS", &format!("{API}/jobs"), &preflight("tauri://localhost")).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(h["access-control-allow-origin"], "tauri://localhost");
    let (_, h, _) =
        call(&router, "OPTIONS", &format!("{API}/jobs"), &preflight("https://evil.example")).await;
    assert!(h.get("access-control-allow-origin").is_none());
    // With the token the webview reads the API; without it, it is refused.
    let (status, h, _) = call(
        &router,
        "GET",
        &format!("{API}/system"),
        &[("origin", "tauri://localhost"), ("authorization", "Bearer launch-token")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "tauri://localhost");
    let (status, _, _) =
        call(&router, "GET", &format!("{API}/system"), &[("origin", "tauri://localhost")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
