//! Finetune Studio's training engine: loads Hugging Face models into candle, wraps their
//! projections with LoRA, trains with differentiable ops only, and writes PEFT-compatible output.
//! Synchronous and free of async runtimes, databases and UI: it reports progress through an
//! event sink and stops when an interrupter says so.

pub mod arch;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod layers;
pub mod memory;
pub mod model;
pub mod ops;
pub mod peft;
pub mod quant;
pub mod rng;
pub mod tokenizer;
pub mod train;

pub use candle_core::{DType, Device};
pub use error::{EngineError, Result};
