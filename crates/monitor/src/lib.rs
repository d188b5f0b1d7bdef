//! The training monitor: what the studio and the CLI show about a run besides its loss.
//! Telemetry of the process, the machine and its GPUs ([`telemetry`]), TensorBoard event files
//! ([`tensorboard`]), the sink that joins them to a run's events ([`pipeline`]), exports of a
//! run's metric history ([`export`]) and plotted reports ([`report`]). The anomaly rules are pure
//! functions of the event stream and live in the engine (`finetune_engine::train::anomaly`), next
//! to the recovery rules they share statistics with.

pub mod export;
pub mod pipeline;
pub mod report;
pub mod telemetry;
pub mod tensorboard;
