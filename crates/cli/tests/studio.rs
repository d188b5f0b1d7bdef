//! The studio end to end: the real `finetune-studio serve` binary, real worker processes
//! training the tiny llama fixture, real SQLite. Each test has its own server and data dir.

mod studio_support;

use finetune_jobs::Store;
use serde_json::{Value, json};
use std::time::Duration;
use studio_support::{Studio, multipart, process_alive, tiny_job};

const LONG: Duration = Duration::from_secs(120);

fn steps(points: &Value) -> Vec<u64> {
    points["points"].as_array().expect("points").iter().map(|p| p["step"].as_u64().expect("step")).collect()
}

#[test]
fn a_job_runs_to_completion_with_every_step_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let mut cfg = tiny_job(30, 10);
    cfg["job"] = json!({"name": "first run"});
    let id = studio.create_job(&cfg);
    assert!(id.starts_with("job-"));
    let job = studio.wait_status(&id, "completed", LONG);

    // Detail.
    assert_eq!(job["name"], "first run");
    assert_eq!(job["progress"], 1.0);
    assert_eq!((job["current_step"].as_u64(), job["total_steps"].as_u64()), (Some(30), Some(30)));
    let (loss, best) = (job["current_loss"].as_f64().unwrap(), job["best_loss"].as_f64().unwrap());
    assert!(loss.is_finite() && best <= loss, "{job:#}");
    for key in ["created_at", "started_at", "finished_at", "updated_at"] {
        assert!(job[key].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{key}: {job:#}");
    }
    assert!(job["error_message"].is_null());
    assert_eq!(job["state"]["status"], "completed");
    assert_eq!(job["state"]["finished_at"], job["finished_at"]);
    assert_eq!(job["config"]["train"]["max_steps"], 30);
    assert_eq!(job["attempts"][0]["outcome"], "completed");
    assert_eq!(job["attempts"][0]["exit_code"], 0);
    let output = std::path::Path::new(job["output_dir"].as_str().unwrap());
    assert!(output.join("adapter_model.safetensors").is_file(), "the adapter was written");

    // Metrics: one point per step, in SQLite and over the API.
    let db = Store::open(&dir.path().join("studio.db")).unwrap();
    assert_eq!(db.metric_count(&id).unwrap(), 30);
    let (status, points) = studio.get(&studio.api(&format!("/jobs/{id}/metrics")));
    assert_eq!(status, 200);
    assert_eq!(steps(&points), (1..=30).collect::<Vec<_>>());
    let p = &points["points"][0];
    for key in ["loss", "lr", "grad_norm", "tokens_per_s", "mem_bytes"] {
        assert!(p[key].is_number(), "{key}: {p}");
    }
    let (_, tail) = studio.get(&studio.api(&format!("/jobs/{id}/metrics?after_step=25")));
    assert_eq!(steps(&tail), vec![26, 27, 28, 29, 30]);

    // Progress, logs.
    let (_, progress) = studio.get(&studio.api(&format!("/jobs/{id}/progress")));
    assert_eq!((progress["status"].as_str(), progress["progress"].as_f64()), (Some("completed"), Some(1.0)));
    assert!(progress["mem_bytes"].as_u64().unwrap() > 0);
    let (_, logs) = studio.get(&studio.api(&format!("/jobs/{id}/logs")));
    let messages: Vec<&str> =
        logs["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(messages.iter().any(|m| m.starts_with("started lora on llama")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("checkpoint at step 20")), "{messages:?}");
    let next = logs["next_after_id"].as_i64().unwrap();
    let (_, none) = studio.get(&studio.api(&format!("/jobs/{id}/logs?after_id={next}")));
    assert_eq!(none["logs"].as_array().unwrap().len(), 0);

    // Listing with filters.
    let (_, done) = studio.get(&studio.api("/jobs?status=completed,failed"));
    assert_eq!((done["total"].as_u64(), done["jobs"][0]["job_id"].as_str()), (Some(1), Some(id.as_str())));
    let (_, running) = studio.get(&studio.api("/jobs?status=running"));
    assert_eq!(running["total"], 0);
    let (_, found) = studio.get(&studio.api("/jobs?q=first"));
    assert_eq!(found["total"], 1);
    let (status, bad) = studio.get(&studio.api("/jobs?status=finished"));
    assert_eq!(status, 422);
    assert_eq!(bad["error"]["fields"][0]["key"], "status");

    // Checkpoints: list, detail, deploy.
    let (_, cks) = studio.get(&studio.api(&format!("/jobs/{id}/checkpoints")));
    let list = cks["checkpoints"].as_array().unwrap();
    assert_eq!(list.iter().map(|c| c["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 20, 30]);
    assert!(list.iter().all(|c| c["exists"] == true && c["size_bytes"].as_u64().unwrap() > 0));
    let ck_id = list[1]["checkpoint_id"].as_str().unwrap().to_string();
    let (status, detail) = studio.get(&studio.api(&format!("/checkpoints/{ck_id}")));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["trainer_state"]["step"], 20);
    assert!(detail["files"].as_array().unwrap().iter().any(|f| f["name"] == "adapter_model.safetensors"));
    let (status, deployed) = studio.post(&studio.api(&format!("/checkpoints/{ck_id}/deploy")), &json!({}));
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["published_adapter"], list[1]["model_path"]);
    let (status, _) = studio.get(&studio.api(&format!("/checkpoints/{id}-step-999")));
    assert_eq!(status, 404);

    // A finished job can be deleted, with its files.
    let (status, _) = studio.send_json("DELETE", &studio.api(&format!("/jobs/{id}")), &json!({}));
    assert_eq!(status, 204);
    assert!(!output.exists());
    let (status, _) = studio.get(&studio.api(&format!("/jobs/{id}")));
    assert_eq!(status, 404);
}

#[test]
fn events_replay_history_then_follow_live() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let id = studio.create_job(&tiny_job(120, 0));
    let mut live = studio.sse(&studio.api(&format!("/jobs/{id}/events?after_step=0")));
    assert_eq!(live.status, 200);
    let mut seen = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    let last = loop {
        let e = live.next_event().expect("the stream ends only after a terminal status");
        kinds.insert(e.event.clone());
        if e.event == "step" {
            let step = e.data["step"].as_u64().unwrap();
            assert_eq!(e.id.as_deref(), Some(step.to_string().as_str()));
            assert_eq!(e.data["total_steps"], 120);
            seen.push(step);
        }
        if e.event == "status" && e.data["status"] == "completed" {
            break e;
        }
    };
    assert_eq!(seen, (1..=120).collect::<Vec<_>>(), "every step exactly once, in order");
    assert_eq!(last.data["progress"], 1.0);
    assert!(kinds.contains("started") && kinds.contains("finished"), "{kinds:?}");
    assert!(live.next_event().is_none(), "the stream ends after completion");

    // A client that reconnects gets the history after its last step from SQLite, then the end.
    let mut replay = studio.sse(&studio.api(&format!("/jobs/{id}/events?after_step=115")));
    let mut again = Vec::new();
    while let Some(e) = replay.next_event() {
        match e.event.as_str() {
            "step" => again.push(e.data["step"].as_u64().unwrap()),
            "status" => assert_eq!(e.data["status"], "completed"),
            other => panic!("unexpected {other} in a replay"),
        }
    }
    assert_eq!(again, vec![116, 117, 118, 119, 120]);
    let (status, _) = studio.get(&studio.api("/jobs/job-000000000000/events"));
    assert_eq!(status, 404);
}

#[test]
fn cancel_stops_a_running_job_and_keeps_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let id = studio.create_job(&tiny_job(100_000, 3));
    let running = studio.wait_job(&id, LONG, |j| j["current_step"].as_u64().unwrap_or(0) >= 4);
    assert_eq!(running["status"], "running");
    let pid = running["attempts"][0]["pid"].as_u64().unwrap();
    let (status, body) = studio.send_json("PUT", &studio.api(&format!("/jobs/{id}/cancel")), &json!({}));
    assert_eq!(status, 202, "{body}");
    let job = studio.wait_status(&id, "cancelled", LONG);
    assert!(job["current_step"].as_u64().unwrap() < 100_000);
    assert!(job["finished_at"].is_string());
    assert_eq!(job["attempts"][0]["outcome"], "cancelled");
    assert!(!process_alive(pid), "the worker is gone");
    let (_, cks) = studio.get(&studio.api(&format!("/jobs/{id}/checkpoints")));
    let list = cks["checkpoints"].as_array().unwrap();
    assert!(!list.is_empty() && list.iter().all(|c| c["exists"] == true), "{cks}");
    // Cancelling again is a conflict, not a crash.
    let (status, body) = studio.post(&studio.api(&format!("/jobs/{id}/cancel")), &json!({}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
}

#[test]
fn pause_then_resume_continues_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let id = studio.create_job(&tiny_job(150, 0));
    studio.wait_job(&id, LONG, |j| j["current_step"].as_u64().unwrap_or(0) >= 5);
    let (status, body) = studio.post(&studio.api(&format!("/jobs/{id}/pause")), &json!({}));
    assert_eq!(status, 202, "{body}");
    let paused = studio.wait_status(&id, "paused", LONG);
    let at = paused["current_step"].as_u64().unwrap();
    assert!((5..150).contains(&at), "{paused:#}");
    assert_eq!(paused["attempts"][0]["outcome"], "paused");
    let (_, cks) = studio.get(&studio.api(&format!("/jobs/{id}/checkpoints")));
    assert_eq!(
        cks["checkpoints"].as_array().unwrap().last().unwrap()["step"].as_u64(),
        Some(at),
        "paused at a checkpoint"
    );

    let (status, body) = studio.post(&studio.api(&format!("/jobs/{id}/resume")), &json!({}));
    assert_eq!(status, 202, "{body}");
    let done = studio.wait_status(&id, "completed", LONG);
    assert_eq!(done["current_step"], 150);
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1]["resume"], true);
    let (_, points) = studio.get(&studio.api(&format!("/jobs/{id}/metrics")));
    assert_eq!(steps(&points), (1..=150).collect::<Vec<_>>(), "one point per step across both attempts");
    let (_, logs) = studio.get(&studio.api(&format!("/jobs/{id}/logs")));
    assert!(
        logs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"].as_str().unwrap().starts_with("resumed from"))
    );
    // Resuming a completed job is refused.
    let (status, _) = studio.post(&studio.api(&format!("/jobs/{id}/resume")), &json!({}));
    assert_eq!(status, 409);
}

