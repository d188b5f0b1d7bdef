//! The catalog: datasets (uploaded into the data dir or registered where they are) and model
//! folders the user registered.

use super::Store;
use crate::error::Result;
use crate::ids;
use crate::model::{DatasetRecord, ModelRecord};
use crate::time::now_ms;
use rusqlite::{OptionalExtension, Row, params};

fn dataset_from_row(r: &Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        path: r.get(2)?,
        size_bytes: r.get::<_, i64>(3)?.max(0) as u64,
        uploaded: r.get::<_, i64>(4)? != 0,
        created_at: r.get(5)?,
    })
}

fn model_from_row(r: &Row<'_>) -> rusqlite::Result<ModelRecord> {
    Ok(ModelRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        path: r.get(2)?,
        family: r.get(3)?,
        created_at: r.get(4)?,
    })
}

impl Store {
    /// Records a dataset; `id` is chosen by the caller when the file already lives under it.
    pub fn add_dataset(
        &self,
        id: Option<&str>,
        name: &str,
        path: &str,
        size_bytes: u64,
        uploaded: bool,
    ) -> Result<DatasetRecord> {
        let id = id.map(str::to_string).unwrap_or_else(|| ids::new_id("ds"));
        let rec = DatasetRecord {
            id,
            name: name.to_string(),
            path: path.to_string(),
            size_bytes,
            uploaded,
            created_at: now_ms(),
        };
        self.lock()
            .prepare_cached(
                "INSERT INTO datasets (id, name, path, size_bytes, uploaded, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![rec.id, rec.name, rec.path, rec.size_bytes as i64, uploaded as i64, rec.created_at])?;
        Ok(rec)
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, path, size_bytes, uploaded, created_at FROM datasets ORDER BY created_at DESC, id",
        )?;
        let rows = stmt.query_map([], dataset_from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn dataset(&self, id: &str) -> Result<Option<DatasetRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, path, size_bytes, uploaded, created_at FROM datasets WHERE id = ?1",
        )?;
        Ok(stmt.query_row([id], dataset_from_row).optional()?)
    }

    pub fn delete_dataset(&self, id: &str) -> Result<bool> {
        Ok(self.lock().prepare_cached("DELETE FROM datasets WHERE id = ?1")?.execute([id])? > 0)
    }

    /// Registers a model folder (again: registering the same path updates its name and family).
    pub fn add_model(&self, name: &str, path: &str, family: Option<&str>) -> Result<ModelRecord> {
        let id = ids::new_id("model");
        let conn = self.lock();
        conn.prepare_cached(
            "INSERT INTO models (id, name, path, family, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (path) DO UPDATE SET name = excluded.name, family = excluded.family",
        )?
        .execute(params![id, name, path, family, now_ms()])?;
        let mut stmt =
            conn.prepare_cached("SELECT id, name, path, family, created_at FROM models WHERE path = ?1")?;
        Ok(stmt.query_row([path], model_from_row)?)
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, path, family, created_at FROM models ORDER BY created_at DESC, id",
        )?;
        let rows = stmt.query_map([], model_from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn model(&self, id: &str) -> Result<Option<ModelRecord>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT id, name, path, family, created_at FROM models WHERE id = ?1")?;
        Ok(stmt.query_row([id], model_from_row).optional()?)
    }

    pub fn delete_model(&self, id: &str) -> Result<bool> {
        Ok(self.lock().prepare_cached("DELETE FROM models WHERE id = ?1")?.execute([id])? > 0)
    }
}
