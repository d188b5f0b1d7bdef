//! Fault injection for reliability tests, never on in normal use: the environment variable
//! `FINETUNE_FAULT` (comma-separated `kind@step`) makes a run fail on purpose at an optimizer step:
//! `panic@N` panics, `oom@N` fails with an out-of-memory error, `nan@N` makes the loss NaN,
//! `io@N` fails the checkpoint write at step N with an I/O error, `exit@N` kills the process.

use crate::error::EngineError;

pub const ENV: &str = "FINETUNE_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Panic,
    OutOfMemory,
    Nan,
    CheckpointIo,
    Exit,
}

/// The faults configured for this process; each fires once.
#[derive(Debug, Default)]
pub struct Faults {
    planned: Vec<(Fault, u64)>,
    fired: std::sync::Mutex<Vec<(Fault, u64)>>,
}

impl Faults {
    pub fn from_env() -> Self {
        std::env::var(ENV).map(|v| Self::parse(&v)).unwrap_or_default()
    }

    pub fn parse(spec: &str) -> Self {
        let items = spec
            .split(',')
            .filter_map(|item| {
                let (kind, step) = item.trim().split_once('@')?;
                let step = step.parse().ok()?;
                let fault = match kind {
                    "panic" => Fault::Panic,
                    "oom" => Fault::OutOfMemory,
                    "nan" => Fault::Nan,
                    "io" => Fault::CheckpointIo,
                    "exit" => Fault::Exit,
                    _ => return None,
                };
                Some((fault, step))
            })
            .collect();
        Self { planned: items, fired: Default::default() }
    }

    /// Whether `fault` is planned at `step` and has not fired yet (it fires now).
    pub fn at(&self, fault: Fault, step: u64) -> bool {
        if !self.planned.contains(&(fault, step)) {
            return false;
        }
        let Ok(mut fired) = self.fired.lock() else { return false };
        if fired.contains(&(fault, step)) {
            return false;
        }
        fired.push((fault, step));
        true
    }

    /// Fires the faults that act at the start of optimizer step `step` (1-based).
    pub fn before_step(&self, step: u64) -> Result<(), EngineError> {
        if self.at(Fault::Panic, step) {
            panic!("injected fault: panic at step {step}");
        }
        if self.at(Fault::Exit, step) {
            std::process::exit(137);
        }
        if self.at(Fault::OutOfMemory, step) {
            return Err(EngineError::OutOfMemory(format!("injected fault: out of memory at step {step}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_steps() {
        let f = Faults::parse("nan@3, oom@5,bogus@1,io@x");
        assert!(f.at(Fault::Nan, 3));
        assert!(!f.at(Fault::Nan, 3), "a fault fires once");
        assert!(!f.at(Fault::Nan, 4) && !f.at(Fault::CheckpointIo, 1));
        assert!(f.before_step(4).is_ok());
        assert!(f.before_step(5).is_err());
        assert!(f.before_step(5).is_ok());
    }
}
