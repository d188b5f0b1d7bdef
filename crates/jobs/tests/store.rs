//! The store against a real SQLite file: migrations (including upgrading a committed version-1
//! database), jobs and their status machine, filters and paging, batched event ingestion,
//! history paging and the catalog.

use finetune_jobs::ingest::write_batch;
use finetune_jobs::{IngestOp, JobFilter, JobStatus, NewJob, Store, Transition, WorkerEvent};
use std::path::Path;
use std::sync::Arc;

fn new_job(name: &str) -> NewJob {
    NewJob {
        name: name.into(),
        method: "lora".into(),
        model_path: "/models/llama".into(),
        dataset_path: "/data/alpaca.jsonl".into(),
        device: "cpu".into(),
        config_json: "{}".into(),
        max_restarts: 0,
        fault: None,
    }
}

fn step(job: &str, step: u64, loss: f64) -> IngestOp {
    let line = format!(
        r#"{{"event":"step","step":{step},"total_steps":100,"epoch":0.1,"loss":{loss},"lr":0.001,"grad_norm":0.5,"tokens":32,"tokens_per_s":900.0,"elapsed_s":1.0,"eta_s":9.0,"mem":{{"process_rss_bytes":1000}}}}"#
    );
    IngestOp::Worker { job_id: Arc::from(job), event: WorkerEvent::parse_line(&line).expect("a step event") }
}

#[test]
fn opens_a_version_1_database_and_upgrades_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.sqlite");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("studio.db");
    std::fs::copy(&fixture, &db).unwrap();
    let store = Store::open(&db).unwrap();
    assert_eq!(store.schema_version().unwrap(), Store::LATEST_SCHEMA);
    let (jobs, total) = store.list_jobs(&JobFilter { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(total, 1);
    let job = &jobs[0];
    assert_eq!(job.id, "job-v1fixture0001");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.max_restarts, job.restarts, job.published_adapter.as_deref()), (0, 0, None));
    assert_eq!(store.metrics(&job.id, 0, 100).unwrap().len(), 3);
    // The upgraded database takes new writes in the new columns.
    let j = store.set_published_adapter(&job.id, Some("/adapters/a")).unwrap();
    assert_eq!(j.published_adapter.as_deref(), Some("/adapters/a"));
    // Opening again is a no-op.
    drop(store);
    assert_eq!(Store::open(&db).unwrap().schema_version().unwrap(), Store::LATEST_SCHEMA);
}

#[test]
fn refuses_a_database_from_a_newer_studio() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("studio.db");
    drop(Store::open(&db).unwrap());
    finetune_jobs::store::testing::set_user_version(&db, Store::LATEST_SCHEMA + 1).unwrap();
    let err = Store::open(&db).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("newer than this studio"), "{err}");
}

#[test]
fn jobs_move_through_their_states_and_list_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let jobs_dir = dir.path().join("jobs");
    let a = store.create_job(&new_job("alpha run"), &jobs_dir).unwrap();
    let b = store.create_job(&new_job("beta run"), &jobs_dir).unwrap();
    let c = store.create_job(&new_job("gamma"), &jobs_dir).unwrap();
    assert_eq!(a.status, JobStatus::Pending);
    assert!(a.output_dir.ends_with(&format!("{}/output", a.id)));

    let r = store.transition(&a.id, &Transition::Running { attempt: 1, pid: 4242, resume: false }).unwrap();
    assert_eq!((r.status, r.attempt, r.pid), (JobStatus::Running, Some(1), Some(4242)));
    assert!(r.started_at.is_some());
    let done = store.transition(&a.id, &Transition::Completed).unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert!(done.finished_at.is_some());
    // Completed cannot run again.
    let err =
        store.transition(&a.id, &Transition::Running { attempt: 2, pid: 1, resume: false }).unwrap_err();
    assert!(err.to_string().contains("completed"), "{err}");
    let f = store.transition(&b.id, &Transition::Failed { error: "boom".into() }).unwrap();
    assert_eq!(f.error_message.as_deref(), Some("boom"));

    let page = |filter: JobFilter| store.list_jobs(&filter).unwrap();
    let (all, total) = page(JobFilter { limit: 2, ..Default::default() });
    assert_eq!((all.len(), total), (2, 3));
    let (rest, _) = page(JobFilter { limit: 2, offset: 2, ..Default::default() });
    assert_eq!(rest.len(), 1);
    let mut seen: Vec<String> = all.iter().chain(&rest).map(|j| j.id.clone()).collect();
    seen.sort();
    let mut want = vec![a.id.clone(), b.id.clone(), c.id.clone()];
    want.sort();
    assert_eq!(seen, want, "paging covers every job once");
    let (failed, n) = page(JobFilter {
        statuses: vec![JobStatus::Failed, JobStatus::Completed],
        limit: 10,
        ..Default::default()
    });
    assert_eq!(n, 2);
    assert!(failed.iter().all(|j| j.id != c.id));
    let (found, _) = page(JobFilter { search: Some("gam".into()), limit: 10, ..Default::default() });
    assert_eq!(found.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), vec![c.id.as_str()]);
    let (none, _) = page(JobFilter { search: Some("%".into()), limit: 10, ..Default::default() });
    assert!(none.is_empty(), "LIKE wildcards in the search are literal");

    assert!(store.delete_job(&b.id).unwrap());
    assert!(store.job(&b.id).unwrap().is_none());
    assert!(!store.delete_job(&b.id).unwrap());
}

