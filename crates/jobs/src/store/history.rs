//! What a job left behind: metric points (with the eval loss of the same step), log lines,
//! checkpoints and attempts, read with keyset paging (`after_step`, `after_id`).

use super::Store;
use crate::error::Result;
use crate::model::{Attempt, CheckpointRecord, LogLine, MetricPoint};
use rusqlite::{OptionalExtension, Row, params};

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<CheckpointRecord> {
    Ok(CheckpointRecord {
        job_id: r.get(0)?,
        step: r.get::<_, i64>(1)?.max(0) as u64,
        path: r.get(2)?,
        loss: r.get(3)?,
        eval_loss: r.get(4)?,
        size_bytes: r.get::<_, Option<i64>>(5)?.map(|b| b.max(0) as u64),
        created_at: r.get(6)?,
    })
}

impl Store {
    /// Metric points after `after_step`, ascending, at most `limit`.
    pub fn metrics(&self, job_id: &str, after_step: u64, limit: u32) -> Result<Vec<MetricPoint>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT m.step, m.epoch, m.loss, m.lr, m.grad_norm, m.tokens, m.tokens_per_s, m.mem_bytes, m.elapsed_s, \
             e.eval_loss FROM metrics m LEFT JOIN eval_metrics e ON e.job_id = m.job_id AND e.step = m.step \
             WHERE m.job_id = ?1 AND m.step > ?2 ORDER BY m.step LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![job_id, after_step.min(i64::MAX as u64) as i64, limit], |r| {
                Ok(MetricPoint {
                    step: r.get::<_, i64>(0)?.max(0) as u64,
                    epoch: r.get(1)?,
                    loss: r.get(2)?,
                    lr: r.get(3)?,
                    grad_norm: r.get(4)?,
                    tokens: r.get::<_, Option<i64>>(5)?.map(|t| t.max(0) as u64),
                    tokens_per_s: r.get(6)?,
                    mem_bytes: r.get::<_, Option<i64>>(7)?.map(|t| t.max(0) as u64),
                    elapsed_s: r.get(8)?,
                    eval_loss: r.get(9)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest step with a metric point (0 when none).
    pub fn max_metric_step(&self, job_id: &str) -> Result<u64> {
        let n: Option<i64> =
            self.lock()
                .query_row("SELECT MAX(step) FROM metrics WHERE job_id = ?1", [job_id], |r| r.get(0))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    pub fn metric_count(&self, job_id: &str) -> Result<u64> {
        let n: i64 =
            self.lock()
                .query_row("SELECT COUNT(*) FROM metrics WHERE job_id = ?1", [job_id], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Log lines with id greater than `after_id`, oldest first; `level` filters when given.
    pub fn logs(&self, job_id: &str, after_id: i64, limit: u32, level: Option<&str>) -> Result<Vec<LogLine>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, ts, level, source, message FROM logs WHERE job_id = ?1 AND id > ?2 \
             AND (?4 IS NULL OR level = ?4) ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![job_id, after_id, limit, level], |r| {
                Ok(LogLine {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    level: r.get(2)?,
                    source: r.get(3)?,
                    message: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Adds a line from the studio itself to a job's log.
    pub fn add_log(&self, job_id: &str, level: &str, message: &str) -> Result<()> {
        super::writes::write_log(&self.lock(), job_id, level, "studio", message, crate::time::now_ms())?;
        Ok(())
    }

    pub fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT job_id, step, path, loss, eval_loss, size_bytes, created_at FROM checkpoints WHERE job_id = ?1 ORDER BY step",
        )?;
        let rows = stmt.query_map([job_id], checkpoint_from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn checkpoint(&self, job_id: &str, step: u64) -> Result<Option<CheckpointRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT job_id, step, path, loss, eval_loss, size_bytes, created_at FROM checkpoints WHERE job_id = ?1 AND step = ?2",
        )?;
        Ok(stmt.query_row(params![job_id, step as i64], checkpoint_from_row).optional()?)
    }

    pub fn attempts(&self, job_id: &str) -> Result<Vec<Attempt>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT number, pid, resume, started_at, ended_at, exit_code, outcome FROM attempts WHERE job_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok(Attempt {
                    number: r.get::<_, i64>(0)?.max(0) as u32,
                    pid: r.get::<_, Option<i64>>(1)?.map(|p| p as u32),
                    resume: r.get::<_, i64>(2)? != 0,
                    started_at: r.get(3)?,
                    ended_at: r.get(4)?,
                    exit_code: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records how the newest attempt of a job ended.
    pub fn end_attempt(&self, job_id: &str, exit_code: Option<i32>, outcome: &str) -> Result<()> {
        super::writes::end_attempt(&self.lock(), job_id, exit_code, outcome, crate::time::now_ms())?;
        Ok(())
    }
}
