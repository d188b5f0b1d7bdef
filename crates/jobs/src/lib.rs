//! Finetune Studio's job layer: the SQLite store that is the source of truth for every training
//! job (its status, attempts, metrics, logs and checkpoints) and the supervisor that queues jobs,
//! runs each one in a `finetune-studio worker` child process, writes what the worker reports in
//! batched transactions and fans it out to live listeners.
//!
//! - [`store`]: the database (migrations in `migrations/*.sql`, applied on open);
//! - [`events`]: the worker's NDJSON events, parsed leniently, and the live events we broadcast;
//! - [`ingest`]: the single writer thread that batches events into transactions, then broadcasts;
//! - [`supervisor`]: the queue, the worker processes, cancel/pause/resume and start-up recovery.

pub mod error;
pub mod events;
pub mod ids;
pub mod ingest;
mod migrate;
pub mod model;
pub mod store;
pub mod supervisor;
pub mod time;

pub use error::{JobsError, Result};
pub use events::{LiveEvent, WorkerEvent};
pub use ingest::{IngestOp, Ingestor};
pub use model::{
    AlertRecord, Attempt, CheckpointRecord, DatasetRecord, Job, JobFilter, JobState, JobStatus, LogLine,
    MetricPoint, ModelRecord, NewJob, TelemetryRecord, Transition,
};
pub use store::Store;
pub use supervisor::{Supervisor, SupervisorConfig};
