//! A job's metric history as files other tools read: a wide CSV (one row per optimizer step:
//! the columns of the metrics API) and MLflow's metric JSON (`{"metrics": [{"key", "value",
//! "timestamp", "step"}]}`, the body of MLflow's `runs/log-batch`), so a run can be loaded into
//! a spreadsheet, pandas or an MLflow server.

use crate::report::RunRecord;
use serde_json::json;

pub const CSV_COLUMNS: [&str; 9] =
    ["step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mem_bytes"];

fn cell<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// One row per step; empty cells where a value was not recorded (or was not finite).
pub fn csv(run: &RunRecord) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for p in &run.points {
        let f = |v: Option<f64>| cell(v.filter(|x| x.is_finite()));
        let row = [
            p.step.to_string(),
            f(p.epoch),
            f(p.loss),
            f(p.eval_loss),
            f(p.lr),
            f(p.grad_norm),
            cell(p.tokens),
            f(p.tokens_per_s),
            cell(p.mem_bytes),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// MLflow's metric list. A step's timestamp is the job's start plus the step's elapsed time
/// (the time of the attempt that recorded it).
pub fn mlflow_json(run: &RunRecord) -> serde_json::Value {
    let start = run.job.started_at.unwrap_or(run.job.created_at);
    let mut metrics = Vec::new();
    for p in &run.points {
        let ts = start + (p.elapsed_s.unwrap_or(0.0) * 1000.0) as i64;
        let values = [
            ("loss", p.loss),
            ("eval_loss", p.eval_loss),
            ("learning_rate", p.lr),
            ("grad_norm", p.grad_norm),
            ("tokens_per_s", p.tokens_per_s),
            ("mem_bytes", p.mem_bytes.map(|b| b as f64)),
        ];
        for (key, v) in values {
            if let Some(v) = v.filter(|x| x.is_finite()) {
                metrics.push(json!({"key": key, "value": v, "timestamp": ts, "step": p.step}));
            }
        }
    }
    json!({ "metrics": metrics })
}
