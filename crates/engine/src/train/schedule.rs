//! Learning-rate schedules, as Hugging Face's `get_scheduler` computes them: the multiplier for
//! optimizer step `step` (0-based) of `total`, with linear warmup.

/// The schedule kinds the config accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "constant" => Self::Constant,
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            _ => return None,
        })
    }
}

/// The learning rate at `step` for a peak `lr`.
pub fn lr_at(kind: ScheduleKind, lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    lr * match kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Linear => (1.0 - progress).max(0.0),
        ScheduleKind::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hugging_face_shapes() {
        // Warmup ramps from 0 (HF's first step has lr 0 when warmup > 0).
        assert_eq!(lr_at(ScheduleKind::Linear, 1.0, 0, 4, 10), 0.0);
        assert_eq!(lr_at(ScheduleKind::Linear, 1.0, 2, 4, 10), 0.5);
        assert_eq!(lr_at(ScheduleKind::Linear, 1.0, 4, 4, 10), 1.0);
        assert!((lr_at(ScheduleKind::Linear, 1.0, 7, 4, 10) - 0.5).abs() < 1e-12);
        assert!((lr_at(ScheduleKind::Cosine, 1.0, 7, 4, 10) - 0.5).abs() < 1e-12);
        assert!((lr_at(ScheduleKind::Cosine, 2.0, 4, 4, 10) - 2.0).abs() < 1e-12);
        assert_eq!(lr_at(ScheduleKind::Constant, 3.0, 9, 0, 10), 3.0);
        assert_eq!(lr_at(ScheduleKind::Linear, 1.0, 10, 0, 10), 0.0);
    }
}