#[test]
fn a_bad_dataset_upload_gets_per_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let content = concat!(
        "{\"instruction\": \"Say hi\", \"output\": \"Hi!\"}\n",
        "{\"instruction\": \"broken\", \n",
        "{\"instruction\": \"No answer\"}\n",
        "{\"instruction\": \"Fine\", \"output\": \"ok\"}\n",
    );
    let (ct, body) = multipart("../../../escape.jsonl", content.as_bytes(), Some("bad data"));
    let (status, ds) = studio.raw("POST", &studio.api("/datasets"), &[("Content-Type", &ct)], &body).json();
    assert_eq!(status, 201, "{ds}");
    assert_eq!(ds["name"], "bad data");
    assert_eq!(ds["uploaded"], true);
    let stored = std::path::PathBuf::from(ds["path"].as_str().unwrap());
    assert!(stored.starts_with(dir.path().join("datasets")), "{stored:?} stays in the data dir");
    assert_eq!(stored.file_name().unwrap(), "escape.jsonl");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), content);

    let ds_id = ds["dataset_id"].as_str().unwrap();
    let (status, v) = studio.post(&studio.api(&format!("/datasets/{ds_id}/validate")), &json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 3], "{v:#}");
    assert!(errors[1]["message"].as_str().unwrap().contains("output"), "{v:#}");

    // A non-dataset file name is refused; the list shows the upload.
    let (ct, body) = multipart("notes.txt", b"hello", None);
    let (status, err) = studio.raw("POST", &studio.api("/datasets"), &[("Content-Type", &ct)], &body).json();
    assert_eq!((status, err["error"]["fields"][0]["key"].as_str()), (422, Some("file")));
    let (_, list) = studio.get(&studio.api("/datasets"));
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1);

    // A good dataset registered in place, with token statistics from a registered model.
    let f = studio_support::fixtures();
    let (status, model) = studio.post(&studio.api("/models"), &json!({"path": f.join("models/llama")}));
    assert_eq!(status, 201, "{model}");
    assert_eq!(model["family"], "llama");
    let (status, good) = studio.post(&studio.api("/datasets"), &json!({"path": f.join("data/chat.jsonl")}));
    assert_eq!(status, 201, "{good}");
    let good_id = good["dataset_id"].as_str().unwrap();
    let (status, detail) = studio.get(&studio.api(&format!("/datasets/{good_id}?preview=2")));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["report"]["format"], "chat");
    assert_eq!(detail["preview"].as_array().unwrap().len(), 2);
    let lengths = &detail["token_lengths"];
    assert!(lengths["min"].as_u64().unwrap() <= lengths["p50"].as_u64().unwrap());
    assert!(lengths["p50"].as_u64().unwrap() <= lengths["max"].as_u64().unwrap());
    let (_, ok) = studio
        .post(&studio.api(&format!("/datasets/{good_id}/validate")), &json!({"model": model["model_id"]}));
    assert_eq!(
        (ok["valid"].as_bool(), ok["checked_with_tokenizer"].as_bool()),
        (Some(true), Some(true)),
        "{ok}"
    );
    // Deleting an uploaded dataset removes its file; a registered one stays where it is.
    let (status, _) = studio.send_json("DELETE", &studio.api(&format!("/datasets/{ds_id}")), &json!({}));
    assert_eq!(status, 204);
    assert!(!stored.exists());
}

