//! Warn-only anomaly rules over the event stream: a rising loss (divergence), a loss that stopped
//! improving (plateau), an exploding gradient norm, memory close to the device's limit and a
//! throughput collapse. Each is a pure rule over [`TrainEvent`]s, so it is tested with synthetic
//! streams and runs wherever the stream is consumed (the worker and the CLI wrap their sink with
//! [`AlertingSink`]; telemetry samples only exist there).
//!
//! The three anomalies that must stop a bad update from reaching the weights (a non-finite loss
//! or gradient, a loss spike) are judged by the trainer's [`super::recovery::LossGuard`] before the
//! update, which rolls back and raises `nan_loss`/`nan_gradient`/`loss_spike` followed by
//! `recovered`. The rules here only warn: a false divergence or plateau that rolled back would
//! cost a user more than the warning is worth (a run that rolls back five times fails).
//!
//! Every rule fires once and re-arms only after the condition has clearly cleared (hysteresis),
//! so a long plateau or a full GPU is one alert, not one per step.

use super::events::{EventSink, TelemetrySample, TrainEvent};
use super::recovery::{median, robust_stats};
use std::collections::VecDeque;

/// The alert kinds raised here.
pub const DIVERGENCE: &str = "divergence";
pub const PLATEAU: &str = "plateau";
pub const EXPLODING_GRADIENT: &str = "exploding_gradient";
pub const MEMORY_PRESSURE: &str = "memory_pressure";
pub const THROUGHPUT_DROP: &str = "throughput_drop";

/// One alert a rule raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub step: u64,
    pub kind: &'static str,
    pub message: String,
    pub suggestion: String,
}

impl Anomaly {
    pub fn to_event(&self) -> TrainEvent {
        TrainEvent::Alert {
            step: self.step,
            kind: self.kind.into(),
            message: self.message.clone(),
            suggestion: self.suggestion.clone(),
        }
    }
}

/// The rules' thresholds. The defaults were chosen so that a normal noisy curve never fires
/// (see the tests) while each synthetic failure does within a window.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Steps in the rolling median of the loss.
    pub window: usize,
    /// Divergence: the rolling median this fraction above its best ...
    pub divergence_rise: f64,
    /// ... and this many robust deviations of the window above it.
    pub divergence_z: f64,
    /// Plateau: steps without a new low of the loss's rolling median (over half as many steps)
    /// by `plateau_min_improvement` of its level, or by two standard errors of that median when
    /// the noise is larger (smaller changes cannot be told from noise); 0 picks a quarter of the
    /// run, between 100 and 1000 steps.
    pub plateau_steps: u64,
    pub plateau_min_improvement: f64,
    /// Exploding gradient: a norm this many times the recent median (and far outside its spread).
    pub grad_factor: f64,
    pub grad_window: usize,
    pub grad_warmup: usize,
    /// Steps between two exploding-gradient alerts.
    pub grad_cooldown: u64,
    /// Memory pressure: fraction of a GPU's memory, or of system memory when no GPU is used.
    pub gpu_memory_fraction: f64,
    pub system_memory_fraction: f64,
    /// Throughput collapse: the median of the recent steps below this fraction of the median
    /// of up to `throughput_window` steps before them. The recent steps are at least
    /// `throughput_recent` and span at least `throughput_min_seconds` of the run, so a second of
    /// hiccups in a run of 20 ms steps (a checkpoint, a page-cache flush) is not a collapse.
    pub throughput_fraction: f64,
    pub throughput_recent: usize,
    pub throughput_window: usize,
    pub throughput_min_seconds: f64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            window: 16,
            divergence_rise: 0.25,
            divergence_z: 4.0,
            plateau_steps: 0,
            plateau_min_improvement: 0.01,
            grad_factor: 10.0,
            grad_window: 32,
            grad_warmup: 16,
            grad_cooldown: 50,
            gpu_memory_fraction: 0.95,
            system_memory_fraction: 0.92,
            throughput_fraction: 0.4,
            throughput_recent: 5,
            throughput_window: 40,
            throughput_min_seconds: 10.0,
        }
    }
}

