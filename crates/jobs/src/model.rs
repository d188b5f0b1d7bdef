//! The records the store keeps: jobs (with a state-carrying [`JobState`]), attempts, metric
//! points, log lines, checkpoints, datasets and models. Plain data; the store reads and writes
//! them and the server turns them into JSON.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a job is in its life. Stored as text in `jobs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// No worker will run for it again unless the user acts.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// A worker is running or about to run for it.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Whether the job may move from `self` to `to`. Pure: the rules of the state machine.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        match (self, to) {
            (Pending, Running | Paused | Cancelled | Failed) => true,
            (Running, Paused | Completed | Failed | Cancelled | Interrupted | Pending) => true,
            // Resume queues the job again; restoring a checkpoint may also reopen a completed job.
            (Paused | Interrupted | Failed | Cancelled | Completed, Pending) => true,
            (Paused | Interrupted, Cancelled) => true,
            _ => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status with what belongs to it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Pending { queued_at: i64, resume: bool },
    Running { started_at: i64, attempt: u32, pid: Option<u32> },
    Paused { at_step: u64, paused_at: i64 },
    Completed { finished_at: i64 },
    Failed { finished_at: i64, error: String },
    Cancelled { finished_at: i64 },
    Interrupted { at: i64, reason: String },
}

impl JobState {
    pub fn status(&self) -> JobStatus {
        match self {
            Self::Pending { .. } => JobStatus::Pending,
            Self::Running { .. } => JobStatus::Running,
            Self::Paused { .. } => JobStatus::Paused,
            Self::Completed { .. } => JobStatus::Completed,
            Self::Failed { .. } => JobStatus::Failed,
            Self::Cancelled { .. } => JobStatus::Cancelled,
            Self::Interrupted { .. } => JobStatus::Interrupted,
        }
    }
}

/// A change of status and what it records (see [`crate::Store::transition`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A worker was started: a new attempt with its pid.
    Running {
        attempt: u32,
        pid: u32,
        resume: bool,
    },
    /// Queued (again). `resume` makes the next worker continue from the newest checkpoint;
    /// `restart` counts it against the job's restart policy.
    Pending {
        resume: bool,
        restart: bool,
    },
    Paused,
    Completed,
    Failed {
        error: String,
    },
    Cancelled,
    Interrupted {
        reason: String,
    },
}

impl Transition {
    pub fn status(&self) -> JobStatus {
        match self {
            Self::Running { .. } => JobStatus::Running,
            Self::Pending { .. } => JobStatus::Pending,
            Self::Paused => JobStatus::Paused,
            Self::Completed => JobStatus::Completed,
            Self::Failed { .. } => JobStatus::Failed,
            Self::Cancelled => JobStatus::Cancelled,
            Self::Interrupted { .. } => JobStatus::Interrupted,
        }
    }
}

/// What the server passes to create a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub method: String,
    pub model_path: String,
    pub dataset_path: String,
    /// The device setting of the config (`auto`, `cpu`, `cuda:0`...): the queue's concurrency key.
    pub device: String,
    /// The training config as JSON; the worker reads it as `config.json`.
    pub config_json: String,
    pub max_restarts: u32,
    /// A `FINETUNE_FAULT` spec for the first attempt (reliability tests; ignored unless the
    /// supervisor allows faults).
    pub fault: Option<String>,
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub status: JobStatus,
    pub method: String,
    pub model_path: String,
    pub dataset_path: String,
    pub device: String,
    pub config_json: String,
    pub output_dir: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub current_step: u64,
    pub total_steps: u64,
    pub current_epoch: f64,
    pub total_epochs: f64,
    pub current_loss: Option<f64>,
    pub best_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub tokens: u64,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: Option<f64>,
    pub eta_s: Option<f64>,
    pub error_message: Option<String>,
    pub published_adapter: Option<String>,
    pub max_restarts: u32,
    pub restarts: u32,
    pub resume_next: bool,
    /// The newest attempt's number and pid, when there is one.
    pub attempt: Option<u32>,
    pub pid: Option<u32>,
    /// A restarted job waits until this time (ms since the epoch) before it starts again.
    pub retry_at: Option<i64>,
    pub fault: Option<String>,
}

