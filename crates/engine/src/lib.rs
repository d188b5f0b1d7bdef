//! Finetune Studio's training engine: loads Hugging Face models into candle, wraps their
//! projections with LoRA, trains with differentiable ops only, and writes PEFT-compatible output.
//! Synchronous and free of async runtimes, databases and UI: it reports progress through
//! [`train::EventSink`] and stops when an [`train::Interrupter`] says so.

pub mod error;
pub mod ops;
pub mod rng;

pub use error::{EngineError, Result};
