//! The SQL behind each write the supervisor makes: one status transition, one worker event, one
//! log line. Called inside a transaction; statements are prepared once and cached, so a batch of
//! thousands of step events costs one commit.

use crate::events::WorkerEvent;
use crate::model::Transition;
use rusqlite::{Connection, params};
use std::path::Path;

pub(super) fn apply_transition(c: &Connection, id: &str, to: &Transition, now: i64) -> rusqlite::Result<()> {
    match to {
        Transition::Running { attempt, pid, resume } => {
            c.prepare_cached(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?2), finished_at = NULL, \
                 error_message = NULL, resume_next = 0, updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            c.prepare_cached(
                "INSERT INTO attempts (job_id, number, pid, resume, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, attempt, pid, *resume as i64, now])?;
        }
        Transition::Pending { resume, restart } => {
            c.prepare_cached(
                "UPDATE jobs SET status = 'pending', resume_next = ?2, restarts = restarts + ?3, finished_at = NULL, \
                 error_message = NULL, updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, *resume as i64, *restart as i64, now])?;
        }
        Transition::Paused => set_status(c, id, "paused", None, false, now)?,
        Transition::Completed => set_status(c, id, "completed", None, true, now)?,
        Transition::Cancelled => set_status(c, id, "cancelled", None, true, now)?,
        Transition::Failed { error } => set_status(c, id, "failed", Some(error), true, now)?,
        Transition::Interrupted { reason } => set_status(c, id, "interrupted", Some(reason), false, now)?,
    }
    Ok(())
}

fn set_status(
    c: &Connection,
    id: &str,
    status: &str,
    error: Option<&str>,
    finished: bool,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE jobs SET status = ?2, error_message = COALESCE(?3, error_message), \
         finished_at = CASE WHEN ?4 THEN ?5 ELSE finished_at END, updated_at = ?5 WHERE id = ?1",
    )?
    .execute(params![id, status, error, finished, now])?;
    Ok(())
}

/// Records the end of the newest attempt of a job.
pub(crate) fn end_attempt(
    c: &Connection,
    id: &str,
    exit_code: Option<i32>,
    outcome: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE attempts SET ended_at = ?2, exit_code = ?3, outcome = ?4 \
         WHERE id = (SELECT MAX(id) FROM attempts WHERE job_id = ?1)",
    )?
    .execute(params![id, now, exit_code, outcome])?;
    Ok(())
}

pub(crate) fn write_log(
    c: &Connection,
    id: &str,
    level: &str,
    source: &str,
    message: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO logs (job_id, ts, level, source, message) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, now, level, source, message])?;
    Ok(())
}

