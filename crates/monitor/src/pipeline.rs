//! The sink a monitored run emits into: the engine's events and the telemetry thread's samples
//! meet here, in one order, and flow through the anomaly rules (which add their alerts) to the
//! caller's own sink (the worker's NDJSON, the CLI's progress bar) and to TensorBoard files.
//! The worker and `finetune-studio train` both use it, so a run is monitored the same way
//! whether the studio started it or not.

use crate::telemetry::{Sampler, TelemetryThread};
use crate::tensorboard::TensorBoardSink;
use finetune_engine::train::{AlertingSink, EventSink, TrainEvent};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What to add to a run.
#[derive(Debug, Clone, Default)]
pub struct MonitorOptions {
    /// Write TensorBoard event files into this folder.
    pub tensorboard_dir: Option<PathBuf>,
    /// Take a telemetry sample this often (`None`: no telemetry).
    pub telemetry_interval: Option<Duration>,
    /// The GPU the run trains on (`model.device = "cuda:N"`), marked in use when NVML cannot
    /// match the process to a GPU (containers with their own PID namespace).
    pub gpu_index: Option<u32>,
}

impl MonitorOptions {
    /// The telemetry interval from `FINETUNE_TELEMETRY_MS` (default 2000; 0 turns it off).
    pub fn telemetry_from_env() -> Option<Duration> {
        let ms =
            std::env::var("FINETUNE_TELEMETRY_MS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(2000);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The GPU index of a device string such as `cuda:1` (`cuda` alone is 0).
    pub fn gpu_of_device(device: &str) -> Option<u32> {
        match device.strip_prefix("cuda") {
            Some("") => Some(0),
            Some(rest) => rest.strip_prefix(':')?.parse().ok(),
            None => None,
        }
    }
}

struct Pipeline<S> {
    alerting: AlertingSink<S>,
    tensorboard: Option<TensorBoardSink>,
    /// TensorBoard only records telemetry once the run has said where it starts (a resumed run
    /// starts past step 0).
    started: bool,
}

impl<S: EventSink> Pipeline<S> {
    fn emit(&mut self, event: &TrainEvent) {
        if matches!(event, TrainEvent::Started { .. }) {
            self.started = true;
        }
        let record = self.started || !matches!(event, TrainEvent::Telemetry(_));
        if let (true, Some(tb)) = (record, self.tensorboard.as_mut())
            && let Err(message) = tb.record(event)
        {
            self.alerting.inner.emit(&TrainEvent::Log { level: "warn".into(), message });
        }
        self.alerting.emit(event);
    }
}

/// A run being monitored; [`MonitoredRun::sink`] is what the trainer emits into.
pub struct MonitoredRun<S> {
    shared: Arc<Mutex<Pipeline<S>>>,
    step: Arc<AtomicU64>,
    telemetry: Option<TelemetryThread>,
}

fn lock<S>(m: &Mutex<Pipeline<S>>) -> MutexGuard<'_, Pipeline<S>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: EventSink + Send + 'static> MonitoredRun<S> {
    /// Starts the telemetry thread (its first sample is taken at once).
    pub fn start(inner: S, opts: MonitorOptions) -> Self {
        let shared = Arc::new(Mutex::new(Pipeline {
            alerting: AlertingSink::new(inner),
            tensorboard: opts.tensorboard_dir.map(TensorBoardSink::new),
            started: false,
        }));
        let step = Arc::new(AtomicU64::new(0));
        let telemetry = opts.telemetry_interval.and_then(|every| {
            let hint = Arc::new(AtomicU64::new(opts.gpu_index.map_or(u64::MAX, u64::from)));
            let pipeline = shared.clone();
            let spawned = TelemetryThread::spawn(every, Sampler::new(), step.clone(), hint, move |sample| {
                lock(&pipeline).emit(&TrainEvent::Telemetry(sample))
            });
            match spawned {
                Ok(t) => Some(t),
                Err(e) => {
                    let message = format!("telemetry is off: cannot start its thread: {e}");
                    lock(&shared).alerting.inner.emit(&TrainEvent::Log { level: "warn".into(), message });
                    None
                }
            }
        });
        Self { shared, step, telemetry }
    }

    /// The sink to hand to the trainer.
    pub fn sink(&self) -> RunSink<'_, S> {
        RunSink(self)
    }

    /// Stops the telemetry thread and returns the caller's sink.
    pub fn finish(self) -> S {
        let Self { shared, telemetry, .. } = self;
        // Joining the thread drops its handle on the pipeline.
        drop(telemetry);
        match Arc::try_unwrap(shared) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()).alerting.inner,
            // Unreachable: the thread was joined and `RunSink` borrows `self`.
            Err(_) => unreachable!("the telemetry thread still holds the pipeline after it was joined"),
        }
    }
}

/// The trainer's handle on a [`MonitoredRun`].
pub struct RunSink<'a, S>(&'a MonitoredRun<S>);

impl<S: EventSink> EventSink for RunSink<'_, S> {
    fn emit(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Started { start_step, .. } => self.0.step.store(*start_step, Ordering::Relaxed),
            TrainEvent::Step { step, .. } => self.0.step.store(*step, Ordering::Relaxed),
            _ => {}
        }
        lock(&self.0.shared).emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finetune_engine::train::VecSink;

    #[test]
    fn device_strings_name_their_gpu() {
        assert_eq!(MonitorOptions::gpu_of_device("cuda"), Some(0));
        assert_eq!(MonitorOptions::gpu_of_device("cuda:3"), Some(3));
        assert_eq!(MonitorOptions::gpu_of_device("cpu"), None);
        assert_eq!(MonitorOptions::gpu_of_device("cudax"), None);
    }

    #[test]
    fn samples_and_events_meet_in_one_stream_and_reach_tensorboard() {
        let dir = tempfile::tempdir().unwrap();
        let opts = MonitorOptions {
            tensorboard_dir: Some(dir.path().join("tb")),
            telemetry_interval: Some(Duration::from_millis(20)),
            gpu_index: None,
        };
        let run = MonitoredRun::start(VecSink::default(), opts);
        std::thread::sleep(Duration::from_millis(60));
        let mut sink = run.sink();
        sink.emit(&TrainEvent::Log { level: "info".into(), message: "hello".into() });
        let out = run.finish();
        let samples = out.0.iter().filter(|e| matches!(e, TrainEvent::Telemetry(_))).count();
        assert!(samples >= 2, "{samples} samples");
        assert!(out.0.iter().any(|e| matches!(e, TrainEvent::Log { message, .. } if message == "hello")));
        // Before the run started, samples are not TensorBoard scalars.
        for f in std::fs::read_dir(dir.path().join("tb")).into_iter().flatten().flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            let records = crate::tensorboard::read_records(&bytes).unwrap();
            assert!(records.iter().all(|r| crate::tensorboard::decode_event(r).unwrap().scalars.is_empty()));
        }
    }
}
