//! The two event vocabularies of the job layer.
//!
//! [`WorkerEvent`] is what a worker prints, one JSON object per line (the engine's `TrainEvent`
//! serialization: `{"event": "step", ...}`). It is parsed leniently from a `serde_json::Value`:
//! non-finite numbers arrive as `null` and unknown events are kept, so a newer engine never
//! breaks an older studio. [`LiveEvent`] is what the studio broadcasts after the store has
//! committed an event: the SSE endpoint forwards it as it is.

use crate::model::MetricPoint;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    Started {
        total_steps: u64,
        start_step: u64,
        epochs: f64,
        raw: Value,
    },
    Step {
        point: MetricPoint,
        total_steps: u64,
        eta_s: Option<f64>,
    },
    Eval {
        step: u64,
        eval_loss: Option<f64>,
        perplexity: Option<f64>,
    },
    Checkpoint {
        step: u64,
        path: String,
    },
    Log {
        level: String,
        message: String,
    },
    Alert {
        step: u64,
        kind: String,
        message: String,
        suggestion: String,
        /// `worker` (the engine's rules) or `studio` (a supervisor decision).
        source: &'static str,
    },
    /// A telemetry sample (the engine's `TelemetrySample`, kept as JSON): `ts_ms` and `step`
    /// are read out, the rest is stored and forwarded as it is.
    Telemetry {
        ts_ms: i64,
        step: u64,
        sample: Value,
    },
    Finished {
        status: String,
        step: u64,
        final_loss: Option<f64>,
        best_loss: Option<f64>,
        eval_loss: Option<f64>,
    },
    Failed {
        error: String,
    },
    Other(Value),
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl WorkerEvent {
    /// Parses one stdout line; `None` when it is not a JSON object with an `event` field.
    pub fn parse_line(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        v.get("event")?.as_str()?;
        Some(Self::from_value(v))
    }

    pub fn from_value(v: Value) -> Self {
        match v.get("event").and_then(Value::as_str).unwrap_or_default() {
            "started" => Self::Started {
                total_steps: u(&v, "total_steps"),
                start_step: u(&v, "start_step"),
                epochs: f(&v, "epochs").unwrap_or(0.0),
                raw: v,
            },
            "step" => {
                let mem = v.get("mem");
                let mem_bytes = mem.and_then(|m| {
                    m.get("device_used_bytes")
                        .and_then(Value::as_u64)
                        .or_else(|| m.get("process_rss_bytes")?.as_u64())
                });
                let point = MetricPoint {
                    step: u(&v, "step"),
                    epoch: f(&v, "epoch"),
                    loss: f(&v, "loss"),
                    lr: f(&v, "lr"),
                    grad_norm: f(&v, "grad_norm"),
                    tokens: v.get("tokens").and_then(Value::as_u64),
                    tokens_per_s: f(&v, "tokens_per_s"),
                    mem_bytes,
                    elapsed_s: f(&v, "elapsed_s"),
                    eval_loss: None,
                };
                Self::Step { point, total_steps: u(&v, "total_steps"), eta_s: f(&v, "eta_s") }
            }
            "eval" => Self::Eval {
                step: u(&v, "step"),
                eval_loss: f(&v, "eval_loss"),
                perplexity: f(&v, "perplexity"),
            },
            "checkpoint" => Self::Checkpoint { step: u(&v, "step"), path: s(&v, "path") },
            "log" => Self::Log { level: s(&v, "level"), message: s(&v, "message") },
            "alert" => Self::Alert {
                step: u(&v, "step"),
                kind: s(&v, "kind"),
                message: s(&v, "message"),
                suggestion: s(&v, "suggestion"),
                source: "worker",
            },
            "telemetry" => {
                let mut sample = v;
                if let Value::Object(m) = &mut sample {
                    m.remove("event");
                }
                Self::Telemetry {
                    ts_ms: sample.get("ts_ms").and_then(Value::as_i64).unwrap_or(0),
                    step: u(&sample, "step"),
                    sample,
                }
            }
            "finished" => Self::Finished {
                status: s(&v, "status"),
                step: u(&v, "step"),
                final_loss: f(&v, "final_loss"),
                best_loss: f(&v, "best_loss"),
                eval_loss: f(&v, "eval_loss"),
            },
            "failed" => Self::Failed { error: s(&v, "error") },
            _ => Self::Other(v),
        }
    }
}

