//! Helpers for tests and fixture builders: raw SQL against a store, and setting the schema
//! version of a database file. Not used by the studio itself.

use super::Store;
use crate::error::Result;
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
