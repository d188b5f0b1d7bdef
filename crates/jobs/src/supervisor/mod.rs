//! The supervisor: a queue of jobs with at most `max_concurrent_per_device` running per device,
//! each in its own `finetune-studio worker` process. A crash, an out-of-memory kill or a panic
//! ends one job, never the studio.
//!
//! - this file: the handle and the user's actions (submit, cancel, pause, resume, restore,
//!   publish, delete) and the scheduling loop;
//! - [`process`]: starting a worker, reading its output, deciding how the attempt ended;
//! - [`recovery`]: start-up, when jobs left `running` by a studio that died become `interrupted`;
//! - [`signal`]: pause (SIGUSR1), cancel (SIGTERM, then SIGKILL after a grace period).

mod process;
mod recovery;
pub mod signal;

use crate::error::{JobsError, Result};
use crate::events::LiveEvent;
use crate::ids;
use crate::ingest::Ingestor;
use crate::model::{Job, JobStatus, NewJob, Transition};
use crate::store::Store;
use crate::time::now_ms;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, oneshot};

/// How the supervisor runs workers.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The `finetune-studio` executable (the server passes `std::env::current_exe()`; tests pass
    /// the binary cargo built).
    pub worker_exe: PathBuf,
    /// Arguments before the per-job ones (default: `["worker"]`).
    pub worker_args: Vec<String>,
    /// Where each job gets `<id>/config.json` and `<id>/output/`.
    pub jobs_dir: PathBuf,
    /// Jobs running at once on one device (`model.device` of the config); default 1.
    pub max_concurrent_per_device: usize,
    /// Time between SIGTERM and SIGKILL when cancelling.
    pub cancel_grace: Duration,
    /// Extra environment for workers.
    pub env: Vec<(String, String)>,
    /// How often the queue is looked at when nothing wakes it.
    pub poll_interval: Duration,
    /// Wait before the first restart after a crash; doubled for each further restart (capped
    /// at [`MAX_BACKOFF`]).
    pub restart_backoff: Duration,
    /// Pass a job's `fault` to its first worker as `FINETUNE_FAULT` (reliability tests only).
    pub allow_faults: bool,
    /// Where workers write TensorBoard event files, one folder per job (`<dir>/<job id>`), so
    /// `tensorboard --logdir <dir>` shows every job; `None` writes none.
    pub tensorboard_dir: Option<PathBuf>,
}

/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait before restart number `n` (1-based): `base · 2^(n-1)`, capped.
pub fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

impl SupervisorConfig {
    pub fn new(worker_exe: impl Into<PathBuf>, jobs_dir: impl Into<PathBuf>) -> Self {
        Self {
            worker_exe: worker_exe.into(),
            worker_args: vec!["worker".into()],
            jobs_dir: jobs_dir.into(),
            max_concurrent_per_device: 1,
            cancel_grace: Duration::from_secs(10),
            env: Vec::new(),
            poll_interval: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(2),
            allow_faults: false,
            tensorboard_dir: None,
        }
    }
}

/// The file in a job's folder where its workers also append their events.
pub const EVENTS_FILE: &str = "events.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopKind {
    Pause,
    Cancel,
}

/// A job the supervisor has claimed: starting or running.
pub(crate) struct Slot {
    device: String,
    pid: Option<u32>,
    stop: Option<StopKind>,
    kill: Option<oneshot::Sender<()>>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    ingest: Ingestor,
    cfg: SupervisorConfig,
    slots: Mutex<HashMap<String, Slot>>,
    wake: Arc<Notify>,
}

/// A handle on the supervisor; clones share it.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// The queue's concurrency key for a device setting.
fn device_key(device: &str) -> String {
    match device {
        "" | "auto" => "auto".into(),
        "cuda" => "cuda:0".into(),
        d => d.into(),
    }
}

