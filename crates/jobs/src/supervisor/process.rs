//! One attempt of a job: start `finetune-studio worker --config <job>/config.json --output
//! <job>/output --stop-on-stdin-eof --events-file <job>/events.jsonl [--resume]` in its own
//! process group, feed its stdout
//! (NDJSON engine events) and stderr (captured into the job log) to the writer, wait for it, and
//! turn how it ended into the job's next status.

use super::{Slot, StopKind, Supervisor, signal};
use crate::error::{JobsError, Result};
use crate::events::WorkerEvent;
use crate::ingest::IngestOp;
use crate::model::{Job, JobStatus, Transition};
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::oneshot;

/// Lines of stderr kept to explain a crash.
const STDERR_TAIL: usize = 20;

/// What the worker said about its own end.
#[derive(Debug, Default)]
struct Report {
    finished: Option<String>,
    failed: Option<String>,
}

pub(super) async fn launch(sup: &Supervisor, job: &Job) -> Result<()> {
    let cfg = &sup.inner.cfg;
    let job_dir = cfg.jobs_dir.join(&job.id);
    std::fs::create_dir_all(&job_dir).map_err(|e| JobsError::io(&job_dir, e))?;
    let config_path = job_dir.join("config.json");
    std::fs::write(&config_path, &job.config_json).map_err(|e| JobsError::io(&config_path, e))?;
    let attempt = job.attempt.unwrap_or(0) + 1;
    let resume = job.resume_next;

    let mut cmd = Command::new(&cfg.worker_exe);
    cmd.args(&cfg.worker_args)
        .arg("--config")
        .arg(&config_path)
        .arg("--output")
        .arg(&job.output_dir)
        .arg("--stop-on-stdin-eof")
        .arg("--events-file")
        .arg(job_dir.join(super::EVENTS_FILE));
    if let Some(runs) = &cfg.tensorboard_dir {
        cmd.arg("--tensorboard-dir").arg(runs.join(&job.id));
    }
    if resume {
        // The supervisor may have adapted the config (a smaller micro-batch after running out
        // of memory); the user cannot change a job's config, so forcing is safe.
        cmd.arg("--resume").arg("--force");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(false);
    // Its own process group: a Ctrl-C in the studio's terminal is for the studio, not the job.
    #[cfg(unix)]
    cmd.process_group(0);
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    if let (true, 1, Some(fault)) = (cfg.allow_faults, attempt, &job.fault) {
        cmd.env("FINETUNE_FAULT", fault);
    }
    let mut child = cmd.spawn().map_err(|source| JobsError::Spawn { exe: cfg.worker_exe.clone(), source })?;
    let pid = child.id().unwrap_or(0);
    if let Err(e) = sup.transition(&job.id, &Transition::Running { attempt, pid, resume }) {
        // Cancelled or deleted while it was being started.
        let _ = child.start_kill();
        let _ = child.wait().await;
        sup.slots().remove(&job.id);
        return match e {
            JobsError::InvalidState { .. } | JobsError::JobNotFound(_) => Ok(()),
            other => Err(other),
        };
    }
    let how = if resume { "resuming from the newest checkpoint" } else { "from the start" };
    sup.log(&job.id, "info", &format!("attempt {attempt} started (pid {pid}), {how}"));
    let (kill_tx, kill_rx) = oneshot::channel();
    let pending_stop = {
        let mut slots = sup.slots();
        let slot = slots.entry(job.id.clone()).or_insert(Slot {
            device: super::device_key(&job.device),
            pid: None,
            stop: None,
            kill: None,
        });
        slot.pid = Some(pid);
        slot.kill = Some(kill_tx);
        slot.stop
    };
    // A stop asked for while the worker was being started.
    match pending_stop {
        Some(StopKind::Cancel) => {
            signal::terminate(pid);
        }
        Some(StopKind::Pause) => {
            signal::pause(pid);
        }
        None => {}
    }
    let sup = sup.clone();
    let id = job.id.clone();
    tokio::spawn(async move { watch(sup, id, child, kill_rx).await });
    Ok(())
}

async fn read_stdout(sup: Supervisor, job_id: Arc<str>, out: ChildStdout) -> Report {
    let mut report = Report::default();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                let op = match WorkerEvent::parse_line(&line) {
                    Some(event) => {
                        match &event {
                            WorkerEvent::Finished { status, .. } => report.finished = Some(status.clone()),
                            WorkerEvent::Failed { error } => report.failed = Some(error.clone()),
                            _ => {}
                        }
                        IngestOp::Worker { job_id: job_id.clone(), event }
                    }
                    None => IngestOp::Log {
                        job_id: job_id.clone(),
                        level: "info",
                        source: "stdout",
                        message: line,
                    },
                };
                if sup.inner.ingest.send(op).is_err() {
                    eprintln!("studio: the writer stopped; dropping output of job {job_id}");
                }
            }
            Ok(None) => break,
            Err(e) => {
                sup.log(&job_id, "warn", &format!("cannot read the worker's output: {e}"));
                break;
            }
        }
    }
    report
}

