//! Training: the loop ([`trainer`]), one micro-batch's forward/backward ([`step`]), AdamW and
//! clipping ([`optim`]), learning-rate schedules ([`schedule`]), checkpoints ([`checkpoint`]) and
//! the event stream everything else listens to ([`events`]).

pub mod checkpoint;
pub mod events;
pub mod faults;
pub mod optim;
pub mod recovery;
pub mod schedule;
pub mod step;
mod plan;
mod trainer;

pub use events::{EventSink, Interrupter, MemoryStats, StopRequest, TrainEvent, VecSink};
pub use plan::adapter_plan;
pub use trainer::{RunOptions, TrainOutcome, TrainStatus, train, train_with};
