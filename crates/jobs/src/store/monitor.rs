//! What the training monitor reads back: a job's alerts, the newest alerts across jobs (the
//! dashboard), and a job's telemetry samples in time order (keyset paging on `ts`).

use super::Store;
use crate::error::Result;
use crate::model::{AlertRecord, TelemetryRecord};
use rusqlite::{Row, params};

fn alert_from_row(r: &Row<'_>) -> rusqlite::Result<AlertRecord> {
    Ok(AlertRecord {
        id: r.get(0)?,
        job_id: r.get(1)?,
        job_name: r.get(2)?,
        ts: r.get(3)?,
        step: r.get::<_, i64>(4)?.max(0) as u64,
        kind: r.get(5)?,
        message: r.get(6)?,
        suggestion: r.get(7)?,
        source: r.get(8)?,
    })
}

const ALERT_COLUMNS: &str = "a.id, a.job_id, j.name, a.ts, a.step, a.kind, a.message, a.suggestion, a.source";

impl Store {
    /// A job's alerts, oldest first.
    pub fn alerts(&self, job_id: &str) -> Result<Vec<AlertRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN jobs j ON j.id = a.job_id WHERE a.job_id = ?1 ORDER BY a.id"
        ))?;
        let rows = stmt.query_map([job_id], alert_from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest `limit` alerts of every job, newest first.
    pub fn recent_alerts(&self, limit: u32) -> Result<Vec<AlertRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN jobs j ON j.id = a.job_id ORDER BY a.id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], alert_from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A job's telemetry samples taken after `after_ts` (Unix ms), oldest first, at most `limit`.
    pub fn telemetry(&self, job_id: &str, after_ts: i64, limit: u32) -> Result<Vec<TelemetryRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT ts, step, sample FROM telemetry WHERE job_id = ?1 AND ts > ?2 ORDER BY ts LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![job_id, after_ts, limit], |r| {
                let text: String = r.get(2)?;
                Ok(TelemetryRecord {
                    ts: r.get(0)?,
                    step: r.get::<_, i64>(1)?.max(0) as u64,
                    // Written by the studio from parsed JSON: a row that does not parse is kept
                    // out of sight rather than failing the whole history.
                    sample: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows.into_iter().filter(|t| !t.sample.is_null()).collect())
    }
}
