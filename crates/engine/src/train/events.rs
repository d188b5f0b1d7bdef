//! The one event stream of a training run. The CLI's progress bar, the worker's NDJSON output,
//! the studio's SQLite store, TensorBoard files and the UI all consume [`TrainEvent`]s; the engine
//! knows none of them. [`TrainEvent::Telemetry`] is the one kind the engine never emits: the
//! worker's sampler thread adds it to the same stream (see `finetune-monitor`).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where the memory of a run goes, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Frozen base weights.
    pub base_bytes: u64,
    /// Trainable weights (adapters, or the whole model in full fine-tuning).
    pub trainable_bytes: u64,
    /// Optimizer moments.
    pub optimizer_bytes: u64,
    /// Resident memory of the process now, and its peak since it started (CPU).
    pub process_rss_bytes: u64,
    pub process_peak_bytes: u64,
    /// Peak resident memory during this optimizer step (Linux: the high-water mark is reset
    /// before each step).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step_peak_bytes: Option<u64>,
    /// What the step needed at its peak on top of what was resident when it began: activations
    /// kept for backward, gradients and temporaries. A lower bound when the allocator still holds
    /// memory freed by earlier steps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub activation_peak_bytes: Option<u64>,
    /// Device memory in use, when a GPU reports it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_used_bytes: Option<u64>,
}

/// One GPU as NVML reports it. Every reading is optional: a driver may not support it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    /// NVML's index (not necessarily the CUDA ordinal).
    pub index: u32,
    pub name: String,
    /// Whether this process holds memory on it (the GPU the run trains on).
    pub in_use: bool,
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// Memory this process holds on the GPU (NVML's per-process accounting).
    pub process_memory_bytes: Option<u64>,
}

/// A sample of the machine while a run trains, taken off the training thread (about once a
/// second). Where NVML is missing `gpus` is empty and `gpu_status` says why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    /// Unix time in milliseconds.
    pub ts_ms: i64,
    /// The newest optimizer step finished when the sample was taken (0 before the first).
    pub step: u64,
    /// Resident memory of the training process.
    pub process_rss_bytes: u64,
    /// CPU use of the training process, in percent of one core (from the second sample on).
    pub process_cpu_percent: Option<f64>,
    pub system_memory_used_bytes: u64,
    pub system_memory_total_bytes: u64,
    /// CPU use of the whole machine, 0 to 100 (from the second sample on).
    pub system_cpu_percent: Option<f64>,
    /// `ok`, or `unavailable: <why>` (no NVIDIA driver, no GPU, NVML could not be loaded).
    pub gpu_status: String,
    pub gpus: Vec<GpuTelemetry>,
}

impl TelemetrySample {
    /// The GPUs the run uses (those it holds memory on).
    pub fn gpus_in_use(&self) -> impl Iterator<Item = &GpuTelemetry> {
        self.gpus.iter().filter(|g| g.in_use)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: u64,
        start_step: u64,
        epochs: f64,
        train_examples: u64,
        eval_examples: u64,
        trainable_params: u64,
        total_params: u64,
        method: String,
        family: String,
        device: String,
        dtype: String,
        output_dir: String,
    },
    Step {
        step: u64,
        total_steps: u64,
        epoch: f64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: u64,
        tokens_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
        mem: MemoryStats,
    },
    Eval {
        step: u64,
        eval_loss: f64,
        perplexity: f64,
        tokens: u64,
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
    },
    Finished {
        step: u64,
        final_loss: f64,
        best_loss: f64,
        eval_loss: Option<f64>,
        output_dir: String,
        elapsed_s: f64,
        tokens: u64,
        /// `completed`, or `paused` when the run stopped at a checkpoint to be resumed.
        status: String,
    },
    Failed {
        error: String,
    },
    /// A sample of the process, the machine and its GPUs (added by the worker, not the engine).
    Telemetry(TelemetrySample),
}

/// Receives events as they happen.
pub trait EventSink {
    fn emit(&mut self, event: &TrainEvent);
}

impl<F: FnMut(&TrainEvent)> EventSink for F {
    fn emit(&mut self, event: &TrainEvent) {
        self(event)
    }
}

/// Collects events (tests, benchmarks).
#[derive(Default)]
pub struct VecSink(pub Vec<TrainEvent>);

impl EventSink for VecSink {
    fn emit(&mut self, event: &TrainEvent) {
        self.0.push(event.clone());
    }
}

/// Why a run should stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Finish the step, write a checkpoint, exit to be resumed later.
    Pause,
    /// Stop as soon as possible; the last checkpoint is kept.
    Cancel,
}

/// A flag the trainer polls between steps; set from a signal handler or another thread.
#[derive(Clone, Default)]
pub struct Interrupter(Arc<AtomicUsize>);

impl Interrupter {
    pub fn new() -> Self {
        Self::default()
    }

    pub const PAUSE: usize = 1;
    pub const CANCEL: usize = 2;

    pub fn request(&self, r: StopRequest) {
        let v = match r {
            StopRequest::Pause => Self::PAUSE,
            StopRequest::Cancel => Self::CANCEL,
        };
        // Cancel wins over pause.
        self.0.fetch_max(v, Ordering::SeqCst);
    }

    pub fn requested(&self) -> Option<StopRequest> {
        match self.0.load(Ordering::SeqCst) {
            Self::PAUSE => Some(StopRequest::Pause),
            Self::CANCEL => Some(StopRequest::Cancel),
            _ => None,
        }
    }

    /// The raw flag, for async-signal-safe handlers: store [`Interrupter::PAUSE`] or
    /// [`Interrupter::CANCEL`] into it.
    pub fn flag(&self) -> Arc<AtomicUsize> {
        self.0.clone()
    }
}
