//! Training: the loop ([`trainer`]), one micro-batch's forward/backward ([`step`]), AdamW and
//! clipping ([`optim`]), learning-rate schedules ([`schedule`]), checkpoints ([`checkpoint`]), the
//! time left ([`eta`]), the anomaly rules over the metric stream ([`recovery`] rolls back,
//! [`anomaly`] warns) and the event stream everything else listens to ([`events`]).

pub mod anomaly;
pub mod checkpoint;
pub mod eta;
pub mod events;
pub mod faults;
pub mod optim;
mod optim_cpu;
mod plan;
pub mod recovery;
pub mod schedule;
pub mod step;
mod trainer;

pub use anomaly::{AlertingSink, Anomaly, Detector, RuleConfig};
pub use events::{
    EventSink, GpuTelemetry, Interrupter, MemoryStats, StopRequest, TelemetrySample, TrainEvent, VecSink,
};
pub use plan::adapter_plan;
pub use trainer::{RunOptions, TrainOutcome, TrainStatus, train, train_with};
