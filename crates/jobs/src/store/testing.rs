//! Helpers for tests and fixture builders: raw SQL against a store, and setting the schema
//! version of a database file. Not used by the studio itself.

use super::Store;
use crate::error::Result;
use crate::model::{Job, JobStatus};
use std::path::Path;

/// Runs SQL statements on the store's connection.
pub fn execute(store: &Store, sql: &str) -> Result<()> {
    store.lock().execute_batch(sql)?;
    Ok(())
}

/// Sets `PRAGMA user_version` of a database file.
pub fn set_user_version(path: &Path, version: i64) -> Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "user_version", version)?;
    Ok(())
}

/// A job value with neutral fields, for unit tests of pure decisions.
pub fn job_for_tests() -> Job {
    Job {
        id: "job-test".into(),
        name: "test".into(),
        status: JobStatus::Running,
        method: "lora".into(),
        model_path: String::new(),
        dataset_path: String::new(),
        device: "cpu".into(),
        config_json: "{}".into(),
        output_dir: String::new(),
        created_at: 0,
        updated_at: 0,
        started_at: None,
        finished_at: None,
        current_step: 0,
        total_steps: 0,
        current_epoch: 0.0,
        total_epochs: 0.0,
        current_loss: None,
        best_loss: None,
        eval_loss: None,
        tokens: 0,
        tokens_per_s: None,
        elapsed_s: None,
        eta_s: None,
        error_message: None,
        published_adapter: None,
        max_restarts: 0,
        restarts: 0,
        resume_next: false,
        attempt: None,
        pid: None,
        retry_at: None,
        fault: None,
    }
}
