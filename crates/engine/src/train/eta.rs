//! Time left in a run, counting what is still to come besides optimizer steps: the periodic
//! evaluations, the checkpoints and the final evaluation and save. Steps are timed over a moving
//! window; evaluations and checkpoints by their measured mean, or, before the first one, by an
//! estimate (an evaluation batch is a forward pass, about a third of a training micro-batch; a
//! checkpoint writes the trainable weights and optimizer state at about 1 GB/s).

use std::collections::VecDeque;

/// What the rest of the run holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtaPlan {
    pub total_steps: u64,
    /// Evaluate every this many steps (0: never), before the last step.
    pub eval_every: u64,
    /// Batches in one evaluation (0: no eval set).
    pub eval_batches: u64,
    /// Micro-batches in one optimizer step.
    pub micro_batches: u64,
    /// Checkpoint every this many steps (0: never).
    pub checkpoint_every: u64,
    /// Bytes a checkpoint writes (weights and optimizer state).
    pub checkpoint_bytes: u64,
}

/// Step windows shorter than this use every step.
const WINDOW: usize = 32;
/// Disk speed assumed before the first checkpoint is timed.
const DISK_BYTES_PER_S: f64 = 1e9;

#[derive(Debug, Clone, Default)]
pub struct Eta {
    steps: VecDeque<f64>,
    eval: (f64, u32),
    checkpoint: (f64, u32),
}

fn mean((sum, n): (f64, u32)) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

impl Eta {
    pub fn record_step(&mut self, seconds: f64) {
        if self.steps.len() == WINDOW {
            self.steps.pop_front();
        }
        self.steps.push_back(seconds);
    }

    pub fn record_eval(&mut self, seconds: f64) {
        self.eval = (self.eval.0 + seconds, self.eval.1 + 1);
    }

    pub fn record_checkpoint(&mut self, seconds: f64) {
        self.checkpoint = (self.checkpoint.0 + seconds, self.checkpoint.1 + 1);
    }

    /// Mean seconds of a recent optimizer step (0 before the first).
    pub fn step_s(&self) -> f64 {
        if self.steps.is_empty() { 0.0 } else { self.steps.iter().sum::<f64>() / self.steps.len() as f64 }
    }

    /// Seconds one evaluation takes: measured, or estimated from the step time.
    pub fn eval_s(&self, plan: &EtaPlan) -> f64 {
        mean(self.eval).unwrap_or_else(|| {
            plan.eval_batches as f64 * self.step_s() / plan.micro_batches.max(1) as f64 / 3.0
        })
    }

    /// Seconds one checkpoint takes: measured, or estimated from its size.
    pub fn checkpoint_s(&self, plan: &EtaPlan) -> f64 {
        mean(self.checkpoint).unwrap_or(plan.checkpoint_bytes as f64 / DISK_BYTES_PER_S)
    }

    /// Seconds until the run ends, after `step` steps are done.
    pub fn remaining_s(&self, plan: &EtaPlan, step: u64) -> f64 {
        let total = plan.total_steps;
        if step >= total {
            return 0.0;
        }
        let has_eval = plan.eval_batches > 0;
        // Periodic evaluations run after steps k < total with k % every == 0; one more at the end.
        let periodic = match plan.eval_every {
            0 => 0,
            e => ((total - 1) / e).saturating_sub(step / e),
        };
        let evals = if has_eval { periodic + 1 } else { 0 };
        let checkpoints = match plan.checkpoint_every {
            0 => 0,
            c => total / c - step / c,
        };
        // The final save writes the adapter (or model) once more.
        (total - step) as f64 * self.step_s()
            + evals as f64 * self.eval_s(plan)
            + (checkpoints + 1) as f64 * self.checkpoint_s(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> EtaPlan {
        EtaPlan {
            total_steps: 100,
            eval_every: 10,
            eval_batches: 30,
            micro_batches: 2,
            checkpoint_every: 25,
            checkpoint_bytes: 2_000_000_000,
        }
    }

    #[test]
    fn counts_the_evaluations_and_checkpoints_still_to_come() {
        let mut eta = Eta::default();
        eta.record_step(1.0);
        // Before any is timed: 30 eval batches at a third of 0.5 s = 5 s each; a 2 GB checkpoint 2 s.
        let p = plan();
        assert!((eta.eval_s(&p) - 5.0).abs() < 1e-9);
        assert!((eta.checkpoint_s(&p) - 2.0).abs() < 1e-9);
        // After step 1: 99 steps, evals at 10..90 (9) + the final one, checkpoints at 25..100 (4) + the save.
        let expected = 99.0 + 10.0 * 5.0 + 5.0 * 2.0;
        assert!((eta.remaining_s(&p, 1) - expected).abs() < 1e-9, "{}", eta.remaining_s(&p, 1));
        // Measured times replace the estimates.
        eta.record_eval(8.0);
        eta.record_checkpoint(0.5);
        // After step 10 (its evaluation is done): 90 steps, evals 20..90 (8) + final, checkpoints 25..100 (4) + save.
        let expected = 90.0 + 9.0 * 8.0 + 5.0 * 0.5;
        assert!((eta.remaining_s(&p, 10) - expected).abs() < 1e-9);
        assert_eq!(eta.remaining_s(&p, 100), 0.0);
        // The naive estimate (steps only) would be 90 s: the evaluations dominate here.
        assert!(eta.remaining_s(&p, 10) > 1.5 * 90.0);
    }

    #[test]
    fn no_eval_set_and_no_checkpoints() {
        let mut eta = Eta::default();
        for s in [3.0, 1.0, 2.0] {
            eta.record_step(s);
        }
        let p = EtaPlan { total_steps: 10, micro_batches: 1, ..Default::default() };
        assert!((eta.remaining_s(&p, 4) - 6.0 * 2.0).abs() < 1e-9);
        // The window keeps the recent steps only.
        for _ in 0..WINDOW {
            eta.record_step(0.5);
        }
        assert!((eta.step_s() - 0.5).abs() < 1e-12);
    }
}
