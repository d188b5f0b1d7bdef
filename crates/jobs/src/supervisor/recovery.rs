//! Start-up recovery. A job still marked `running` belongs to a studio that is gone: if its
//! worker still runs (it pauses by itself when its stdin closes), it is asked to pause and given
//! the grace period to write its checkpoint. The events the dead studio never committed (the
//! last steps, the pause checkpoint) are read back from the job's `events.jsonl`, which every
//! worker appends to; then the job becomes `interrupted`. Interrupted jobs
//! whose restart policy allows it are queued again to resume from their newest checkpoint.

use super::{EVENTS_FILE, Supervisor, signal};
use crate::error::Result;
use crate::events::WorkerEvent;
use crate::ingest::IngestOp;
use crate::model::{Job, JobStatus, Transition};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commits the step, eval and checkpoint events of the job's events file that come after the
/// newest step the store has. Returns how many it recovered.
async fn reconcile(sup: &Supervisor, job: &Job) -> Result<usize> {
    let path = sup.config().jobs_dir.join(&job.id).join(EVENTS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(0) };
    let after = sup.store().max_metric_step(&job.id)?;
    let job_id: Arc<str> = job.id.as_str().into();
    let mut n = 0;
    for event in text.lines().filter_map(WorkerEvent::parse_line) {
        let step = match &event {
            WorkerEvent::Step { point, .. } => point.step,
            WorkerEvent::Eval { step, .. } | WorkerEvent::Checkpoint { step, .. } => *step,
            _ => continue,
        };
        if step > after {
            sup.ingestor().send(IngestOp::Worker { job_id: job_id.clone(), event })?;
            n += 1;
        }
    }
    sup.ingestor().flush().await?;
    Ok(n)
}

pub(super) async fn recover(sup: &Supervisor) -> Result<()> {
    let store = sup.store().clone();
    for job in store.jobs_with_status(JobStatus::Running, "ASC")? {
        let mut note = String::new();
        if let Some(pid) = job.pid.filter(|&p| signal::is_worker_for(p, &job.output_dir)) {
            signal::pause(pid);
            let deadline = Instant::now() + sup.config().cancel_grace;
            while signal::alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if signal::alive(pid) {
                signal::kill(pid);
                note = format!("; its worker (pid {pid}) did not pause in time and was killed");
            } else {
                note = format!("; its worker (pid {pid}) paused");
            }
        }
        let recovered = reconcile(sup, &job).await?;
        if recovered > 0 {
            sup.log(
                &job.id,
                "info",
                &format!("recovered {recovered} events the previous studio had not recorded"),
            );
        }
        store.end_attempt(&job.id, None, "interrupted")?;
        let reason = format!("the studio stopped while this job was running{note}");
        sup.transition(&job.id, &Transition::Interrupted { reason: reason.clone() })?;
        sup.log(&job.id, "warn", &reason);
    }
    for job in store.jobs_with_status(JobStatus::Interrupted, "ASC")? {
        if job.restarts < job.max_restarts {
            sup.transition(&job.id, &Transition::Pending { resume: true, restart: true })?;
            sup.log(&job.id, "info", "restarting from the newest checkpoint (restart policy)");
        }
    }
    Ok(())
}