async fn read_stderr(sup: Supervisor, job_id: Arc<str>, err: ChildStderr) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        let _ = sup.inner.ingest.send(IngestOp::Log {
            job_id: job_id.clone(),
            level: "info",
            source: "stderr",
            message: line,
        });
    }
    tail
}

async fn watch(sup: Supervisor, id: String, mut child: Child, mut kill_rx: oneshot::Receiver<()>) {
    let job_id: Arc<str> = id.as_str().into();
    let stdin = child.stdin.take();
    let out = child.stdout.take().map(|o| tokio::spawn(read_stdout(sup.clone(), job_id.clone(), o)));
    let err = child.stderr.take().map(|e| tokio::spawn(read_stderr(sup.clone(), job_id.clone(), e)));
    let mut kill_armed = true;
    let exit = loop {
        tokio::select! {
            status = child.wait() => break status,
            r = &mut kill_rx, if kill_armed => {
                kill_armed = false;
                if r.is_ok() {
                    sup.log(&id, "warn", "the worker did not stop within the grace period; killing it");
                    let _ = child.start_kill();
                }
            }
        }
    };
    // The worker watches its stdin: closing it is how a dying studio tells it to pause.
    drop(stdin);
    let report = match out {
        Some(t) => t.await.unwrap_or_default(),
        None => Report::default(),
    };
    let tail = match err {
        Some(t) => t.await.unwrap_or_default(),
        None => VecDeque::new(),
    };
    if let Err(e) = sup.inner.ingest.flush().await {
        eprintln!("studio: job {id}: {e}");
    }
    let stop = sup.slots().get(&id).and_then(|s| s.stop);
    let job = sup.inner.store.job(&id).ok().flatten();
    let Decision { mut transition, outcome, adapt } = decide(&exit, &report, stop, &tail, job.as_ref());
    if let (Some(Adaptation::HalveBatch), Some(job)) = (adapt, &job) {
        match halve_batch(&job.config_json) {
            Some((json, from, to)) => {
                if let Err(e) = sup.inner.store.update_config(&id, &json) {
                    eprintln!("studio: job {id}: {e}");
                }
                sup.alert(
                    job,
                    "out_of_memory",
                    &format!(
                        "ran out of memory; restarting with micro-batch {} × {} accumulation (was {} × {})",
                        to.0, to.1, from.0, from.1
                    ),
                    "the effective batch is unchanged; a shorter data.max_len or QLoRA also saves memory",
                );
            }
            None => {
                transition = Transition::Failed {
                    error: format!(
                        "{} (already at a micro-batch of 1: lower data.max_len, use QLoRA or a smaller model)",
                        report.failed.clone().unwrap_or_default()
                    ),
                };
            }
        }
    }
    let code = exit.as_ref().ok().and_then(ExitStatus::code);
    if let Err(e) = sup.inner.store.end_attempt(&id, code, outcome) {
        eprintln!("studio: job {id}: {e}");
    }
    let transitioned = sup.transition(&id, &transition);
    // The device is freed only once this job's outcome is stored, so a queued job never starts
    // (and shows as running) while this one still reads as running.
    sup.slots().remove(&id);
    match transitioned {
        Ok(job) if job.status == JobStatus::Pending => {
            let wait = super::backoff(sup.inner.cfg.restart_backoff, job.restarts);
            if let Err(e) =
                sup.inner.store.set_retry_at(&id, Some(crate::time::now_ms() + wait.as_millis() as i64))
            {
                eprintln!("studio: job {id}: {e}");
            }
            let why = if outcome == "out_of_memory" { "ran out of memory" } else { "the worker crashed" };
            sup.alert(
                &job,
                "restarted",
                &format!(
                    "{why}; restart {} of {} from the newest checkpoint in {:.1} s",
                    job.restarts,
                    job.max_restarts,
                    wait.as_secs_f64()
                ),
                "nothing to do: the job continues by itself",
            );
            let waker = sup.inner.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                waker.notify_one();
            });
        }
        Ok(_) => {}
        // Deleted meanwhile, or already settled: nothing to record.
        Err(e) => eprintln!("studio: job {id}: {e}"),
    }
    sup.inner.wake.notify_one();
}

fn describe_exit(exit: &std::io::Result<ExitStatus>) -> String {
    match exit {
        Err(e) => format!("cannot wait for the worker: {e}"),
        Ok(s) => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(sig) = s.signal() {
                    return format!("the worker was killed by signal {sig}");
                }
            }
            match s.code() {
                Some(c) => format!("the worker exited with status {c}"),
                None => "the worker exited".into(),
            }
        }
    }
}

/// A change to a job's config before it is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adaptation {
    /// Out of memory: half the micro-batch, twice the accumulation (same effective batch).
    HalveBatch,
}

/// How an attempt ended and what happens next.
#[derive(Debug, PartialEq)]
struct Decision {
    transition: Transition,
    outcome: &'static str,
    adapt: Option<Adaptation>,
}