#[test]
fn a_batch_of_events_lands_in_one_transaction_with_job_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let job = store.create_job(&new_job("m"), &dir.path().join("jobs")).unwrap();
    store.transition(&job.id, &Transition::Running { attempt: 1, pid: 1, resume: false }).unwrap();
    let (live, mut rx) = tokio::sync::broadcast::channel(128);
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("a.bin"), [0u8; 100]).unwrap();
    let started = WorkerEvent::parse_line(
        r#"{"event":"started","total_steps":100,"start_step":0,"epochs":1.0,"method":"lora","family":"llama"}"#,
    )
    .unwrap();
    let mut ops = vec![IngestOp::Worker { job_id: Arc::from(job.id.as_str()), event: started }];
    ops.extend((1..=50).map(|s| step(&job.id, s, 3.0 - s as f64 * 0.01)));
    ops.push(IngestOp::Worker {
        job_id: Arc::from(job.id.as_str()),
        event: WorkerEvent::parse_line(&format!(
            r#"{{"event":"checkpoint","step":50,"path":"{}"}}"#,
            ckpt.display()
        ))
        .unwrap(),
    });
    ops.push(IngestOp::Worker {
        job_id: Arc::from(job.id.as_str()),
        event: WorkerEvent::parse_line(
            r#"{"event":"eval","step":50,"eval_loss":2.5,"perplexity":12.2,"tokens":10}"#,
        )
        .unwrap(),
    });
    write_batch(&store, &ops, &live);

    let j = store.require_job(&job.id).unwrap();
    assert_eq!((j.current_step, j.total_steps), (50, 100));
    assert!((j.progress() - 0.5).abs() < 1e-12);
    assert_eq!(j.best_loss, Some(2.5));
    assert_eq!(j.eval_loss, Some(2.5));
    assert_eq!(j.tokens, 50 * 32);
    let points = store.metrics(&job.id, 0, 1000).unwrap();
    assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
    assert_eq!(points[49].eval_loss, Some(2.5));
    assert_eq!(points[0].mem_bytes, Some(1000));
    assert_eq!(store.metrics(&job.id, 45, 1000).unwrap().len(), 5);
    assert_eq!(store.metrics(&job.id, 0, 10).unwrap().len(), 10);
    let cks = store.checkpoints(&job.id).unwrap();
    assert_eq!(cks.len(), 1);
    assert_eq!((cks[0].step, cks[0].size_bytes, cks[0].loss), (50, Some(100), Some(3.0 - 0.5)));
    // Broadcast after commit, in order.
    let first = rx.try_recv().unwrap();
    assert_eq!(first.kind, "started");
    let second = rx.try_recv().unwrap();
    assert_eq!((second.kind, second.step), ("step", Some(1)));

    // A resumed attempt that starts at step 40 redoes 41..: what the old attempt wrote after 40
    // goes away, so the history keeps one point per step.
    let resumed =
        WorkerEvent::parse_line(r#"{"event":"started","total_steps":100,"start_step":40,"epochs":1.0}"#)
            .unwrap();
    write_batch(&store, &[IngestOp::Worker { job_id: Arc::from(job.id.as_str()), event: resumed }], &live);
    assert_eq!(store.metrics(&job.id, 0, 1000).unwrap().len(), 40);
    assert_eq!(store.require_job(&job.id).unwrap().current_step, 40);

    // Logs page by id.
    let logs = store.logs(&job.id, 0, 100, None).unwrap();
    assert!(logs.iter().any(|l| l.message.contains("checkpoint at step 50")), "{logs:?}");
    let after = store.logs(&job.id, logs[0].id, 100, None).unwrap();
    assert_eq!(after.len(), logs.len() - 1);
}

#[test]
fn an_event_for_a_deleted_job_does_not_sink_the_batch() {
    let store = Store::open_in_memory().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = store.create_job(&new_job("x"), dir.path()).unwrap();
    let (live, _rx) = tokio::sync::broadcast::channel(16);
    write_batch(&store, &[step("job-gone", 1, 1.0), step(&job.id, 1, 1.0), step(&job.id, 2, 0.9)], &live);
    assert_eq!(store.metric_count(&job.id).unwrap(), 2);
}

#[test]
fn rewinding_forgets_history_after_a_checkpoint() {
    let store = Store::open_in_memory().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = store.create_job(&new_job("x"), dir.path()).unwrap();
    let (live, _rx) = tokio::sync::broadcast::channel(16);
    write_batch(&store, &(1..=20).map(|s| step(&job.id, s, 1.0 / s as f64)).collect::<Vec<_>>(), &live);
    store.rewind_to(&job.id, 10).unwrap();
    assert_eq!(store.metric_count(&job.id).unwrap(), 10);
    let j = store.require_job(&job.id).unwrap();
    assert_eq!((j.current_step, j.current_loss), (10, Some(0.1)));
}