impl Supervisor {
    /// Recovers jobs left running by a previous studio, then starts the scheduling loop. Must be
    /// called inside a tokio runtime.
    pub async fn start(store: Arc<Store>, cfg: SupervisorConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.jobs_dir).map_err(|e| JobsError::io(&cfg.jobs_dir, e))?;
        let ingest = Ingestor::start(store.clone())?;
        let sup = Self {
            inner: Arc::new(Inner {
                store,
                ingest,
                cfg,
                slots: Mutex::new(HashMap::new()),
                wake: Arc::new(Notify::new()),
            }),
        };
        recovery::recover(&sup).await?;
        let weak = Arc::downgrade(&sup.inner);
        let wake = sup.inner.wake.clone();
        let poll = sup.inner.cfg.poll_interval;
        tokio::spawn(async move {
            loop {
                {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Supervisor { inner }).schedule().await {
                        eprintln!("studio: scheduling failed: {e}");
                    }
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        });
        Ok(sup)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn ingestor(&self) -> &Ingestor {
        &self.inner.ingest
    }

    pub fn config(&self) -> &SupervisorConfig {
        &self.inner.cfg
    }

    /// Live events of all jobs, after the store has committed them.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.inner.ingest.subscribe()
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a transition, then tells listeners about the new status.
    pub(crate) fn transition(&self, id: &str, to: &Transition) -> Result<Job> {
        let job = self.inner.store.transition(id, to)?;
        self.publish_status(&job);
        Ok(job)
    }

    pub(crate) fn publish_status(&self, job: &Job) {
        self.inner.ingest.publish(LiveEvent {
            job_id: job.id.as_str().into(),
            kind: "status",
            step: None,
            data: serde_json::json!({
                "status": job.status,
                "current_step": job.current_step,
                "total_steps": job.total_steps,
                "progress": job.progress(),
                "error_message": job.error_message,
            }),
            committed_at_ms: now_ms(),
        });
    }

    /// Records a decision the studio took for a job as an alert event: stored with the job's
    /// history and sent to live listeners like the worker's own alerts.
    pub(crate) fn alert(&self, job: &Job, kind: &str, message: &str, suggestion: &str) {
        let event = crate::events::WorkerEvent::Alert {
            step: job.current_step,
            kind: kind.to_string(),
            message: message.to_string(),
            suggestion: suggestion.to_string(),
            source: "studio",
        };
        let op = crate::ingest::IngestOp::Worker { job_id: job.id.as_str().into(), event };
        if self.inner.ingest.send(op).is_err() {
            self.log(&job.id, "warn", message);
        }
    }

    fn log(&self, id: &str, level: &str, message: &str) {
        if let Err(e) = self.inner.store.add_log(id, level, message) {
            eprintln!("studio: cannot log for job {id}: {e}");
        }
    }

    /// Queues a new job.
    pub fn submit(&self, new: &NewJob) -> Result<Job> {
        let job = self.inner.store.create_job(new, &self.inner.cfg.jobs_dir)?;
        self.log(&job.id, "info", "queued");
        self.publish_status(&job);
        self.inner.wake.notify_one();
        Ok(job)
    }

    fn invalid(job: &Job, message: impl Into<String>) -> JobsError {
        JobsError::InvalidState {
            id: job.id.clone(),
            status: job.status.to_string(),
            message: message.into(),
        }
    }

    /// Cancels a job: a running worker gets SIGTERM, then SIGKILL after the grace period; the job
    /// ends `cancelled` with its checkpoints kept. Returns the job as it is now (a running job
    /// becomes `cancelled` once its worker has exited).
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.inner.store.require_job(id)?;
        match job.status {
            JobStatus::Running => {
                let (pid, kill) = {
                    let mut slots = self.slots();
                    match slots.get_mut(id) {
                        Some(slot) => {
                            slot.stop = Some(StopKind::Cancel);
                            (slot.pid, slot.kill.take())
                        }
                        None => (None, None),
                    }
                };
                let Some(pid) = pid else {
                    // Marked running but not ours (cannot normally happen): settle it.
                    return self.transition(id, &Transition::Cancelled);
                };
                self.log(id, "info", "cancel requested");
                if !signal::terminate(pid) {
                    if let Some(k) = kill {
                        let _ = k.send(());
                    }
                    return self.inner.store.require_job(id);
                }
                let grace = self.inner.cfg.cancel_grace;
                if let Some(k) = kill {
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        // The worker may be gone already; then nobody is listening.
                        let _ = k.send(());
                    });
                }
                self.inner.store.require_job(id)
            }
            JobStatus::Pending | JobStatus::Paused | JobStatus::Interrupted => {
                let job = self.transition(id, &Transition::Cancelled)?;
                self.log(id, "info", "cancelled");
                Ok(job)
            }
            _ => Err(Self::invalid(&job, "it has already finished")),
        }
    }

    /// Pauses a job: a running worker finishes its step, writes a checkpoint and exits; a pending
    /// job leaves the queue.
    pub fn pause(&self, id: &str) -> Result<Job> {
        let job = self.inner.store.require_job(id)?;
        match job.status {
            JobStatus::Running => {
                if !signal::PAUSE_SUPPORTED {
                    return Err(JobsError::Unsupported("pausing a running job needs Unix signals".into()));
                }
                let pid = {
                    let mut slots = self.slots();
                    slots.get_mut(id).and_then(|slot| {
                        slot.stop.get_or_insert(StopKind::Pause);
                        slot.pid
                    })
                };
                match pid {
                    Some(pid) if signal::pause(pid) => {
                        self.log(id, "info", "pause requested: the worker checkpoints after this step");
                        self.inner.store.require_job(id)
                    }
                    _ => Err(Self::invalid(&job, "its worker is not reachable")),
                }
            }
            JobStatus::Pending => self.transition(id, &Transition::Paused),
            _ => Err(Self::invalid(&job, "only a pending or running job can be paused")),
        }
    }

    /// Queues a paused, interrupted, failed or cancelled job again; its worker continues from the
    /// newest checkpoint.
    pub fn resume(&self, id: &str) -> Result<Job> {
        let job = self.inner.store.require_job(id)?;
        match job.status {
            JobStatus::Paused | JobStatus::Interrupted | JobStatus::Failed | JobStatus::Cancelled => {
                let job = self.transition(id, &Transition::Pending { resume: true, restart: false })?;
                self.log(id, "info", "resume requested: continuing from the newest checkpoint");
                self.inner.wake.notify_one();
                Ok(job)
            }
            _ => {
                Err(Self::invalid(&job, "only a paused, interrupted, failed or cancelled job can be resumed"))
            }
        }
    }

    /// Continues a job from the checkpoint at `step`: newer checkpoints are moved to
    /// `<output>/checkpoints-discarded/`, the history after `step` is forgotten, and the job is
    /// queued to resume.
    pub fn restore(&self, id: &str, step: u64) -> Result<Job> {
        let job = self.inner.store.require_job(id)?;
        if job.status.is_active() {
            return Err(Self::invalid(&job, "pause or cancel it before restoring a checkpoint"));
        }
        let ckpt = self
            .inner
            .store
            .checkpoint(id, step)?
            .ok_or_else(|| JobsError::CheckpointNotFound { job: id.to_string(), step })?;
        if !Path::new(&ckpt.path).is_dir() {
            return Err(JobsError::CheckpointNotFound { job: id.to_string(), step });
        }
        let output = Path::new(&job.output_dir);
        let discarded = output.join("checkpoints-discarded");
        for newer in self.inner.store.checkpoints(id)?.into_iter().filter(|c| c.step > step) {
            let from = Path::new(&newer.path);
            if from.is_dir() {
                std::fs::create_dir_all(&discarded).map_err(|e| JobsError::io(&discarded, e))?;
                let to = discarded.join(format!("step-{}-{}", newer.step, now_ms()));
                std::fs::rename(from, &to).map_err(|e| JobsError::io(from, e))?;
            }
        }
        self.inner.store.rewind_to(id, step)?;
        let job = self.transition(id, &Transition::Pending { resume: true, restart: false })?;
        self.log(id, "info", &format!("restored checkpoint at step {step}; continuing from there"));
        self.inner.wake.notify_one();
        Ok(job)
    }

    /// Makes a checkpoint the job's published adapter.
    pub fn publish_checkpoint(&self, id: &str, step: u64) -> Result<Job> {
        let ckpt = self
            .inner
            .store
            .checkpoint(id, step)?
            .ok_or_else(|| JobsError::CheckpointNotFound { job: id.to_string(), step })?;
        if !Path::new(&ckpt.path).is_dir() {
            return Err(JobsError::CheckpointNotFound { job: id.to_string(), step });
        }
        let job = self.inner.store.set_published_adapter(id, Some(&ckpt.path))?;
        self.log(id, "info", &format!("published the checkpoint at step {step} as the job's adapter"));
        Ok(job)
    }

    /// Deletes a job that is not running, with its files under the jobs folder.
    pub fn delete(&self, id: &str) -> Result<()> {
        let job = self.inner.store.require_job(id)?;
        if job.status == JobStatus::Running || self.slots().contains_key(id) {
            return Err(Self::invalid(&job, "cancel it before deleting it"));
        }
        if ids::is_valid(id) {
            let dir = self.inner.cfg.jobs_dir.join(id);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).map_err(|e| JobsError::io(&dir, e))?;
            }
        }
        self.inner.store.delete_job(id)?;
        Ok(())
    }

    /// Jobs whose worker this supervisor is running now.
    pub fn running_jobs(&self) -> Vec<String> {
        self.slots().keys().cloned().collect()
    }

    /// Starts workers for pending jobs while their device has a free slot.
    async fn schedule(&self) -> Result<()> {
        let max = self.inner.cfg.max_concurrent_per_device.max(1);
        for job in self.inner.store.pending_jobs(now_ms())? {
            let key = device_key(&job.device);
            {
                let mut slots = self.slots();
                if slots.contains_key(&job.id) || slots.values().filter(|s| s.device == key).count() >= max {
                    continue;
                }
                slots.insert(job.id.clone(), Slot { device: key, pid: None, stop: None, kill: None });
            }
            if let Err(e) = process::launch(self, &job).await {
                self.slots().remove(&job.id);
                let error = format!("cannot start the worker: {e}");
                eprintln!("studio: job {}: {error}", job.id);
                if let Err(e2) = self.transition(&job.id, &Transition::Failed { error }) {
                    eprintln!("studio: job {}: {e2}", job.id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Duration, MAX_BACKOFF, backoff, device_key};

    #[test]
    fn restarts_back_off_exponentially_up_to_a_cap() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 3), Duration::from_secs(8));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn devices_share_a_queue_by_key() {
        assert_eq!(device_key("cuda"), device_key("cuda:0"));
        assert_ne!(device_key("cuda:1"), device_key("cuda:0"));
        assert_eq!(device_key(""), device_key("auto"));
    }
}
