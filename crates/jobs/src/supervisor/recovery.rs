//! Start-up recovery. A job still marked `running` belongs to a studio that is gone: if its
//! worker still runs (it pauses by itself when its stdin closes), it is asked to pause and given
//! the grace period to write its checkpoint; then the job becomes `interrupted`. Interrupted jobs
//! whose restart policy allows it are queued again to resume from their newest checkpoint.

use super::{Supervisor, signal};
use crate::error::Result;
use crate::model::{JobStatus, Transition};
use std::time::{Duration, Instant};

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