/// The state of every rule.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: RuleConfig,
    total_steps: u64,
    losses: VecDeque<f64>,
    /// The longer history the plateau rule looks at.
    plateau_losses: VecDeque<f64>,
    seen: usize,
    best_median: f64,
    best_step: u64,
    plateau_ref: f64,
    plateau_ref_step: u64,
    diverging: bool,
    plateaued: bool,
    log_grads: VecDeque<f64>,
    last_grad_alert: Option<u64>,
    /// `(elapsed seconds, tokens/s)` of the newest steps.
    throughput: VecDeque<(f64, f64)>,
    throughput_low: bool,
    gpu_memory_high: bool,
    system_memory_high: bool,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(RuleConfig::default())
    }
}

const GIB: f64 = (1u64 << 30) as f64;

impl Detector {
    pub fn new(cfg: RuleConfig) -> Self {
        Self {
            cfg,
            total_steps: 0,
            losses: VecDeque::new(),
            plateau_losses: VecDeque::new(),
            seen: 0,
            best_median: f64::INFINITY,
            best_step: 0,
            plateau_ref: f64::INFINITY,
            plateau_ref_step: 0,
            diverging: false,
            plateaued: false,
            log_grads: VecDeque::new(),
            last_grad_alert: None,
            throughput: VecDeque::new(),
            throughput_low: false,
            gpu_memory_high: false,
            system_memory_high: false,
        }
    }

    /// Forgets the loss history (after a rollback the weights are older).
    fn reset_loss(&mut self) {
        self.losses.clear();
        self.plateau_losses.clear();
        self.seen = 0;
        self.best_median = f64::INFINITY;
        self.plateau_ref = f64::INFINITY;
        self.diverging = false;
        self.plateaued = false;
    }

    /// Judges one event; returns the alerts it raises (usually none).
    pub fn observe(&mut self, event: &TrainEvent) -> Vec<Anomaly> {
        let mut out = Vec::new();
        match event {
            TrainEvent::Started { total_steps, .. } => {
                // A new attempt: other weights, other caches, maybe another micro-batch.
                self.total_steps = *total_steps;
                self.reset_loss();
                self.log_grads.clear();
                self.throughput.clear();
                self.throughput_low = false;
            }
            TrainEvent::Alert { kind, .. } if kind == "recovered" => self.reset_loss(),
            TrainEvent::Step { step, total_steps, loss, grad_norm, tokens_per_s, elapsed_s, .. } => {
                self.total_steps = (*total_steps).max(self.total_steps);
                self.loss_rules(*step, *loss, &mut out);
                self.grad_rule(*step, *grad_norm, &mut out);
                self.throughput_rule(*step, *elapsed_s, *tokens_per_s, &mut out);
            }
            TrainEvent::Telemetry(s) => self.memory_rule(s, &mut out),
            _ => {}
        }
        out
    }

    fn plateau_steps(&self) -> u64 {
        if self.cfg.plateau_steps > 0 {
            return self.cfg.plateau_steps;
        }
        (self.total_steps / 4).clamp(100, 1000)
    }

