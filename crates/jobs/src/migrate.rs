//! Schema migrations: `migrations/NNNN_name.sql`, embedded at build time and applied in order on
//! open, each in its own transaction, with `PRAGMA user_version` recording the last one applied.
//! Opening an older database upgrades it; a newer one is refused rather than misread.

use crate::error::{JobsError, Result};
use rusqlite::Connection;

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    ("0002_publish_and_restarts", include_str!("../migrations/0002_publish_and_restarts.sql")),
    ("0003_backoff_and_faults", include_str!("../migrations/0003_backoff_and_faults.sql")),
    ("0004_monitor", include_str!("../migrations/0004_monitor.sql")),
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Applies the migrations after the database's version, up to `target`.
pub fn migrate_to(conn: &mut Connection, target: i64) -> Result<()> {
    let current = version(conn)?;
    if current > LATEST {
        return Err(JobsError::TooNew { found: current, supported: LATEST });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let v = i as i64 + 1;
        if v <= current || v > target {
            continue;
        }
        let fail = |source| JobsError::Migration { version: v, name, source };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", v).map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(())
}
