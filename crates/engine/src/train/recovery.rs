//! When a run's loss goes bad: a pure rule over the loss stream decides whether a step is
//! healthy, or whether to roll back to the last good checkpoint with a lower learning rate.
//! Non-finite losses always roll back; a spike is a loss above the recent median by more than
//! `spike_z` robust standard deviations (median absolute deviation × 1.4826).

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    Rollback { reason: String },
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

impl LossGuard {
    pub fn new(size: usize, spike_z: f64, warmup: usize) -> Self {
        Self { window: VecDeque::with_capacity(size), size, spike_z, warmup }
    }

    /// Judges one step's loss (and gradient norm); healthy losses join the window.
    pub fn observe(&mut self, loss: f64, grad_norm: f64) -> Verdict {
        if !loss.is_finite() {
            return Verdict::Rollback { reason: format!("the loss became {loss}") };
        }
        if !grad_norm.is_finite() {
            return Verdict::Rollback { reason: format!("the gradient norm became {grad_norm}") };
        }
        if self.window.len() >= self.warmup {
            let mut v: Vec<f64> = self.window.iter().copied().collect();
            let med = median(&mut v);
            let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
            let mad = median(&mut dev) * 1.4826;
            let spread = mad.max(1e-3 * med.abs()).max(1e-6);
            let z = (loss - med) / spread;
            if z > self.spike_z {
                return Verdict::Rollback {
                    reason: format!("the loss spiked to {loss:.4} (recent median {med:.4}, {z:.1} robust deviations)"),
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

/// The learning-rate multiplier after `rollbacks` rollbacks: halved each time.
pub fn lr_factor(rollbacks: u32) -> f64 {
    0.5f64.powi(rollbacks as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