    fn loss_rules(&mut self, step: u64, loss: f64, out: &mut Vec<Anomaly>) {
        if !loss.is_finite() {
            return; // the trainer's guard rolls these back
        }
        let w = self.cfg.window.max(3);
        if self.losses.len() == w {
            self.losses.pop_front();
        }
        self.losses.push_back(loss);
        self.seen += 1;
        if self.losses.len() < w {
            return;
        }
        let (m, spread) = robust_stats(self.losses.iter().copied());
        if m < self.best_median {
            self.best_median = m;
            self.best_step = step;
        }
        let patience = self.plateau_steps();
        let pw = (patience as usize / 2).max(w);
        while self.plateau_losses.len() >= pw {
            self.plateau_losses.pop_front();
        }
        self.plateau_losses.push_back(loss);
        let (mut needed, mut pm) = (f64::NAN, f64::NAN);
        if self.plateau_losses.len() == pw {
            let ps;
            (pm, ps) = robust_stats(self.plateau_losses.iter().copied());
            // The standard error of a median is about 1.25 σ / √n.
            needed =
                (self.cfg.plateau_min_improvement * pm.abs()).max(2.0 * 1.2533 * ps / (pw as f64).sqrt());
            if !self.plateau_ref.is_finite() || pm < self.plateau_ref - needed {
                self.plateau_ref = pm;
                self.plateau_ref_step = step;
                self.plateaued = false;
            }
        }
        let best = self.best_median;
        let margin = (self.cfg.divergence_rise * best.abs()).max(self.cfg.divergence_z * spread);
        if self.diverging && m < best + 0.5 * margin {
            self.diverging = false;
        } else if !self.diverging && self.seen >= 2 * w && m > best + margin {
            self.diverging = true;
            out.push(Anomaly {
                step,
                kind: DIVERGENCE,
                message: format!(
                    "the loss is rising: its median over the last {w} steps is {m:.4}, up {:.0}% from its best of {best:.4} at step {}",
                    100.0 * (m - best) / best.abs().max(1e-12),
                    self.best_step
                ),
                suggestion: "lower train.lr (halve it) or raise train.warmup_steps; if it keeps rising, pause and restore an earlier checkpoint".into(),
            });
        }
        if !self.plateaued
            && !self.diverging
            && self.plateau_ref.is_finite()
            && step >= self.plateau_ref_step + patience
        {
            self.plateaued = true;
            out.push(Anomaly {
                step,
                kind: PLATEAU,
                message: format!(
                    "the loss has not improved by more than {:.1}% in {} steps (median {pm:.4} over the last {pw} steps; {:.4} at step {})",
                    100.0 * needed / self.plateau_ref.abs().max(1e-12),
                    step - self.plateau_ref_step,
                    self.plateau_ref,
                    self.plateau_ref_step
                ),
                suggestion: "the model may have learned what this data teaches: stopping now loses little (checkpoints are kept); a higher train.lr or more varied data may help".into(),
            });
        }
    }

    fn grad_rule(&mut self, step: u64, grad_norm: f64, out: &mut Vec<Anomaly>) {
        if !(grad_norm.is_finite() && grad_norm > 0.0) {
            return;
        }
        let lg = grad_norm.ln();
        if self.log_grads.len() >= self.cfg.grad_warmup {
            let (med, spread) = robust_stats(self.log_grads.iter().copied());
            let cooled = self.last_grad_alert.is_none_or(|s| step >= s + self.cfg.grad_cooldown);
            if cooled && lg - med > self.cfg.grad_factor.ln() && (lg - med) / spread > 6.0 {
                self.last_grad_alert = Some(step);
                let typical = med.exp();
                out.push(Anomaly {
                    step,
                    kind: EXPLODING_GRADIENT,
                    message: format!(
                        "the gradient norm jumped to {grad_norm:.3}, {:.0}x its recent median of {typical:.3} (it was clipped to train.max_grad_norm)",
                        grad_norm / typical
                    ),
                    suggestion: "one odd batch can do this; if it repeats, lower train.lr, keep train.max_grad_norm at 1.0 or below, and look for very long or malformed examples".into(),
                });
            }
        }
        if self.log_grads.len() == self.cfg.grad_window.max(2) {
            self.log_grads.pop_front();
        }
        self.log_grads.push_back(lg);
    }

    fn throughput_rule(&mut self, step: u64, elapsed_s: f64, tokens_per_s: f64, out: &mut Vec<Anomaly>) {
        /// Steps kept: enough for the recent span of fast runs (10 s of 5 ms steps).
        const KEEP: usize = 4096;
        if !(tokens_per_s.is_finite() && tokens_per_s > 0.0) {
            return;
        }
        if self.throughput.len() == KEEP {
            self.throughput.pop_front();
        }
        self.throughput.push_back((elapsed_s, tokens_per_s));
        let n = self.throughput.len();
        // The recent window: the newest steps back to `throughput_min_seconds` before the last.
        let min_recent = self.cfg.throughput_recent.max(1);
        let Some(&(last_t, _)) = self.throughput.back() else { return };
        let spanned = |i: usize| last_t - self.throughput[n - 1 - i].0 >= self.cfg.throughput_min_seconds;
        let Some(recent) = (min_recent..n).find(|&r| spanned(r)) else { return };
        if n - recent < 10 {
            return;
        }
        let first = (n - recent).saturating_sub(self.cfg.throughput_window.max(10));
        let mut before: Vec<f64> = self.throughput.range(first..n - recent).map(|p| p.1).collect();
        let mut last: Vec<f64> = self.throughput.range(n - recent..).map(|p| p.1).collect();
        let (base, now) = (median(&mut before), median(&mut last));
        if self.throughput_low && now > 0.7 * base {
            self.throughput_low = false;
        } else if !self.throughput_low && now < self.cfg.throughput_fraction * base {
            self.throughput_low = true;
            out.push(Anomaly {
                step,
                kind: THROUGHPUT_DROP,
                message: format!(
                    "training slowed to {now:.0} tokens/s over the last {recent} steps, from {base:.0} before ({:.0}% slower)",
                    100.0 * (1.0 - now / base)
                ),
                suggestion: "another program may be using the GPU or CPU, the machine may be swapping or throttling for heat: check the device panel (memory, temperature, utilisation)".into(),
            });
        }
    }

