//! The supervisor against real child processes. The workers here are small `sh` scripts that
//! speak the worker protocol (NDJSON events on stdout) so each test can produce exactly the
//! behaviour it checks: a worker that ignores SIGTERM, one that crashes, one that reports an
//! error, one that prints noise. The real `finetune-studio worker` is exercised end to end in
//! `crates/cli/tests/studio.rs`.

#![cfg(unix)]

use finetune_jobs::{Job, JobStatus, NewJob, Store, Supervisor, SupervisorConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn new_job(device: &str, max_restarts: u32) -> NewJob {
    NewJob {
        name: "script".into(),
        method: "lora".into(),
        model_path: "/m".into(),
        dataset_path: "/d".into(),
        device: device.into(),
        config_json: "{}".into(),
        max_restarts,
        fault: None,
    }
}

/// A supervisor whose worker is `sh -c SCRIPT sh <per-job args>`.
async fn supervisor(dir: &std::path::Path, script: &str, max_per_device: usize) -> Supervisor {
    let store = Arc::new(Store::open(&dir.join("s.db")).unwrap());
    let mut cfg = SupervisorConfig::new("/bin/sh", dir.join("jobs"));
    cfg.worker_args = vec!["-c".into(), script.into(), "sh".into()];
    cfg.cancel_grace = Duration::from_millis(500);
    cfg.poll_interval = Duration::from_millis(50);
    cfg.max_concurrent_per_device = max_per_device;
    Supervisor::start(store, cfg).await.unwrap()
}

async fn wait(sup: &Supervisor, id: &str, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
    let start = Instant::now();
    loop {
        let job = sup.store().require_job(id).unwrap();
        if pred(&job) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {job:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn logs(sup: &Supervisor, id: &str) -> Vec<(String, String)> {
    sup.store().logs(id, 0, 1000, None).unwrap().into_iter().map(|l| (l.source, l.message)).collect()
}

const STEPS_FOREVER: &str = r#"echo '{"event":"started","total_steps":1000,"start_step":0,"epochs":1}'
i=0; while true; do i=$((i+1)); echo "{\"event\":\"step\",\"step\":$i,\"total_steps\":1000,\"loss\":1.0}"; sleep 0.02; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("trap '' TERM\n{STEPS_FOREVER}");
    let sup = supervisor(dir.path(), &script, 1).await;
    let id = sup.submit(&new_job("cpu", 0)).unwrap().id;
    wait(&sup, &id, "steps", |j| j.current_step >= 3).await;
    let asked = Instant::now();
    assert_eq!(sup.cancel(&id).unwrap().status, JobStatus::Running, "cancel is asynchronous");
    let job = wait(&sup, &id, "cancelled", |j| j.status == JobStatus::Cancelled).await;
    assert!(asked.elapsed() >= Duration::from_millis(450), "SIGKILL came only after the grace period");
    assert!(job.finished_at.is_some());
    assert!(logs(&sup, &id).iter().any(|(_, m)| m.contains("did not stop within the grace period")));
    assert_eq!(sup.store().attempts(&id).unwrap()[0].outcome.as_deref(), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_restarted_from_its_checkpoint_when_the_policy_allows() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"case "$*" in
*--resume*) echo '{"event":"started","total_steps":4,"start_step":2,"epochs":1}'
  echo '{"event":"step","step":3,"total_steps":4,"loss":0.5}'
  echo '{"event":"step","step":4,"total_steps":4,"loss":0.4}'
  echo '{"event":"finished","step":4,"final_loss":0.4,"best_loss":0.4,"eval_loss":null,"status":"completed"}'
  exit 0;;
esac
echo '{"event":"started","total_steps":4,"start_step":0,"epochs":1}'
echo '{"event":"step","step":1,"total_steps":4,"loss":0.9}'
echo '{"event":"step","step":2,"total_steps":4,"loss":0.7}'
echo 'out of memory, giving up' >&2
kill -SEGV $$"#;
    let sup = supervisor(dir.path(), script, 1).await;
    let id = sup.submit(&new_job("cpu", 1)).unwrap().id;
    let job = wait(&sup, &id, "completed", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Completed, "{job:#?}");
    assert_eq!((job.restarts, job.current_step, job.best_loss), (1, 4, Some(0.4)));
    let attempts = sup.store().attempts(&id).unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[0].outcome.as_deref(), attempts[0].resume), (Some("crashed"), false));
    assert!(attempts[1].resume);
    assert_eq!(
        sup.store().metrics(&id, 0, 10).unwrap().iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let log = logs(&sup, &id);
    assert!(log.contains(&("stderr".into(), "out of memory, giving up".into())), "{log:?}");

    // Without a policy the same crash fails the job, with the signal and stderr in the message.
    let id = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let job = wait(&sup, &id, "failed", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Failed);
    let msg = job.error_message.unwrap();
    assert!(msg.contains("signal 11") && msg.contains("out of memory"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_the_engine_reports_fails_the_job_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo 'loading the model'
echo '{"event":"failed","error":"config `train.lr`: must be in (0, 1], got 5"}'
exit 1"#;
    let sup = supervisor(dir.path(), script, 1).await;
    let id = sup.submit(&new_job("cpu", 3)).unwrap().id;
    let job = wait(&sup, &id, "failed", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error_message.as_deref(), Some("config `train.lr`: must be in (0, 1], got 5"));
    assert_eq!(job.restarts, 0, "a deterministic error is not retried");
    let log = logs(&sup, &id);
    assert!(
        log.contains(&("stdout".into(), "loading the model".into())),
        "non-event lines are kept: {log:?}"
    );
    // A failed job can be resumed by hand.
    assert_eq!(sup.resume(&id).unwrap().status, JobStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queue_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"sleep 1
echo '{"event":"finished","step":0,"final_loss":null,"best_loss":null,"eval_loss":null,"status":"completed"}'"#;
    let sup = supervisor(dir.path(), script, 1).await;
    let a = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let b = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let c = sup.submit(&new_job("cuda:0", 0)).unwrap().id;
    // Judged by the recorded start and finish times, not by catching a state while it lasts
    // (on a loaded machine a poll can miss a one-second run entirely).
    // a and b were submitted in the same millisecond: either may run first.
    let a_job = wait(&sup, &a, "a done", |j| j.status == JobStatus::Completed).await;
    let b_job = wait(&sup, &b, "b done", |j| j.status == JobStatus::Completed).await;
    let c_job = wait(&sup, &c, "c done", |j| j.status == JobStatus::Completed).await;
    let (first, second) =
        if a_job.started_at <= b_job.started_at { (&a_job, &b_job) } else { (&b_job, &a_job) };
    // The second starts only once the first's outcome is stored (the supervisor frees a device
    // after that).
    assert!(second.started_at.unwrap() >= first.finished_at.unwrap(), "one at a time on the cpu");
    assert!(
        c_job.started_at.unwrap() < first.finished_at.unwrap(),
        "c ran on its own device beside the first"
    );
    // A pending job can be paused (it leaves the queue) and cancelled.
    let d = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let e = sup.submit(&new_job("cpu", 0)).unwrap().id;
    assert_eq!(sup.pause(&e).unwrap().status, JobStatus::Paused);
    assert_eq!(sup.cancel(&e).unwrap().status, JobStatus::Cancelled);
    wait(&sup, &d, "d done", |j| j.status == JobStatus::Completed).await;
    assert_eq!(sup.store().require_job(&e).unwrap().status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_worker_executable_fails_the_job_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let mut cfg = SupervisorConfig::new(dir.path().join("no-such-binary"), dir.path().join("jobs"));
    cfg.poll_interval = Duration::from_millis(50);
    let sup = Supervisor::start(store, cfg).await.unwrap();
    let id = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let job = wait(&sup, &id, "failed", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error_message.unwrap().contains("no-such-binary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_follow_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), STEPS_FOREVER, 1).await;
    let mut rx = sup.subscribe();
    let id = sup.submit(&new_job("cpu", 0)).unwrap().id;
    let mut steps = Vec::new();
    while steps.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        if ev.kind == "step" && *ev.job_id == *id {
            // Broadcast after commit: the point is already in SQLite.
            let step = ev.step.unwrap();
            assert!(sup.store().metrics(&id, step - 1, 1).unwrap().first().is_some_and(|p| p.step == step));
            steps.push(step);
        }
    }
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    sup.cancel(&id).unwrap();
    wait(&sup, &id, "cancelled", |j| j.status == JobStatus::Cancelled).await;
}
