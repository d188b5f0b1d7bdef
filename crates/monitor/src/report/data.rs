//! Everything a report says about a job, read from the store in one place: the job row, its
//! metric history (with eval losses), alerts, telemetry samples and attempts.

use finetune_jobs::{AlertRecord, Attempt, Job, MetricPoint, Store, TelemetryRecord};

/// One job's history as the report and the exports see it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub job: Job,
    pub points: Vec<MetricPoint>,
    pub alerts: Vec<AlertRecord>,
    pub telemetry: Vec<TelemetryRecord>,
    pub attempts: Vec<Attempt>,
}

/// The most rows a report reads of each history (a year-long run at one sample every two
/// seconds is far more than a chart can show).
const MAX_ROWS: u32 = 2_000_000;

impl RunRecord {
    pub fn load(store: &Store, job_id: &str) -> finetune_jobs::Result<Self> {
        let job = store.require_job(job_id)?;
        Ok(Self {
            points: store.metrics(job_id, 0, MAX_ROWS)?,
            alerts: store.alerts(job_id)?,
            telemetry: store.telemetry(job_id, 0, MAX_ROWS)?,
            attempts: store.attempts(job_id)?,
            job,
        })
    }

    /// `(step, eval loss)` of every evaluation.
    pub fn evals(&self) -> Vec<(u64, f64)> {
        self.points.iter().filter_map(|p| Some((p.step, p.eval_loss?))).collect()
    }

    /// `(step, GiB)` of the memory the run used: the GPU's process memory (or used memory) when
    /// telemetry saw a GPU in use, else the metric points' memory (device or resident bytes).
    pub fn memory_gib(&self) -> (&'static str, Vec<(u64, f64)>) {
        const GIB: f64 = (1u64 << 30) as f64;
        let gpu: Vec<(u64, f64)> = self
            .telemetry
            .iter()
            .filter_map(|t| {
                let g = t.sample.get("gpus")?.as_array()?.iter().find(|g| g["in_use"] == true)?;
                let b = g["process_memory_bytes"].as_u64().or_else(|| g["memory_used_bytes"].as_u64())?;
                Some((t.step, b as f64 / GIB))
            })
            .collect();
        if !gpu.is_empty() {
            return ("GPU memory (GiB)", gpu);
        }
        let points = self.points.iter().filter_map(|p| Some((p.step, p.mem_bytes? as f64 / GIB))).collect();
        ("memory (GiB)", points)
    }

    /// The median of the finite values (None when there are none).
    pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// GPU names with their memory, and the machine's memory, from the telemetry samples.
    pub fn hardware(&self) -> Vec<String> {
        const GIB: f64 = (1u64 << 30) as f64;
        let Some(last) = self.telemetry.last() else { return Vec::new() };
        let mut out = Vec::new();
        for g in last.sample["gpus"].as_array().into_iter().flatten() {
            let mem = g["memory_total_bytes"].as_u64().map(|b| format!(", {:.1} GiB", b as f64 / GIB));
            let used = if g["in_use"] == true { " (used by this run)" } else { "" };
            out.push(format!(
                "GPU {}: {}{}{used}",
                g["index"],
                g["name"].as_str().unwrap_or("?"),
                mem.unwrap_or_default()
            ));
        }
        if let Some(status) = last.sample["gpu_status"].as_str().filter(|s| *s != "ok") {
            out.push(format!("GPU telemetry {status}"));
        }
        if let Some(total) = last.sample["system_memory_total_bytes"].as_u64().filter(|b| *b > 0) {
            out.push(format!("system memory: {:.1} GiB", total as f64 / GIB));
        }
        out
    }
}