    fn memory_rule(&mut self, s: &TelemetrySample, out: &mut Vec<Anomaly>) {
        let mut any_gpu = false;
        let mut worst: Option<(f64, String)> = None;
        for g in s.gpus_in_use() {
            any_gpu = true;
            let (Some(used), Some(total)) = (g.memory_used_bytes, g.memory_total_bytes) else { continue };
            if total == 0 {
                continue;
            }
            let frac = used as f64 / total as f64;
            if worst.as_ref().is_none_or(|(f, _)| frac > *f) {
                let mine = g
                    .process_memory_bytes
                    .map(|b| format!("; this run holds {:.1} GiB", b as f64 / GIB))
                    .unwrap_or_default();
                let text = format!(
                    "GPU {} ({}) memory is {:.0}% full ({:.1} of {:.1} GiB{mine})",
                    g.index,
                    g.name,
                    100.0 * frac,
                    used as f64 / GIB,
                    total as f64 / GIB
                );
                worst = Some((frac, text));
            }
        }
        if any_gpu {
            let limit = self.cfg.gpu_memory_fraction;
            if let Some((frac, text)) = worst {
                if self.gpu_memory_high && frac < limit - 0.05 {
                    self.gpu_memory_high = false;
                } else if !self.gpu_memory_high && frac >= limit {
                    self.gpu_memory_high = true;
                    out.push(Anomaly {
                        step: s.step,
                        kind: MEMORY_PRESSURE,
                        message: format!("{text}: the run may run out of memory"),
                        suggestion: "lower train.batch_size (raise train.grad_accum to keep the effective batch), shorten data.max_len, turn on train.grad_checkpointing, or use QLoRA; close other programs using the GPU".into(),
                    });
                }
            }
            return;
        }
        let total = s.system_memory_total_bytes;
        if total == 0 {
            return;
        }
        let frac = s.system_memory_used_bytes as f64 / total as f64;
        let limit = self.cfg.system_memory_fraction;
        if self.system_memory_high && frac < limit - 0.05 {
            self.system_memory_high = false;
        } else if !self.system_memory_high && frac >= limit {
            self.system_memory_high = true;
            out.push(Anomaly {
                step: s.step,
                kind: MEMORY_PRESSURE,
                message: format!(
                    "system memory is {:.0}% used ({:.1} of {:.1} GiB; the training process holds {:.1} GiB): the machine may start swapping or stop the run",
                    100.0 * frac,
                    s.system_memory_used_bytes as f64 / GIB,
                    total as f64 / GIB,
                    s.process_rss_bytes as f64 / GIB
                ),
                suggestion: "close other programs, lower train.batch_size, shorten data.max_len, turn on train.grad_checkpointing, or use QLoRA".into(),
            });
        }
    }
}

/// A sink that passes every event on and, after it, the alerts the [`Detector`] raises for it.
pub struct AlertingSink<S> {
    pub inner: S,
    pub detector: Detector,
}

impl<S: EventSink> AlertingSink<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, detector: Detector::default() }
    }
}

impl<S: EventSink> EventSink for AlertingSink<S> {
    fn emit(&mut self, event: &TrainEvent) {
        self.inner.emit(event);
        for a in self.detector.observe(event) {
            self.inner.emit(&a.to_event());
        }
    }
}

#[cfg(test)]
#[path = "anomaly_tests.rs"]
mod tests;
