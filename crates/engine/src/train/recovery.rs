//! When a run's loss goes bad: a pure rule over the loss stream decides whether a step is
//! healthy, or whether to roll back to the last good checkpoint with a lower learning rate.
//! Non-finite losses always roll back; a spike is a loss above the recent median by more than
//! `spike_z` robust standard deviations (median absolute deviation × 1.4826). These are the
//! three anomalies that stop an update from reaching the weights (`nan_loss`, `nan_gradient`,
//! `loss_spike`); the warn-only rules over the same stream live in [`super::anomaly`] and share
//! the robust statistics here.

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// `kind` is the alert kind of the anomaly (`nan_loss`, `nan_gradient`, `loss_spike`).
    Rollback {
        kind: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct LossGuard {
    window: VecDeque<f64>,
    size: usize,
    spike_z: f64,
    /// Minimum history before spikes are judged.
    warmup: usize,
}

impl Default for LossGuard {
    fn default() -> Self {
        Self::new(32, 8.0, 8)
    }
}

/// The median of `v` (sorted in place); NaN when empty.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// The median of `values` and a robust standard deviation (MAD × 1.4826, floored at 0.1 % of
/// the median and at 1e-6 so a perfectly flat window still has a scale).
pub(crate) fn robust_stats(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.collect();
    let med = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&mut dev) * 1.4826;
    (med, mad.max(1e-3 * med.abs()).max(1e-6))
}

impl LossGuard {
    pub fn new(size: usize, spike_z: f64, warmup: usize) -> Self {
        Self { window: VecDeque::with_capacity(size), size, spike_z, warmup }
    }

    /// Judges one step's loss (and gradient norm); healthy losses join the window.
    pub fn observe(&mut self, loss: f64, grad_norm: f64) -> Verdict {
        if !loss.is_finite() {
            return Verdict::Rollback { kind: "nan_loss", reason: format!("the loss became {loss}") };
        }
        if !grad_norm.is_finite() {
            return Verdict::Rollback {
                kind: "nan_gradient",
                reason: format!("the gradient norm became {grad_norm}"),
            };
        }
        if self.window.len() >= self.warmup {
            let (med, spread) = robust_stats(self.window.iter().copied());
            let z = (loss - med) / spread;
            if z > self.spike_z {
                return Verdict::Rollback {
                    kind: "loss_spike",
                    reason: format!(
                        "the loss spiked to {loss:.4} (recent median {med:.4}, {z:.1} robust deviations)"
                    ),
                };
            }
        }
        if self.window.len() == self.size {
            self.window.pop_front();
        }
        self.window.push_back(loss);
        Verdict::Healthy
    }

    /// Forgets history (after a rollback the run continues from older weights).
    pub fn reset(&mut self) {
        self.window.clear();
    }
}

/// What to tell the user about a rolled-back step, by anomaly kind.
pub fn rollback_suggestion(kind: &str) -> &'static str {
    match kind {
        "nan_loss" | "nan_gradient" => {
            "the step was not applied; if it repeats, lower train.lr, raise train.warmup_steps, or train in f32 instead of f16"
        }
        _ => {
            "the step was not applied; one unusual batch can do this, but if it repeats lower train.lr or look for malformed examples"
        }
    }
}

/// The learning-rate multiplier after `rollbacks` rollbacks: halved each time.
pub fn lr_factor(rollbacks: u32) -> f64 {
    0.5f64.powi(rollbacks as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(v: Verdict) -> &'static str {
        match v {
            Verdict::Rollback { kind, .. } => kind,
            Verdict::Healthy => "healthy",
        }
    }

    /// A normal curve: falling, noisy (±7.5 %), 200 steps.
    fn warm(g: &mut LossGuard) {
        let mut x = 0.3f64;
        for i in 0..200 {
            x = (x * 997.0 + 0.13).fract();
            let loss = 3.0 * (-(i as f64) / 80.0).exp() + 0.5 + 0.15 * (x - 0.5);
            assert_eq!(g.observe(loss, 1.0), Verdict::Healthy, "false alarm at step {i}: {loss}");
        }
    }

    #[test]
    fn each_rollback_rule_fires_on_its_synthetic_stream() {
        let mut g = LossGuard::default();
        warm(&mut g);
        assert_eq!(kind(g.observe(f64::INFINITY, 1.0)), "nan_loss");
        assert_eq!(kind(g.observe(f64::NAN, 1.0)), "nan_loss");
        assert_eq!(kind(g.observe(0.6, f64::NAN)), "nan_gradient");
        // A spike: 3x the recent level.
        assert_eq!(kind(g.observe(2.0, 1.0)), "loss_spike");
        // None of those joined the window: a normal value is still healthy.
        assert_eq!(g.observe(0.62, 1.0), Verdict::Healthy);
        // Before the warm-up (8 values) a spike is not judged: early losses move fast.
        let mut fresh = LossGuard::default();
        for l in [5.0, 4.0, 3.5] {
            assert_eq!(fresh.observe(l, 1.0), Verdict::Healthy);
        }
        assert_eq!(fresh.observe(40.0, 1.0), Verdict::Healthy);
        assert!(rollback_suggestion("nan_loss").contains("train.lr"));
    }

    #[test]
    fn nan_and_spikes_roll_back_noise_does_not() {
        let mut g = LossGuard::default();
        let mut x = 0.3f64;
        for i in 0..200 {
            // A falling, noisy curve: no false alarm.
            x = (x * 997.0 + 0.13).fract();
            let loss = 3.0 * (-(i as f64) / 80.0).exp() + 0.5 + 0.15 * (x - 0.5);
            assert_eq!(g.observe(loss, 1.0), Verdict::Healthy, "false alarm at step {i}: {loss}");
        }
        assert!(matches!(g.observe(f64::NAN, 1.0), Verdict::Rollback { .. }));
        assert!(matches!(g.observe(0.7, f64::INFINITY), Verdict::Rollback { .. }));
        assert!(matches!(g.observe(25.0, 1.0), Verdict::Rollback { .. }));
        assert_eq!(lr_factor(0), 1.0);
        assert_eq!(lr_factor(2), 0.25);
    }
}