impl Job {
    /// Completed fraction of the planned optimizer steps, in [0, 1].
    pub fn progress(&self) -> f64 {
        if self.status == JobStatus::Completed {
            return 1.0;
        }
        if self.total_steps == 0 {
            return 0.0;
        }
        (self.current_step as f64 / self.total_steps as f64).clamp(0.0, 1.0)
    }

    /// The status with its data.
    pub fn state(&self) -> JobState {
        let at = self.updated_at;
        match self.status {
            JobStatus::Pending => JobState::Pending { queued_at: at, resume: self.resume_next },
            JobStatus::Running => JobState::Running {
                started_at: self.started_at.unwrap_or(at),
                attempt: self.attempt.unwrap_or(1),
                pid: self.pid,
            },
            JobStatus::Paused => JobState::Paused { at_step: self.current_step, paused_at: at },
            JobStatus::Completed => JobState::Completed { finished_at: self.finished_at.unwrap_or(at) },
            JobStatus::Failed => JobState::Failed {
                finished_at: self.finished_at.unwrap_or(at),
                error: self.error_message.clone().unwrap_or_default(),
            },
            JobStatus::Cancelled => JobState::Cancelled { finished_at: self.finished_at.unwrap_or(at) },
            JobStatus::Interrupted => {
                JobState::Interrupted { at, reason: self.error_message.clone().unwrap_or_default() }
            }
        }
    }
}

/// Filters and paging for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Any of these statuses (empty: all).
    pub statuses: Vec<JobStatus>,
    /// Substring of the name, model or dataset path.
    pub search: Option<String>,
    pub method: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// One optimizer step's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: u64,
    pub epoch: Option<f64>,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens: Option<u64>,
    pub tokens_per_s: Option<f64>,
    /// Device memory in use when the GPU reports it, else the worker's resident memory.
    pub mem_bytes: Option<u64>,
    pub elapsed_s: Option<f64>,
    /// The evaluation loss at this step, when an evaluation ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub ts: i64,
    pub level: String,
    /// `worker` (an engine log or alert event), `stderr`, `stdout` (a line that was not an event)
    /// or `studio` (the supervisor).
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub job_id: String,
    pub step: u64,
    pub path: String,
    pub loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub size_bytes: Option<u64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub pid: Option<u32>,
    pub resume: bool,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecord {
    pub id: String,
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
    /// Uploaded into the data dir (deleted with the record) rather than registered in place.
    pub uploaded: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub id: String,
    pub name: String,
    pub path: String,
    pub family: Option<String>,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_transitions_follow_the_rules() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("done"), None);
        use JobStatus::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Completed));
        assert!(Running.can_become(Interrupted));
        assert!(Paused.can_become(Pending));
        assert!(Completed.can_become(Pending), "restoring a checkpoint reopens a job");
        assert!(!Failed.can_become(Completed));
        assert!(!Completed.can_become(Running));
        assert!(!Paused.can_become(Running), "a paused job is queued again, never started directly");
        assert!(!Cancelled.can_become(Running));
    }
}

/// An alert of a job: an anomaly the engine's rules found or a decision the studio took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    pub id: i64,
    pub job_id: String,
    /// The job's name (filled by the queries across jobs).
    pub job_name: Option<String>,
    /// Unix ms.
    pub ts: i64,
    pub step: u64,
    pub kind: String,
    pub message: String,
    pub suggestion: String,
    /// `worker` or `studio`.
    pub source: String,
}

/// One stored telemetry sample: the engine's `TelemetrySample` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRecord {
    /// Unix ms.
    pub ts: i64,
    pub step: u64,
    pub sample: serde_json::Value,
}