impl From<(Transition, &'static str)> for Decision {
    fn from((transition, outcome): (Transition, &'static str)) -> Self {
        Self { transition, outcome, adapt: None }
    }
}

/// `train.batch_size` halved and `train.grad_accum` doubled in a config JSON, with the old and
/// new (batch, accumulation); `None` when the batch is already 1.
fn halve_batch(config_json: &str) -> Option<(String, (u64, u64), (u64, u64))> {
    let mut v: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let train = v.as_object_mut()?.entry("train").or_insert_with(|| serde_json::json!({})).as_object_mut()?;
    let bs = train.get("batch_size").and_then(|b| b.as_u64()).unwrap_or(4);
    let accum = train.get("grad_accum").and_then(|b| b.as_u64()).unwrap_or(1);
    if bs <= 1 {
        return None;
    }
    let (new_bs, new_accum) = (bs / 2, accum * 2);
    train.insert("batch_size".into(), new_bs.into());
    train.insert("grad_accum".into(), new_accum.into());
    Some((v.to_string(), (bs, accum), (new_bs, new_accum)))
}

/// How an attempt ended, from what the worker reported, how it exited and what was asked of it.
fn decide(
    exit: &std::io::Result<ExitStatus>,
    report: &Report,
    stop: Option<StopKind>,
    tail: &VecDeque<String>,
    job: Option<&Job>,
) -> Decision {
    let success = exit.as_ref().map(|s| s.success()).unwrap_or(false);
    match (report.finished.as_deref(), stop) {
        (Some("completed"), _) if success => return (Transition::Completed, "completed").into(),
        (_, Some(StopKind::Cancel)) | (Some("cancelled"), _) => {
            return (Transition::Cancelled, "cancelled").into();
        }
        (Some("paused"), _) if success => return (Transition::Paused, "paused").into(),
        _ => {}
    }
    let error = match &report.failed {
        Some(e) => e.clone(),
        None => {
            let mut msg = describe_exit(exit);
            if let Some(last) = tail.back() {
                msg.push_str(": ");
                msg.push_str(last);
            }
            msg
        }
    };
    // An error the engine reported (bad config, bad data) would happen again; a crash may not,
    // and running out of memory will not with a smaller micro-batch.
    let crashed = report.failed.is_none();
    let oom = report.failed.as_deref().is_some_and(|e| e.starts_with("out of memory"));
    if (crashed || oom) && job.is_some_and(|j| j.restarts < j.max_restarts) {
        let restart = Transition::Pending { resume: true, restart: true };
        return match oom {
            true => Decision {
                transition: restart,
                outcome: "out_of_memory",
                adapt: Some(Adaptation::HalveBatch),
            },
            false => (restart, "crashed").into(),
        };
    }
    (Transition::Failed { error }, "failed").into()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn the_end_of_an_attempt_decides_the_status() {
        let none = VecDeque::new();
        let fin = |s: &str| Report { finished: Some(s.into()), failed: None };
        assert_eq!(
            decide(&exited(0), &fin("completed"), None, &none, None).transition,
            Transition::Completed
        );
        assert_eq!(
            decide(&exited(0), &fin("paused"), Some(StopKind::Pause), &none, None).transition,
            Transition::Paused
        );
        assert_eq!(
            decide(&exited(130), &fin("cancelled"), None, &none, None).transition,
            Transition::Cancelled
        );
        // Killed after the grace period: still a cancel.
        assert_eq!(
            decide(&Ok(ExitStatus::from_raw(9)), &Report::default(), Some(StopKind::Cancel), &none, None)
                .transition,
            Transition::Cancelled
        );
        let failed = Report { finished: None, failed: Some("config `train.lr`: bad".into()) };
        assert_eq!(
            decide(&exited(1), &failed, None, &none, None).transition,
            Transition::Failed { error: "config `train.lr`: bad".into() }
        );
        let tail: VecDeque<String> = ["thread panicked at x".to_string()].into();
        let t = decide(&Ok(ExitStatus::from_raw(6)), &Report::default(), None, &tail, None).transition;
        assert_eq!(
            t,
            Transition::Failed { error: "the worker was killed by signal 6: thread panicked at x".into() }
        );
    }

    #[test]
    fn out_of_memory_restarts_with_half_the_micro_batch() {
        let oom = Report { finished: None, failed: Some("out of memory: CUDA_ERROR_OUT_OF_MEMORY".into()) };
        let none = VecDeque::new();
        let mut job = crate::store::testing::job_for_tests();
        job.max_restarts = 2;
        let d = decide(&exited(1), &oom, None, &none, Some(&job));
        assert_eq!(d.transition, Transition::Pending { resume: true, restart: true });
        assert_eq!(d.adapt, Some(Adaptation::HalveBatch));
        job.restarts = 2;
        assert!(matches!(
            decide(&exited(1), &oom, None, &none, Some(&job)).transition,
            Transition::Failed { .. }
        ));
        let (json, from, to) = halve_batch(r#"{"train":{"batch_size":8,"grad_accum":2,"lr":0.1}}"#).unwrap();
        assert_eq!((from, to), ((8, 2), (4, 4)));
        assert!(json.contains("\"lr\":0.1"));
        assert_eq!(halve_batch(r#"{"train":{}}"#).unwrap().2, (2, 2));
        assert!(halve_batch(r#"{"train":{"batch_size":1}}"#).is_none());
    }
}
