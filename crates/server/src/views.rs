//! The JSON shapes of the API, built from the job layer's records. Times are RFC 3339 (UTC).
//! Field names follow the user's story where it named them (`job_id`, `progress`,
//! `current_loss`, `best_loss`, `error_message`, ...).

use finetune_jobs::time::rfc3339;
use finetune_jobs::{
    Attempt, CheckpointRecord, DatasetRecord, Job, JobState, LogLine, MetricPoint, ModelRecord,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A job as lists show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub job_id: String,
    pub name: String,
    /// pending, running, paused, completed, failed, cancelled or interrupted.
    pub status: String,
    /// lora, qlora or full.
    pub method: String,
    pub model_path: String,
    pub dataset_path: String,
    pub device: String,
    /// Completed fraction of the planned optimizer steps, 0 to 1.
    pub progress: f64,
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
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    /// When it completed, failed or was cancelled.
    pub finished_at: Option<String>,
    pub error_message: Option<String>,
    /// Where the adapter (or, for full fine-tuning, the model) is written.
    pub output_dir: String,
    /// The checkpoint deployed as this job's adapter, if one was.
    pub published_adapter: Option<String>,
    pub max_restarts: u32,
    pub restarts: u32,
    /// The number of the newest worker run.
    pub attempt: Option<u32>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            job_id: j.id.clone(),
            name: j.name.clone(),
            status: j.status.to_string(),
            method: j.method.clone(),
            model_path: j.model_path.clone(),
            dataset_path: j.dataset_path.clone(),
            device: j.device.clone(),
            progress: j.progress(),
            current_step: j.current_step,
            total_steps: j.total_steps,
            current_epoch: j.current_epoch,
            total_epochs: j.total_epochs,
            current_loss: j.current_loss,
            best_loss: j.best_loss,
            eval_loss: j.eval_loss,
            tokens: j.tokens,
            tokens_per_s: j.tokens_per_s,
            elapsed_s: j.elapsed_s,
            eta_s: j.eta_s,
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            error_message: j.error_message.clone(),
            output_dir: j.output_dir.clone(),
            published_adapter: j.published_adapter.clone(),
            max_restarts: j.max_restarts,
            restarts: j.restarts,
            attempt: j.attempt,
        }
    }
}

/// One worker run of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub number: u32,
    pub pid: Option<u32>,
    pub resume: bool,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    /// completed, paused, cancelled, failed, crashed or interrupted.
    pub outcome: Option<String>,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            pid: a.pid,
            resume: a.resume,
            started_at: rfc3339(a.started_at),
            ended_at: a.ended_at.map(rfc3339),
            exit_code: a.exit_code,
            outcome: a.outcome.clone(),
        }
    }
}

/// The status with what belongs to it, e.g. `{"status": "running", "attempt": 2, "pid": 4242,
/// "started_at": ...}` or `{"status": "failed", "finished_at": ..., "error": ...}`.
pub fn state_json(state: &JobState) -> Value {
    use serde_json::json;
    match state {
        JobState::Pending { queued_at, resume } => {
            json!({"status": "pending", "queued_at": rfc3339(*queued_at), "resume": resume})
        }
        JobState::Running { started_at, attempt, pid } => {
            json!({"status": "running", "started_at": rfc3339(*started_at), "attempt": attempt, "pid": pid})
        }
        JobState::Paused { at_step, paused_at } => {
            json!({"status": "paused", "at_step": at_step, "paused_at": rfc3339(*paused_at)})
        }
        JobState::Completed { finished_at } => {
            json!({"status": "completed", "finished_at": rfc3339(*finished_at)})
        }
        JobState::Failed { finished_at, error } => {
            json!({"status": "failed", "finished_at": rfc3339(*finished_at), "error": error})
        }
        JobState::Cancelled { finished_at } => {
            json!({"status": "cancelled", "finished_at": rfc3339(*finished_at)})
        }
        JobState::Interrupted { at, reason } => {
            json!({"status": "interrupted", "at": rfc3339(*at), "reason": reason})
        }
    }
}

/// A job with its config and attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    /// The status with its own data (see [`state_json`]).
    #[schema(value_type = Object)]
    pub state: Value,
    /// The training config (sections model, method, lora, quant, data, train, checkpoint).
    #[schema(value_type = Object)]
    pub config: Value,
    pub attempts: Vec<AttemptView>,
}