/// Applies one worker event. `checkpoint_size` is the size of a checkpoint folder, measured by
/// the caller outside the database lock.
pub(crate) fn write_event(
    c: &Connection,
    id: &str,
    ev: &WorkerEvent,
    checkpoint_size: Option<u64>,
    now: i64,
) -> rusqlite::Result<()> {
    match ev {
        WorkerEvent::Started { total_steps, start_step, epochs, raw } => {
            c.prepare_cached(
                "UPDATE jobs SET total_steps = ?2, current_step = ?3, total_epochs = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, *total_steps as i64, *start_step as i64, epochs, now])?;
            // A resumed run redoes every step after its checkpoint: forget what the last attempt
            // recorded past it, so the history has one point per step.
            c.prepare_cached("DELETE FROM metrics WHERE job_id = ?1 AND step > ?2")?
                .execute(params![id, *start_step as i64])?;
            c.prepare_cached("DELETE FROM eval_metrics WHERE job_id = ?1 AND step > ?2")?
                .execute(params![id, *start_step as i64])?;
            let text = |k: &str| raw.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
            let num = |k: &str| raw.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let msg = format!(
                "started {} on {} ({}, {}): {} trainable of {} parameters, {} train / {} eval examples, steps {}..{}",
                text("method"),
                text("family"),
                text("device"),
                text("dtype"),
                num("trainable_params"),
                num("total_params"),
                num("train_examples"),
                num("eval_examples"),
                start_step,
                total_steps
            );
            write_log(c, id, "info", "worker", &msg, now)?;
        }
        WorkerEvent::Step { point: p, total_steps, eta_s } => {
            c.prepare_cached(
                "INSERT OR REPLACE INTO metrics (job_id, step, epoch, loss, lr, grad_norm, tokens, tokens_per_s, \
                 mem_bytes, elapsed_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id,
                p.step as i64,
                p.epoch,
                p.loss,
                p.lr,
                p.grad_norm,
                p.tokens.map(|t| t as i64),
                p.tokens_per_s,
                p.mem_bytes.map(|m| m as i64),
                p.elapsed_s
            ])?;
            c.prepare_cached(
                "UPDATE jobs SET current_step = ?2, total_steps = MAX(total_steps, ?3), current_epoch = COALESCE(?4, current_epoch), \
                 current_loss = ?5, best_loss = CASE WHEN ?5 IS NULL THEN best_loss ELSE MIN(COALESCE(best_loss, ?5), ?5) END, \
                 tokens = tokens + COALESCE(?6, 0), tokens_per_s = ?7, elapsed_s = ?8, eta_s = ?9, updated_at = ?10 WHERE id = ?1",
            )?
            .execute(params![
                id,
                p.step as i64,
                *total_steps as i64,
                p.epoch,
                p.loss,
                p.tokens.map(|t| t as i64),
                p.tokens_per_s,
                p.elapsed_s,
                eta_s,
                now
            ])?;
        }
        WorkerEvent::Eval { step, eval_loss, perplexity } => {
            c.prepare_cached(
                "INSERT OR REPLACE INTO eval_metrics (job_id, step, eval_loss, perplexity) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, *step as i64, eval_loss, perplexity])?;
            c.prepare_cached("UPDATE jobs SET eval_loss = ?2, updated_at = ?3 WHERE id = ?1")?
                .execute(params![id, eval_loss, now])?;
        }
        WorkerEvent::Checkpoint { step, path } => {
            let s = *step as i64;
            c.prepare_cached(
                "INSERT OR REPLACE INTO checkpoints (job_id, step, path, loss, eval_loss, size_bytes, created_at) VALUES \
                 (?1, ?2, ?3, (SELECT loss FROM metrics WHERE job_id = ?1 AND step = ?2), \
                 (SELECT eval_loss FROM eval_metrics WHERE job_id = ?1 AND step = ?2), ?4, ?5)",
            )?
            .execute(params![id, s, path, checkpoint_size.map(|b| b as i64), now])?;
            // The engine keeps only the newest `keep_last` folders: forget those it deleted.
            let mut stmt =
                c.prepare_cached("SELECT step, path FROM checkpoints WHERE job_id = ?1 AND step < ?2")?;
            let older: Vec<(i64, String)> =
                stmt.query_map(params![id, s], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            for (old, p) in older {
                if !Path::new(&p).exists() {
                    c.prepare_cached("DELETE FROM checkpoints WHERE job_id = ?1 AND step = ?2")?
                        .execute(params![id, old])?;
                }
            }
            write_log(c, id, "info", "worker", &format!("checkpoint at step {step}: {path}"), now)?;
        }
        WorkerEvent::Log { level, message } => {
            write_log(c, id, if level.is_empty() { "info" } else { level }, "worker", message, now)?;
        }
        WorkerEvent::Alert { step, kind, message, suggestion, source } => {
            c.prepare_cached(
                "INSERT INTO alerts (job_id, ts, step, kind, message, suggestion, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, now, *step as i64, kind, message, suggestion, source])?;
            let msg = format!("step {step}: {kind}: {message} ({suggestion})");
            write_log(c, id, "warn", source, &msg, now)?;
        }
        WorkerEvent::Telemetry { ts_ms, step, sample } => {
            // Keyed by time: a sample repeated by crash recovery (the events file) replaces itself.
            let ts = if *ts_ms > 0 { *ts_ms } else { now };
            c.prepare_cached(
                "INSERT OR REPLACE INTO telemetry (job_id, ts, step, sample) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, ts, *step as i64, sample.to_string()])?;
        }
        WorkerEvent::Finished { status, step, final_loss, best_loss, eval_loss } => {
            c.prepare_cached(
                "UPDATE jobs SET current_step = ?2, current_loss = COALESCE(?3, current_loss), \
                 best_loss = COALESCE(?4, best_loss), eval_loss = COALESCE(?5, eval_loss), updated_at = ?6 WHERE id = ?1",
            )?
            .execute(params![id, *step as i64, final_loss, best_loss, eval_loss, now])?;
            write_log(c, id, "info", "worker", &format!("finished ({status}) at step {step}"), now)?;
        }
        WorkerEvent::Failed { error } => {
            c.prepare_cached("UPDATE jobs SET error_message = ?2, updated_at = ?3 WHERE id = ?1")?
                .execute(params![id, error, now])?;
            write_log(c, id, "error", "worker", error, now)?;
        }
        WorkerEvent::Other(_) => {}
    }
    Ok(())
}

/// Bytes in the files under `dir` (0 when it cannot be read).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