#[test]
fn foreign_hosts_and_non_json_posts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let jobs = studio.api("/jobs");
    let port = studio.port();
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    let r = studio.raw("GET", &jobs, &[("Host", &format!("evil.example:{port}"))], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("evil.example"));
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        assert_eq!(studio.raw("GET", &jobs, &[("Host", &host)], b"").status, 200, "{host}");
    }
    // State-changing requests must be JSON.
    let body = tiny_job(5, 0).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = studio.raw("POST", &jobs, &[("Content-Type", ct)], body.as_bytes());
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
    }
    let r = studio.raw("POST", &jobs, &[], body.as_bytes());
    assert_eq!(r.status, 415);
    let r = studio.raw(
        "POST",
        &jobs,
        &[("Content-Type", "application/json"), ("Origin", "http://evil.example")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403);
    // Invalid JSON and invalid configs are explained.
    let r = studio.raw("POST", &jobs, &[("Content-Type", "application/json")], b"{\"train\": ");
    assert_eq!(r.status, 400, "{}", r.text());
    let (status, err) = studio
        .post(&jobs, &json!({"train": {"lr": -1, "batch_size": 0}, "model": {"path": "/no/such/model"}}));
    assert_eq!(status, 422);
    let keys: Vec<&str> =
        err["error"]["fields"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["train.lr", "train.batch_size"], "{err}");
    let (status, err) = studio.post(&jobs, &json!({"model": {"path": "/no/such/model"}}));
    assert_eq!(status, 422);
    assert_eq!(err["error"]["fields"][0]["key"], "model.path");
    assert_eq!(studio.get(&jobs).1["total"], 0, "nothing was created");
    // The API describes itself; unknown routes answer JSON.
    let (status, doc) = studio.get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/api/v1/fine-tuning/jobs",
        "/api/v1/fine-tuning/jobs/{id}/events",
        "/api/v1/fine-tuning/models/validate",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let (status, err) = studio.get("/api/v1/nothing");
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not_found")));
    let page = studio.raw("GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Finetune Studio"));
}