/// One optimizer step's metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricPointView {
    pub step: u64,
    pub epoch: Option<f64>,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens: Option<u64>,
    pub tokens_per_s: Option<f64>,
    /// GPU memory in use when the device reports it, else the worker's resident memory.
    pub mem_bytes: Option<u64>,
    pub elapsed_s: Option<f64>,
    /// Present at steps where an evaluation ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

impl From<&MetricPoint> for MetricPointView {
    fn from(p: &MetricPoint) -> Self {
        Self {
            step: p.step,
            epoch: p.epoch,
            loss: p.loss,
            lr: p.lr,
            grad_norm: p.grad_norm,
            tokens: p.tokens,
            tokens_per_s: p.tokens_per_s,
            mem_bytes: p.mem_bytes,
            elapsed_s: p.elapsed_s,
            eval_loss: p.eval_loss,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    /// Increasing; pass the last one as `after_id` to page.
    pub id: i64,
    pub ts: String,
    pub level: String,
    /// worker, stderr, stdout or studio.
    pub source: String,
    pub message: String,
}

impl From<&LogLine> for LogView {
    fn from(l: &LogLine) -> Self {
        Self {
            id: l.id,
            ts: rfc3339(l.ts),
            level: l.level.clone(),
            source: l.source.clone(),
            message: l.message.clone(),
        }
    }
}

/// `<job_id>-step-<step>`.
pub fn checkpoint_id(job_id: &str, step: u64) -> String {
    format!("{job_id}-step-{step}")
}

/// The job id and step of a checkpoint id.
pub fn parse_checkpoint_id(id: &str) -> Option<(&str, u64)> {
    let (job, step) = id.rsplit_once("-step-")?;
    Some((job, step.parse().ok()?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    pub checkpoint_id: String,
    pub job_id: String,
    pub step: u64,
    pub loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// The checkpoint folder: a PEFT adapter (or full weights) plus optimizer and trainer state.
    pub model_path: String,
    pub size_bytes: Option<u64>,
    pub created_at: String,
    /// Whether the folder is still on disk (the engine keeps the newest `checkpoint.keep_last`).
    pub exists: bool,
    /// Whether it is the job's published adapter.
    pub published: bool,
}

impl CheckpointView {
    pub fn new(c: &CheckpointRecord, published: Option<&str>) -> Self {
        Self {
            checkpoint_id: checkpoint_id(&c.job_id, c.step),
            job_id: c.job_id.clone(),
            step: c.step,
            loss: c.loss,
            eval_loss: c.eval_loss,
            model_path: c.path.clone(),
            size_bytes: c.size_bytes,
            created_at: rfc3339(c.created_at),
            exists: std::path::Path::new(&c.path).is_dir(),
            published: published == Some(c.path.as_str()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetView {
    pub dataset_id: String,
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
    /// Copied into the studio's data dir (deleted with it) rather than registered in place.
    pub uploaded: bool,
    pub created_at: String,
}

impl From<&DatasetRecord> for DatasetView {
    fn from(d: &DatasetRecord) -> Self {
        Self {
            dataset_id: d.id.clone(),
            name: d.name.clone(),
            path: d.path.clone(),
            size_bytes: d.size_bytes,
            uploaded: d.uploaded,
            created_at: rfc3339(d.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// Set for registered models; hub-cache models are referred to by path.
    pub model_id: Option<String>,
    pub name: String,
    pub path: String,
    /// registered or hf-cache.
    pub source: String,
    /// The architecture family, when the folder's config.json is supported.
    pub family: Option<String>,
    pub parameters: Option<u64>,
    /// The family's attention, position, norm and MLP mechanisms (GQA, RoPE, SwiGLU, ...).
    pub mechanisms: Vec<String>,
    /// Why the folder cannot be trained, if it cannot.
    pub problem: Option<String>,
}

impl ModelView {
    pub fn registered(m: &ModelRecord) -> Self {
        Self {
            model_id: Some(m.id.clone()),
            name: m.name.clone(),
            path: m.path.clone(),
            source: "registered".into(),
            family: m.family.clone(),
            parameters: None,
            mechanisms: Vec::new(),
            problem: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_ids_round_trip() {
        let id = checkpoint_id("job-0123456789ab", 40);
        assert_eq!(parse_checkpoint_id(&id), Some(("job-0123456789ab", 40)));
        assert_eq!(parse_checkpoint_id("job-1-step-x"), None);
        assert_eq!(parse_checkpoint_id("nothing"), None);
    }
}