impl WorkerEvent {
    /// The SSE event name, the step (for `step` events) and the payload listeners receive;
    /// `None` for events listeners do not need.
    pub fn live_payload(&self) -> Option<(&'static str, Option<u64>, Value)> {
        use serde_json::json;
        Some(match self {
            Self::Started { raw, .. } => ("started", None, raw.clone()),
            Self::Step { point, total_steps, eta_s } => {
                let mut data = serde_json::to_value(point).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut data {
                    m.insert("total_steps".into(), json!(total_steps));
                    m.insert("eta_s".into(), json!(eta_s));
                }
                ("step", Some(point.step), data)
            }
            Self::Eval { step, eval_loss, perplexity } => {
                ("eval", None, json!({"step": step, "eval_loss": eval_loss, "perplexity": perplexity}))
            }
            Self::Checkpoint { step, path } => ("checkpoint", None, json!({"step": step, "path": path})),
            Self::Log { level, message } => {
                ("log", None, json!({"level": level, "source": "worker", "message": message}))
            }
            Self::Alert { step, kind, message, suggestion, source } => (
                "alert",
                None,
                json!({"step": step, "kind": kind, "message": message, "suggestion": suggestion, "source": source}),
            ),
            Self::Telemetry { sample, .. } => ("telemetry", None, sample.clone()),
            Self::Finished { status, step, final_loss, best_loss, eval_loss } => (
                "finished",
                None,
                json!({"status": status, "step": step, "final_loss": final_loss, "best_loss": best_loss, "eval_loss": eval_loss}),
            ),
            Self::Failed { error } => ("failed", None, json!({"error": error})),
            Self::Other(_) => return None,
        })
    }
}

/// An event as listeners see it: `kind` is the SSE event name (`step`, `eval`, `checkpoint`,
/// `log`, `alert`, `telemetry`, `started`, `finished`, `status`), `data` its JSON payload.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub job_id: Arc<str>,
    pub kind: &'static str,
    /// The optimizer step for `step` events (the SSE id; `?after_step` resumes after it).
    pub step: Option<u64>,
    pub data: Value,
    /// When the event was committed (Unix ms); lets benchmarks measure delivery latency.
    pub committed_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_events_with_non_finite_numbers() {
        let line = r#"{"event":"step","step":3,"total_steps":10,"epoch":0.3,"loss":1.5,"lr":0.001,"grad_norm":null,"tokens":64,"tokens_per_s":1000.0,"elapsed_s":0.5,"eta_s":1.0,"mem":{"base_bytes":1,"trainable_bytes":2,"optimizer_bytes":3,"process_rss_bytes":4096,"process_peak_bytes":5000}}"#;
        let Some(WorkerEvent::Step { point: p, total_steps, eta_s }) = WorkerEvent::parse_line(line) else {
            panic!("not a step")
        };
        assert_eq!((total_steps, eta_s), (10, Some(1.0)));
        assert_eq!(p.step, 3);
        assert_eq!(p.loss, Some(1.5));
        assert_eq!(p.grad_norm, None);
        assert_eq!(p.mem_bytes, Some(4096));
        let fin = WorkerEvent::parse_line(
            r#"{"event":"finished","step":0,"final_loss":null,"best_loss":null,"eval_loss":null,"output_dir":"o","elapsed_s":0,"tokens":0,"status":"paused"}"#,
        );
        assert!(
            matches!(fin, Some(WorkerEvent::Finished { ref status, best_loss: None, .. }) if status == "paused")
        );
        assert_eq!(WorkerEvent::parse_line("warming up"), None);
        assert_eq!(WorkerEvent::parse_line("[1,2]"), None);
        assert!(matches!(
            WorkerEvent::parse_line(r#"{"event":"sample","text":"x"}"#),
            Some(WorkerEvent::Other(_))
        ));
    }
}
