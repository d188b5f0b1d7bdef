//! The training monitor end to end on the real studio: a job whose loss turns NaN (an injected
//! fault) raises alerts that the API lists per job and across jobs; the worker's telemetry
//! samples are stored and served; its TensorBoard file holds every step; the report and the
//! metric exports come back in every format, over HTTP and from `finetune-studio report`.

mod studio_support;

use finetune_monitor::tensorboard::{decode_event, read_records};
use serde_json::json;
use std::time::Duration;
use studio_support::{Studio, tiny_job};

const STEPS: u64 = 16;

#[test]
fn a_job_is_monitored_alerted_logged_for_tensorboard_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before the studio process is spawned; the only test in this binary.
    unsafe {
        std::env::set_var("FINETUNE_ALLOW_FAULTS", "1");
        std::env::set_var("FINETUNE_TELEMETRY_MS", "100");
    }
    let studio = Studio::start(dir.path());
    let mut cfg = tiny_job(STEPS, 5);
    cfg["job"] = json!({"name": "monitored run", "fault": "nan@7"});
    let id = studio.create_job(&cfg);
    studio.wait_status(&id, "completed", Duration::from_secs(120));

    // Alerts: the NaN step was rolled back, and the studio says so, per job and across jobs.
    let (status, alerts) = studio.get(&studio.api(&format!("/jobs/{id}/alerts")));
    assert_eq!(status, 200);
    let kinds: Vec<&str> =
        alerts["alerts"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"nan_loss"), "{alerts:#}");
    let nan = alerts["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "nan_loss").unwrap();
    assert_eq!((nan["step"].as_u64(), nan["source"].as_str()), (Some(7), Some("worker")));
    assert!(nan["suggestion"].as_str().unwrap().contains("train.lr"), "{nan}");
    let (_, recent) = studio.get(&studio.api("/alerts?limit=5"));
    assert_eq!(recent["alerts"][0]["job_name"], "monitored run");
    assert_eq!(studio.get(&studio.api("/jobs/job-nope/alerts")).0, 404);

    // Telemetry: samples of the worker process, oldest first; no NVIDIA driver here is a status.
    let (_, t) = studio.get(&studio.api(&format!("/jobs/{id}/telemetry")));
    let samples = t["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{t:#}");
    assert!(samples.iter().all(|s| s["process_rss_bytes"].as_u64().unwrap() > 0));
    assert!(samples.iter().all(|s| s["system_memory_total_bytes"].as_u64().unwrap() > 0));
    assert!(samples[0]["gpu_status"].as_str().is_some_and(|s| !s.is_empty()));
    let ts: Vec<i64> = samples.iter().map(|s| s["ts_ms"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]));
    let (_, later) = studio.get(&studio.api(&format!("/jobs/{id}/telemetry?after_ts_ms={}", ts[0])));
    assert_eq!(later["samples"].as_array().unwrap().len(), samples.len() - 1);
    let (_, system) = studio.get(&studio.api("/system"));
    assert!(system["telemetry"]["system_memory_total_bytes"].as_u64().unwrap() > 0, "{system:#}");

    // TensorBoard: <data dir>/runs/<job id>, every step's loss, checksums valid.
    let runs = dir.path().join("runs").join(&id);
    let mut loss_steps = Vec::new();
    for f in std::fs::read_dir(&runs).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        for r in read_records(&bytes).expect("valid TFRecords") {
            let e = decode_event(r).expect("an Event");
            if e.scalars.iter().any(|(tag, _)| tag == "train/loss") {
                loss_steps.push(e.step);
            }
        }
    }
    loss_steps.sort_unstable();
    loss_steps.dedup();
    assert_eq!(loss_steps, (1..=STEPS).collect::<Vec<_>>());

    // Reports over HTTP.
    let png = studio.raw("GET", &studio.api(&format!("/jobs/{id}/report?format=png")), &[], b"");
    assert_eq!(png.header("content-type"), Some("image/png"));
    let html = studio.raw("GET", &studio.api(&format!("/jobs/{id}/report")), &[], b"");
    assert!(html.text().contains("monitored run") && html.text().contains("nan_loss"));
    let (status, bad) = studio.get(&studio.api(&format!("/jobs/{id}/report?format=gif")));
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"].as_str().unwrap().contains("gif"));
    let csv = studio.raw("GET", &studio.api(&format!("/jobs/{id}/metrics/export")), &[], b"");
    assert_eq!(csv.text().lines().count() as u64, STEPS + 1);
    assert!(csv.header("content-disposition").is_some_and(|d| d.contains("monitored-run-metrics.csv")));

    // And from the command line.
    let out = dir.path().join("report");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_finetune-studio"))
        .args(["report", "monitored run", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for f in ["report.html", "report.md", "report.png", "report.svg", "metrics.csv", "metrics.mlflow.json"] {
        assert!(std::fs::metadata(out.join(f)).is_ok_and(|m| m.len() > 100), "{f}");
    }
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_finetune-studio"))
        .args(["report", "no such job", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job with the id or name \"no such job\""));
}
