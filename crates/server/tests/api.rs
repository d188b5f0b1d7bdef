//! The API in process (no socket): the guard's token rule, the upload limit, config templates
//! and validation, model validation with memory estimates, job creation from catalog ids, and
//! serving a built UI. Jobs that would need a real worker are covered by the CLI's studio tests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use finetune_server::{ServerConfig, app, start_state};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tower::ServiceExt;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn config(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir.join("data"), "/bin/false");
    cfg.hf_cache = None;
    cfg
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri).header("host", "127.0.0.1:7860");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, bytes.to_vec())
}

async fn json_call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match &body {
        Some(b) => (&[("content-type", "application/json")], b.to_string().into_bytes()),
        None => (&[], Vec::new()),
    };
    let (status, out) = call(router, method, uri, headers, bytes).await;
    (status, if out.is_empty() { Value::Null } else { serde_json::from_slice(&out).unwrap_or(Value::Null) })
}

const API: &str = "/api/v1/fine-tuning";

#[tokio::test]
async fn a_token_guards_the_api_but_not_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.token = Some("s3cret-token".into());
    let router = app(start_state(cfg).await.unwrap());
    let jobs = format!("{API}/jobs");
    let (status, _) = call(&router, "GET", &jobs, &[], vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&router, "GET", &jobs, &[("authorization", "Bearer wrong")], vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&router, "GET", &jobs, &[("authorization", "Bearer s3cret-token")], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, "GET", &format!("{jobs}?access_token=s3cret-token"), &[], vec![]).await;
    assert_eq!(status, StatusCode::OK, "EventSource cannot send headers");
    let (status, _) = call(&router, "GET", "/", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_upload_bytes = 1000;
    let router = app(start_state(cfg).await.unwrap());
    let boundary = "XyZ";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'a', 5000));
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (status, out) =
        call(&router, "POST", &format!("{API}/datasets"), &[("content-type", &ct)], body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&out));
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("data/datasets")).map(|d| d.collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // Multipart is accepted only on the upload route.
    let (status, _) =
        call(&router, "POST", &format!("{API}/jobs"), &[("content-type", &ct)], b"x".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn templates_validation_and_user_presets() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let (status, t) = json_call(&router, "GET", &format!("{API}/configs/templates"), None).await;
    assert_eq!(status, StatusCode::OK);
    let templates = t["templates"].as_array().unwrap();
    assert_eq!(templates.len(), finetune_server::presets::BUILTIN.len());
    assert!(
        templates
            .iter()
            .all(|p| p["source"] == "builtin" && p["hardware"].is_string() && p["description"].is_string())
    );
    let quick = templates.iter().find(|p| p["id"] == "lora-quick-cpu").unwrap();
    assert_eq!(quick["config"]["model"]["device"], "cpu");

    // A template is a valid config that only lacks a model and a dataset.
    let (_, v) =
        json_call(&router, "POST", &format!("{API}/configs/validate"), Some(quick["config"].clone())).await;
    assert_eq!(v["valid"], true, "{v}");
    let warned: Vec<&str> =
        v["warnings"].as_array().unwrap().iter().map(|w| w["key"].as_str().unwrap()).collect();
    assert_eq!(warned, vec!["model.path", "data.path"]);
    let bad =
        json!({"train": {"lr": 0, "scheduler": "exp"}, "data": {"format": "csv"}, "job": {"name": "x"}});
    let (status, v) = json_call(&router, "POST", &format!("{API}/configs/validate"), Some(bad)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["valid"], false);
    let keys: Vec<&str> =
        v["errors"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["data.format", "train.lr", "train.scheduler"]);
    let (_, v) =
        json_call(&router, "POST", &format!("{API}/configs/validate"), Some(json!({"train": {"lrr": 1}})))
            .await;
    assert_eq!(v["errors"][0]["key"], "train.lrr");

    // User presets.
    let save = json!({"name": "My QLoRA", "description": "mine", "hardware": "my 4090", "config": {"method": {"kind": "qlora"}}});
    let (status, saved) = json_call(&router, "POST", &format!("{API}/configs/templates"), Some(save)).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    assert_eq!((saved["id"].as_str(), saved["source"].as_str()), (Some("my-qlora"), Some("user")));
    assert!(dir.path().join("data/presets/my-qlora.toml").is_file());
    let (_, t) = json_call(&router, "GET", &format!("{API}/configs/templates"), None).await;
    assert_eq!(t["templates"].as_array().unwrap().len(), finetune_server::presets::BUILTIN.len() + 1);
    let (status, err) = json_call(
        &router,
        "POST",
        &format!("{API}/configs/templates"),
        Some(json!({"name": "x", "config": {"lora": {"r": 0}}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["fields"][0]["key"], "config.lora.r");
    let (status, _) =
        json_call(&router, "DELETE", &format!("{API}/configs/templates/lora-quality"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = json_call(&router, "DELETE", &format!("{API}/configs/templates/my-qlora"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = json_call(&router, "DELETE", &format!("{API}/configs/templates/my-qlora"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn models_are_validated_with_a_memory_estimate_per_method() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let llama = fixtures().join("models/llama");
    let body = json!({"path": llama, "batch_size": 2, "seq_len": 64, "available_memory_gb": 0.001});
    let (status, v) = json_call(&router, "POST", &format!("{API}/models/validate"), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["family"], "llama");
    assert_eq!(v["architectures"][0], "LlamaForCausalLM");
    assert_eq!(v["dims"]["layers"], 2);
    assert_eq!(v["parameters"], 123_200);
    assert_eq!((v["has_tokenizer"].as_bool(), v["has_chat_template"].as_bool()), (Some(true), Some(true)));
    let m = &v["memory"];
    let total = |k: &str| m[k]["total"].as_u64().unwrap();
    assert!(total("qlora") < total("lora") && total("lora") < total("full"), "{m:#}");
    assert_eq!(m["targets"], json!(["q_proj", "v_proj"]));
    assert!(["fits", "tight", "wont_fit"].contains(&m["full"]["fit"].as_str().unwrap()));
    let (status, err) = json_call(
        &router,
        "POST",
        &format!("{API}/models/validate"),
        Some(json!({"path": fixtures().join("data")})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["fields"][0]["key"], "path");
    assert!(err["error"]["message"].as_str().unwrap().contains("config.json"), "{err}");
    let (status, _) =
        json_call(&router, "POST", &format!("{API}/models/validate"), Some(json!({"dtype": "f8"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Registered models are listed with their family and size.
    let (status, reg) =
        json_call(&router, "POST", &format!("{API}/models"), Some(json!({"path": llama, "name": "tiny"})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let (_, list) = json_call(&router, "GET", &format!("{API}/models"), None).await;
    assert_eq!(list["models"][0]["name"], "tiny");
    assert_eq!(list["models"][0]["parameters"], 123_200);
    let (status, _) =
        json_call(&router, "POST", &format!("{API}/models"), Some(json!({"path": "/nope"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn jobs_can_name_their_model_and_dataset_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let (_, model) = json_call(
        &router,
        "POST",
        &format!("{API}/models"),
        Some(json!({"path": fixtures().join("models/qwen2")})),
    )
    .await;
    let (_, ds) = json_call(
        &router,
        "POST",
        &format!("{API}/datasets"),
        Some(json!({"path": fixtures().join("data/text.jsonl")})),
    )
    .await;
    let body = json!({"job": {"name": "by id", "model_id": model["model_id"], "dataset_id": ds["dataset_id"]}, "train": {"max_steps": 2}});
    let (status, created) = json_call(&router, "POST", &format!("{API}/jobs"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["job_id"].as_str().unwrap();
    let (_, job) = json_call(&router, "GET", &format!("{API}/jobs/{id}"), None).await;
    assert_eq!(job["name"], "by id");
    assert!(job["model_path"].as_str().unwrap().ends_with("models/qwen2"));
    assert!(job["dataset_path"].as_str().unwrap().ends_with("data/text.jsonl"));
    assert_eq!(job["config"]["train"]["max_steps"], 2);
    let (status, err) = json_call(
        &router,
        "POST",
        &format!("{API}/jobs"),
        Some(json!({"job": {"dataset_id": "ds-000000000000"}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["fields"][0]["key"], "job.dataset_id");
    let (status, err) =
        json_call(&router, "POST", &format!("{API}/jobs"), Some(json!({"job": {"colour": 1}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["fields"][0]["key"], "job");
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint_of_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(start_state(config(dir.path())).await.unwrap());
    let (status, doc) = json_call(&router, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let story = [
        ("post", "/jobs"),
        ("get", "/jobs"),
        ("get", "/jobs/{id}"),
        ("put", "/jobs/{id}/cancel"),
        ("delete", "/jobs/{id}"),
        ("get", "/models"),
        ("post", "/models/validate"),
        ("get", "/configs/templates"),
        ("post", "/configs/validate"),
        ("get", "/jobs/{id}/logs"),
        ("get", "/jobs/{id}/metrics"),
        ("get", "/jobs/{id}/progress"),
        ("post", "/jobs/{id}/pause"),
        ("post", "/jobs/{id}/resume"),
        ("get", "/jobs/{id}/checkpoints"),
        ("get", "/checkpoints/{checkpoint_id}"),
        ("post", "/checkpoints/{checkpoint_id}/restore"),
        ("post", "/checkpoints/{checkpoint_id}/deploy"),
        ("post", "/datasets"),
        ("get", "/datasets"),
        ("get", "/datasets/{id}"),
        ("post", "/datasets/{id}/validate"),
        ("get", "/jobs/{id}/events"),
    ];
    for (method, path) in story {
        let full = format!("{API}{path}");
        assert!(doc["paths"][&full][method].is_object(), "{method} {full} is not in the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["JobView"]["properties"]["progress"].is_object());
}

#[tokio::test]
async fn a_built_ui_is_served_with_a_client_side_routing_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let ui = dir.path().join("dist");
    std::fs::create_dir_all(&ui).unwrap();
    std::fs::write(ui.join("index.html"), "<html>studio ui</html>").unwrap();
    std::fs::write(ui.join("app.js"), "console.log(1)").unwrap();
    let mut cfg = config(dir.path());
    cfg.ui_dir = Some(ui);
    let router = app(start_state(cfg).await.unwrap());
    let (status, body) = call(&router, "GET", "/app.js", &[], vec![]).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, b"console.log(1)".as_slice()));
    let (status, body) = call(&router, "GET", "/jobs/123", &[], vec![]).await;
    assert_eq!((status, String::from_utf8_lossy(&body).contains("studio ui")), (StatusCode::OK, true));
    let (status, _) = call(&router, "GET", &format!("{API}/nothing-here"), &[], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "API paths never fall back to the UI");
}