#[test]
fn restarting_the_studio_interrupts_running_jobs_and_honours_the_restart_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut studio = Studio::start_with(dir.path(), &["--max-concurrent", "2"]);
    let mut plain_cfg = tiny_job(300, 5);
    plain_cfg["job"] = json!({"max_restarts": 0});
    let plain = studio.create_job(&plain_cfg);
    let mut cfg = tiny_job(300, 5);
    cfg["job"] = json!({"max_restarts": 1});
    let restarting = studio.create_job(&cfg);
    let a = studio.wait_job(&plain, LONG, |j| j["current_step"].as_u64().unwrap_or(0) >= 6);
    studio.wait_job(&restarting, LONG, |j| j["current_step"].as_u64().unwrap_or(0) >= 6);
    let old_worker = a["attempts"][0]["pid"].as_u64().unwrap();
    studio.kill9();

    let studio = Studio::start_with(dir.path(), &["--max-concurrent", "2"]);
    let job = studio.job(&plain);
    assert_eq!(job["status"], "interrupted", "{job:#}");
    assert!(job["error_message"].as_str().unwrap().contains("studio stopped"), "{job:#}");
    assert_eq!(job["attempts"][0]["outcome"], "interrupted");
    assert!(!process_alive(old_worker), "the orphaned worker paused and exited");
    // The job with a restart policy continues by itself from its checkpoint.
    let auto = studio.wait_status(&restarting, "completed", LONG);
    assert_eq!(auto["restarts"], 1);
    assert_eq!(auto["attempts"][1]["resume"], true);
    // The other one continues when asked.
    let (status, _) = studio.post(&studio.api(&format!("/jobs/{plain}/resume")), &json!({}));
    assert_eq!(status, 202);
    let done = studio.wait_status(&plain, "completed", LONG);
    let (_, points) = studio.get(&studio.api(&format!("/jobs/{plain}/metrics")));
    assert_eq!(steps(&points), (1..=300).collect::<Vec<_>>());
    assert_eq!(done["current_step"], 300);
}

