//! The console progress bar: one consumer of the engine's event stream. The time left is the
//! engine's `eta_s` (which counts the evaluations and checkpoints still to come), not the bar's
//! own rate estimate; the newest telemetry sample adds GPU (or process) memory to the message.

use finetune_engine::train::{TelemetrySample, TrainEvent};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    enabled: bool,
    /// Memory and utilisation from the newest telemetry sample, shown after the step metrics.
    device: String,
}

/// `1:02:03` or `2:03`.
pub fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m}:{s:02}") }
}

/// `GPU 41.2/79.6 GiB 97%` for the GPUs the run uses, else the process's resident memory.
pub fn describe_sample(s: &TelemetrySample) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let gpus: Vec<String> = s
        .gpus_in_use()
        .map(|g| {
            let mem = match (g.memory_used_bytes, g.memory_total_bytes) {
                (Some(u), Some(t)) => format!("{:.1}/{:.1} GiB", u as f64 / GIB, t as f64 / GIB),
                _ => "?".into(),
            };
            let util = g.utilization_percent.map(|u| format!(" {u:.0}%")).unwrap_or_default();
            format!("GPU{} {mem}{util}", g.index)
        })
        .collect();
    if gpus.is_empty() { format!("RSS {:.2} GiB", s.process_rss_bytes as f64 / GIB) } else { gpus.join(", ") }
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self { bar: None, enabled, device: String::new() }
    }

    pub fn on_event(&mut self, e: &TrainEvent) {
        if !self.enabled {
            return;
        }
        match e {
            TrainEvent::Started {
                total_steps,
                start_step,
                family,
                method,
                trainable_params,
                total_params,
                device,
                ..
            } => {
                eprintln!(
                    "training {family} with {method}: {trainable_params} trainable of {total_params} parameters on {device}"
                );
                let bar = ProgressBar::new(*total_steps);
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {prefix}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix("?");
                bar.set_position(*start_step);
                self.bar = Some(bar);
            }
            TrainEvent::Step { step, loss, tokens_per_s, lr, eta_s, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*step);
                    bar.set_prefix(format_duration(*eta_s));
                    let device =
                        if self.device.is_empty() { String::new() } else { format!("  {}", self.device) };
                    bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s{device}"));
                }
            }
            TrainEvent::Telemetry(s) => self.device = describe_sample(s),
            TrainEvent::Eval { step, eval_loss, perplexity, .. } => {
                self.println(format!("step {step}: eval loss {eval_loss:.4} (perplexity {perplexity:.2})"));
            }
            TrainEvent::Checkpoint { path, .. } => self.println(format!("checkpoint: {path}")),
            TrainEvent::Log { message, .. } => self.println(message.clone()),
            TrainEvent::Alert { message, suggestion, .. } => {
                self.println(format!("warning: {message} — {suggestion}"))
            }
            TrainEvent::Finished { .. } | TrainEvent::Failed { .. } => self.finish(),
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finetune_engine::train::GpuTelemetry;

    #[test]
    fn durations_and_samples_read_well() {
        assert_eq!(format_duration(59.6), "1:00");
        assert_eq!(format_duration(3725.0), "1:02:05");
        assert_eq!(format_duration(f64::NAN), "?");
        let mut s = TelemetrySample { process_rss_bytes: 3 << 29, ..Default::default() };
        assert_eq!(describe_sample(&s), "RSS 1.50 GiB");
        s.gpus.push(GpuTelemetry {
            index: 1,
            in_use: true,
            memory_used_bytes: Some(41 << 30),
            memory_total_bytes: Some(80 << 30),
            utilization_percent: Some(97.0),
            ..Default::default()
        });
        assert_eq!(describe_sample(&s), "GPU1 41.0/80.0 GiB 97%");
    }
}
