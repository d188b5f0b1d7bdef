//! Reliability soak: 50 jobs on the real studio with randomly injected faults (panics, killed
//! workers, out-of-memory errors, NaN losses, failed checkpoint writes). At least 95 % must
//! finish without user action, and every finished job's metric history must be complete.

mod studio_support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use studio_support::{Studio, tiny_job};

const JOBS: usize = 50;
const STEPS: u64 = 12;

fn env_studio(dir: &std::path::Path) -> Studio {
    // SAFETY: set before the studio process is spawned; tests in this binary run one at a time
    // with respect to these variables (both tests set the same values).
    unsafe {
        std::env::set_var("FINETUNE_ALLOW_FAULTS", "1");
        std::env::set_var("FINETUNE_RESTART_BACKOFF_MS", "50");
    }
    Studio::start_with(dir, &["--max-concurrent", "2"])
}

fn metric_steps(studio: &Studio, id: &str) -> Vec<u64> {
    let (_, points) = studio.get(&studio.api(&format!("/jobs/{id}/metrics?limit=1000")));
    points["points"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["step"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn fifty_jobs_with_random_faults_finish_by_themselves_with_complete_histories() {
    let dir = tempfile::tempdir().unwrap();
    let studio = env_studio(dir.path());
    let kinds = ["", "", "", "", "panic", "exit", "oom", "nan", "io", "exit"];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut planned = Vec::new();
    for i in 0..JOBS {
        let kind = kinds[(next() % kinds.len() as u64) as usize];
        let step = 2 + next() % (STEPS - 2);
        let fault = (!kind.is_empty()).then(|| format!("{kind}@{step}"));
        let mut cfg = tiny_job(STEPS, 3);
        cfg["job"] = json!({"name": format!("soak {i}"), "fault": fault});
        planned.push((studio.create_job(&cfg), fault));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    while finished.len() < JOBS {
        assert!(Instant::now() < deadline, "jobs still running: {}", JOBS - finished.len());
        for (id, _) in &planned {
            if finished.contains_key(id) {
                continue;
            }
            let job = studio.job(id);
            if matches!(
                job["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "interrupted" | "paused")
            ) {
                finished.insert(id.clone(), job);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let completed: Vec<&String> =
        finished.iter().filter(|(_, j)| j["status"] == "completed").map(|(id, _)| id).collect();
    let rate = completed.len() as f64 / JOBS as f64;
    let faults: Vec<String> = planned.iter().filter_map(|(_, f)| f.clone()).collect();
    println!(
        "soak: {} of {JOBS} jobs completed without user action ({:.0} %); faults injected: {}",
        completed.len(),
        100.0 * rate,
        faults.len()
    );
    for (id, job) in finished.iter().filter(|(_, j)| j["status"] != "completed") {
        println!("soak: {id} ended {}: {}", job["status"], job["error_message"]);
    }
    assert!(rate >= 0.95, "only {:.0} % of jobs completed", 100.0 * rate);
    for id in completed {
        assert_eq!(metric_steps(&studio, id), (1..=STEPS).collect::<Vec<_>>(), "{id} lost metric points");
    }
}

#[test]
fn out_of_memory_restarts_with_half_the_micro_batch_and_the_same_effective_batch() {
    let dir = tempfile::tempdir().unwrap();
    let studio = env_studio(dir.path());
    let mut cfg = tiny_job(STEPS, 3);
    cfg["train"]["batch_size"] = json!(4);
    cfg["job"] = json!({"fault": "oom@5"});
    let id = studio.create_job(&cfg);
    let job = studio.wait_status(&id, "completed", Duration::from_secs(120));
    assert_eq!(job["restarts"], 1);
    assert_eq!(
        (job["config"]["train"]["batch_size"].as_u64(), job["config"]["train"]["grad_accum"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(metric_steps(&studio, &id), (1..=STEPS).collect::<Vec<_>>());
    let (_, logs) = studio.get(&studio.api(&format!("/jobs/{id}/logs?limit=1000")));
    let text = logs.to_string();
    assert!(text.contains("micro-batch 2 × 2 accumulation (was 4 × 1)"), "{text}");
}