#[test]
fn restoring_a_checkpoint_reruns_the_job_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let studio = Studio::start(dir.path());
    let id = studio.create_job(&tiny_job(30, 10));
    studio.wait_status(&id, "completed", LONG);
    let (_, before) = studio.get(&studio.api(&format!("/jobs/{id}/metrics")));
    let (status, body) = studio.post(&studio.api(&format!("/checkpoints/{id}-step-10/restore")), &json!({}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["current_step"], 10);
    let output = std::path::PathBuf::from(body["output_dir"].as_str().unwrap());
    let discarded: Vec<String> = std::fs::read_dir(output.join("checkpoints-discarded"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(discarded.len(), 2, "step-20 and step-30 moved aside: {discarded:?}");
    let done = studio.wait_status(&id, "completed", LONG);
    assert_eq!(done["attempts"].as_array().unwrap().len(), 2);
    let (_, after) = studio.get(&studio.api(&format!("/jobs/{id}/metrics")));
    assert_eq!(steps(&after), (1..=30).collect::<Vec<_>>());
    // Resuming from a checkpoint is exact: the rerun steps have the same losses.
    for (a, b) in before["points"].as_array().unwrap().iter().zip(after["points"].as_array().unwrap()) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
    }
    // A running or pending job cannot be restored; an unknown checkpoint is 404.
    let (status, _) = studio.post(&studio.api(&format!("/checkpoints/{id}-step-7/restore")), &json!({}));
    assert_eq!(status, 404);
}
