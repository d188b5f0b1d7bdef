//! The SQLite store: one connection (WAL, foreign keys on, `synchronous=NORMAL`) behind a mutex.
//! Reads and API-driven writes go through it directly; worker events arrive in batches from
//! [`crate::ingest`]. Every query is a prepared, cached statement.
//!
//! - this file: opening, migrations, jobs (create, read, list, delete, status transitions);
//! - [`writes`]: applying one worker event inside a batch transaction;
//! - [`history`]: metrics, logs, checkpoints and attempts of a job;
//! - [`catalog`]: datasets and registered models.

mod catalog;
mod history;
mod monitor;
pub mod testing;
mod writes;

use crate::error::{JobsError, Result};
use crate::ids;
use crate::migrate;
use crate::model::{Job, JobFilter, JobStatus, NewJob, Transition};
use crate::time::now_ms;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use writes::dir_size;
pub(crate) use writes::{write_event, write_log};

pub struct Store {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

const JOB_COLUMNS: &str = "j.id, j.name, j.status, j.method, j.model_path, j.dataset_path, j.device, j.config_json, \
     j.output_dir, j.created_at, j.updated_at, j.started_at, j.finished_at, j.current_step, j.total_steps, \
     j.current_epoch, j.total_epochs, j.current_loss, j.best_loss, j.eval_loss, j.tokens, j.tokens_per_s, \
     j.elapsed_s, j.eta_s, j.error_message, j.published_adapter, j.max_restarts, j.restarts, j.resume_next, \
     a.number, a.pid, j.retry_at, j.fault";

const JOB_FROM: &str =
    "FROM jobs j LEFT JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE job_id = j.id)";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let status: String = r.get(2)?;
    Ok(Job {
        id: r.get(0)?,
        name: r.get(1)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        method: r.get(3)?,
        model_path: r.get(4)?,
        dataset_path: r.get(5)?,
        device: r.get(6)?,
        config_json: r.get(7)?,
        output_dir: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        current_step: r.get::<_, i64>(13)?.max(0) as u64,
        total_steps: r.get::<_, i64>(14)?.max(0) as u64,
        current_epoch: r.get(15)?,
        total_epochs: r.get(16)?,
        current_loss: r.get(17)?,
        best_loss: r.get(18)?,
        eval_loss: r.get(19)?,
        tokens: r.get::<_, i64>(20)?.max(0) as u64,
        tokens_per_s: r.get(21)?,
        elapsed_s: r.get(22)?,
        eta_s: r.get(23)?,
        error_message: r.get(24)?,
        published_adapter: r.get(25)?,
        max_restarts: r.get::<_, i64>(26)?.max(0) as u32,
        restarts: r.get::<_, i64>(27)?.max(0) as u32,
        resume_next: r.get::<_, i64>(28)? != 0,
        attempt: r.get::<_, Option<i64>>(29)?.map(|n| n as u32),
        pid: r.get::<_, Option<i64>>(30)?.map(|n| n as u32),
        retry_at: r.get(31)?,
        fault: r.get(32)?,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| JobsError::io(dir, e))?;
        }
        let conn =
            Connection::open(path).map_err(|source| JobsError::Open { path: path.to_path_buf(), source })?;
        Self::init(conn, Some(path.to_path_buf()), migrate::LATEST)
    }

    /// A private in-memory database (tests, benchmarks).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, None, migrate::LATEST)
    }

    /// Opens a database migrated only up to `version` (to build fixtures of older schemas).
    pub fn open_at_version(path: &Path, version: i64) -> Result<Self> {
        let conn =
            Connection::open(path).map_err(|source| JobsError::Open { path: path.to_path_buf(), source })?;
        Self::init(conn, Some(path.to_path_buf()), version)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>, version: i64) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // journal_mode returns a row; in-memory databases answer "memory".
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate::migrate_to(&mut conn, version)?;
        Ok(Self { conn: Mutex::new(conn), path })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn schema_version(&self) -> Result<i64> {
        migrate::version(&self.lock())
    }

    pub const LATEST_SCHEMA: i64 = migrate::LATEST;

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a pending job whose output goes to `jobs_dir/<id>/output`.
    pub fn create_job(&self, new: &NewJob, jobs_dir: &Path) -> Result<Job> {
        let id = ids::new_id("job");
        let output = jobs_dir.join(&id).join("output");
        let now = now_ms();
        self.lock().prepare_cached(
            "INSERT INTO jobs (id, name, status, method, model_path, dataset_path, device, config_json, output_dir, \
             created_at, updated_at, max_restarts, fault) VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)",
        )?
        .execute(params![
            id,
            new.name,
            new.method,
            new.model_path,
            new.dataset_path,
            new.device,
            new.config_json,
            output.to_string_lossy(),
            now,
            new.max_restarts,
            new.fault
        ])?;
        self.job(&id)?.ok_or(JobsError::JobNotFound(id))
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.id = ?1"))?;
        Ok(stmt.query_row([id], job_from_row).optional()?)
    }

    pub fn require_job(&self, id: &str) -> Result<Job> {
        self.job(id)?.ok_or_else(|| JobsError::JobNotFound(id.to_string()))
    }

    /// Jobs matching `filter`, newest first, and how many match in all.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, u64)> {
        let mut clauses = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if !filter.statuses.is_empty() {
            let marks: Vec<String> = filter
                .statuses
                .iter()
                .map(|s| {
                    args.push(s.as_str().to_string().into());
                    format!("?{}", args.len())
                })
                .collect();
            clauses.push(format!("j.status IN ({})", marks.join(", ")));
        }
        if let Some(m) = &filter.method {
            args.push(m.clone().into());
            clauses.push(format!("j.method = ?{}", args.len()));
        }
        if let Some(q) = filter.search.as_ref().filter(|q| !q.is_empty()) {
            let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            args.push(format!("%{escaped}%").into());
            let n = args.len();
            clauses.push(format!(
                "(j.name LIKE ?{n} ESCAPE '\\' OR j.model_path LIKE ?{n} ESCAPE '\\' OR j.dataset_path LIKE ?{n} ESCAPE '\\')"
            ));
        }
        let filter_sql =
            if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let conn = self.lock();
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM jobs j {filter_sql}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        args.push(i64::from(filter.limit.max(1)).into());
        args.push(i64::from(filter.offset).into());
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} {filter_sql} ORDER BY j.created_at DESC, j.id DESC LIMIT ?{} OFFSET ?{}",
            args.len() - 1,
            args.len()
        );
        let mut stmt = conn.prepare(&sql)?;
        let jobs = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), job_from_row)?
            .collect::<Result<_, _>>()?;
        Ok((jobs, total.max(0) as u64))
    }

    /// Pending jobs due at `now_ms` (their restart back-off has passed), oldest first.
    pub fn pending_jobs(&self, now_ms: i64) -> Result<Vec<Job>> {
        let jobs = self.jobs_with_status(JobStatus::Pending, "ASC")?;
        Ok(jobs.into_iter().filter(|j| j.retry_at.is_none_or(|t| t <= now_ms)).collect())
    }

    /// Sets (or clears) when a pending job may start again.
    pub fn set_retry_at(&self, id: &str, at_ms: Option<i64>) -> Result<()> {
        self.lock()
            .prepare_cached("UPDATE jobs SET retry_at = ?2 WHERE id = ?1")?
            .execute(params![id, at_ms])?;
        Ok(())
    }

    /// Replaces a job's training config (the supervisor adapts it after an out-of-memory error).
    pub fn update_config(&self, id: &str, config_json: &str) -> Result<()> {
        self.lock()
            .prepare_cached("UPDATE jobs SET config_json = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id, config_json, now_ms()])?;
        Ok(())
    }

    pub fn jobs_with_status(&self, status: JobStatus, order: &str) -> Result<Vec<Job>> {
        let order = if order == "DESC" { "DESC" } else { "ASC" };
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.status = ?1 ORDER BY j.created_at {order}, j.id {order}"
        ))?;
        let jobs = stmt.query_map([status.as_str()], job_from_row)?.collect::<Result<_, _>>()?;
        Ok(jobs)
    }

    /// Deletes a job and everything recorded about it. Returns whether it existed.
    pub fn delete_job(&self, id: &str) -> Result<bool> {
        Ok(self.lock().prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([id])? > 0)
    }

    /// Moves a job to a new status if the state machine allows it, recording what belongs to the
    /// new state, and returns the job as it is now.
    pub fn transition(&self, id: &str, to: &Transition) -> Result<Job> {
        let now = now_ms();
        {
            let mut conn = self.lock();
            let tx = conn.transaction()?;
            let current: Option<String> =
                tx.query_row("SELECT status FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            let current = current.ok_or_else(|| JobsError::JobNotFound(id.to_string()))?;
            let from = JobStatus::parse(&current).unwrap_or(JobStatus::Failed);
            let target = to.status();
            if !from.can_become(target) {
                return Err(JobsError::InvalidState {
                    id: id.to_string(),
                    status: current,
                    message: format!("cannot become {target}"),
                });
            }
            writes::apply_transition(&tx, id, to, now)?;
            tx.commit()?;
        }
        self.require_job(id)
    }

    /// Sets (or clears) the adapter published for a job.
    pub fn set_published_adapter(&self, id: &str, path: Option<&str>) -> Result<Job> {
        let n = self
            .lock()
            .prepare_cached("UPDATE jobs SET published_adapter = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id, path, now_ms()])?;
        if n == 0 {
            return Err(JobsError::JobNotFound(id.to_string()));
        }
        self.require_job(id)
    }

    /// Forgets everything recorded after `step` (metrics, evals, checkpoints): the job will resume
    /// from the checkpoint at `step`.
    pub fn rewind_to(&self, id: &str, step: u64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let s = step as i64;
        tx.execute("DELETE FROM metrics WHERE job_id = ?1 AND step > ?2", params![id, s])?;
        tx.execute("DELETE FROM eval_metrics WHERE job_id = ?1 AND step > ?2", params![id, s])?;
        tx.execute("DELETE FROM checkpoints WHERE job_id = ?1 AND step > ?2", params![id, s])?;
        tx.execute(
            "UPDATE jobs SET current_step = ?2, current_loss = (SELECT loss FROM metrics WHERE job_id = ?1 AND step = ?2), \
             updated_at = ?3 WHERE id = ?1",
            params![id, s, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}