#[test]
fn datasets_and_models_are_catalogued() {
    let store = Store::open_in_memory().unwrap();
    let d = store.add_dataset(None, "alpaca", "/d/alpaca.jsonl", 123, true).unwrap();
    assert_eq!(store.dataset(&d.id).unwrap(), Some(d.clone()));
    assert_eq!(store.datasets().unwrap().len(), 1);
    let m = store.add_model("llama", "/m/llama", Some("llama")).unwrap();
    let again = store.add_model("llama renamed", "/m/llama", Some("llama")).unwrap();
    assert_eq!(m.id, again.id, "registering a path twice updates it");
    assert_eq!(store.models().unwrap().len(), 1);
    assert!(store.delete_dataset(&d.id).unwrap());
    assert!(store.dataset(&d.id).unwrap().is_none());
}

/// Writes `tests/fixtures/v1.sqlite`: a version-1 database with one completed job and three
/// metric points. Run once when the fixture must be rebuilt:
/// `cargo test -p finetune-jobs --test store -- --ignored make_v1_fixture`.
#[test]
#[ignore]
fn make_v1_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.sqlite");
    let _ = std::fs::remove_file(&path);
    let store = Store::open_at_version(&path, 1).unwrap();
    finetune_jobs::store::testing::execute(
        &store,
        "INSERT INTO jobs (id, name, status, method, model_path, dataset_path, device, config_json, output_dir, \
         created_at, updated_at, started_at, finished_at, current_step, total_steps, current_loss, best_loss) VALUES \
         ('job-v1fixture0001', 'v1 job', 'completed', 'lora', '/m/llama', '/d/a.jsonl', 'cpu', '{}', '/o', \
          1700000000000, 1700000005000, 1700000001000, 1700000005000, 3, 3, 1.5, 1.5);
         INSERT INTO metrics (job_id, step, loss) VALUES ('job-v1fixture0001', 1, 2.0), ('job-v1fixture0001', 2, 1.7), \
         ('job-v1fixture0001', 3, 1.5);
         PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;",
    )
    .unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
}

#[test]
fn alerts_and_telemetry_are_kept_per_job_and_listed_across_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let a = store.create_job(&new_job("first"), &dir.path().join("jobs")).unwrap();
    let b = store.create_job(&new_job("second"), &dir.path().join("jobs")).unwrap();
    let (live, mut rx) = tokio::sync::broadcast::channel(64);
    let ev = |job: &str, line: &str| IngestOp::Worker {
        job_id: Arc::from(job),
        event: WorkerEvent::parse_line(line).expect("an event"),
    };
    let sample = |ts: i64, step: u64| {
        format!(
            r#"{{"event":"telemetry","ts_ms":{ts},"step":{step},"process_rss_bytes":123,"system_memory_used_bytes":5,"system_memory_total_bytes":10,"gpu_status":"unavailable: no driver","gpus":[]}}"#
        )
    };
    write_batch(
        &store,
        &[
            ev(&a.id, &sample(1_000, 0)),
            ev(
                &a.id,
                r#"{"event":"alert","step":7,"kind":"loss_spike","message":"spiked","suggestion":"lower lr"}"#,
            ),
            ev(&a.id, &sample(3_000, 7)),
            ev(&b.id, r#"{"event":"alert","step":2,"kind":"plateau","message":"flat","suggestion":"stop"}"#),
            // The same sample again (crash recovery re-reads the events file): kept once.
            ev(&a.id, &sample(3_000, 7)),
        ],
        &live,
    );
    let alerts = store.alerts(&a.id).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].kind.as_str(), alerts[0].step, alerts[0].source.as_str()),
        ("loss_spike", 7, "worker")
    );
    assert_eq!(alerts[0].job_name.as_deref(), Some("first"));
    let recent = store.recent_alerts(10).unwrap();
    assert_eq!(recent.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), ["plateau", "loss_spike"]);
    assert_eq!(store.recent_alerts(1).unwrap().len(), 1);

    let t = store.telemetry(&a.id, 0, 100).unwrap();
    assert_eq!(t.iter().map(|r| (r.ts, r.step)).collect::<Vec<_>>(), [(1_000, 0), (3_000, 7)]);
    assert_eq!(t[0].sample["process_rss_bytes"], 123);
    assert!(t[0].sample.get("event").is_none(), "the event tag is not part of the sample");
    assert_eq!(store.telemetry(&a.id, 1_000, 100).unwrap().len(), 1);
    assert!(store.telemetry(&b.id, 0, 100).unwrap().is_empty());
    // Live listeners get both kinds after the commit.
    let kinds: Vec<&str> = std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.kind).collect();
    assert_eq!(kinds, ["telemetry", "alert", "telemetry", "alert", "telemetry"]);
    // Deleting a job takes its alerts and samples with it.
    assert!(store.delete_job(&a.id).unwrap());
    assert!(store.telemetry(&a.id, 0, 100).unwrap().is_empty());
    assert_eq!(store.recent_alerts(10).unwrap().len(), 1);
}
