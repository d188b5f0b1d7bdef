//! Telemetry sampled off the training thread: NVML (loaded at run time through `nvml-wrapper`:
//! utilisation, memory used/total, temperature, power and this process's own GPU memory for every
//! GPU) and `sysinfo` (the process's resident memory and CPU use, system memory and CPU use).
//! Where NVML is missing (no NVIDIA driver, a Mac, a container without the library) the GPU list
//! is empty and `gpu_status` says why; nothing here ever fails a run.
//!
//! [`Sampler`] takes one sample; [`TelemetryThread`] takes one every interval on its own thread
//! and hands it to a callback (the worker puts it into its event stream; the studio keeps the
//! newest for the dashboard's device panel).

use finetune_engine::train::{GpuTelemetry, TelemetrySample};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Why NVML cannot be used, in plain words.
fn nvml_unavailable(e: &NvmlError) -> String {
    let why = match e {
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) | NvmlError::LibraryNotFound => {
            "the NVIDIA driver library (libnvidia-ml) is not installed".to_string()
        }
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_string(),
        NvmlError::NoPermission => "no permission to query the NVIDIA driver".to_string(),
        other => other.to_string(),
    };
    format!("unavailable: {why}")
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Takes telemetry samples of one process and the machine.
pub struct Sampler {
    nvml: Result<Nvml, String>,
    sys: Option<System>,
    pid: Option<Pid>,
    /// The NVML index of the GPU the run uses when NVML cannot see our process (containers
    /// with their own PID namespace); set by the worker when the engine reports CUDA.
    gpu_hint: Option<u32>,
    primed: bool,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler for this process. Loading NVML is tried once; its absence is remembered.
    pub fn new() -> Self {
        Self::for_pid(std::process::id())
    }

    pub fn for_pid(pid: u32) -> Self {
        Self {
            nvml: Nvml::init().map_err(|e| nvml_unavailable(&e)),
            sys: System::new().ok(),
            pid: Some(Pid::from_u32(pid)),
            gpu_hint: None,
            primed: false,
        }
    }

    /// A sampler that never loads NVML (tests, and a check that the fallback works).
    pub fn without_gpus(reason: &str) -> Self {
        Self { nvml: Err(format!("unavailable: {reason}")), ..Self::new() }
    }

    pub fn set_gpu_hint(&mut self, index: Option<u32>) {
        self.gpu_hint = index;
    }

    /// `ok`, or `unavailable: <why>`.
    pub fn gpu_status(&self) -> String {
        match &self.nvml {
            Ok(_) => "ok".into(),
            Err(why) => why.clone(),
        }
    }

    fn gpus(&self) -> Result<Vec<GpuTelemetry>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let n = nvml.device_count().map_err(|e| nvml_unavailable(&e))?;
        let me = self.pid.map(|p| p.as_u32());
        let mut out = Vec::with_capacity(n as usize);
        for index in 0..n {
            let Ok(d) = nvml.device_by_index(index) else { continue };
            let mem = d.memory_info().ok();
            let mine = d.running_compute_processes().ok().and_then(|ps| {
                ps.into_iter().find(|p| Some(p.pid) == me).map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                })
            });
            out.push(GpuTelemetry {
                index,
                name: d.name().unwrap_or_else(|_| format!("GPU {index}")),
                in_use: mine.is_some(),
                utilization_percent: d.utilization_rates().ok().map(|u| u.gpu as f64),
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok().map(|t| t as f64),
                power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
                power_limit_w: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1000.0),
                process_memory_bytes: mine.flatten(),
            });
        }
        if !out.iter().any(|g| g.in_use)
            && let Some(g) = self.gpu_hint.and_then(|h| out.iter_mut().find(|g| g.index == h))
        {
            g.in_use = true;
        }
        Ok(out)
    }

    /// One sample; `step` is the newest finished optimizer step.
    pub fn sample(&mut self, step: u64) -> TelemetrySample {
        let (gpu_status, gpus) = match self.gpus() {
            Ok(g) if g.is_empty() => ("unavailable: NVML found no GPU".to_string(), g),
            Ok(g) => ("ok".to_string(), g),
            Err(why) => (why, Vec::new()),
        };
        let mut s = TelemetrySample { ts_ms: unix_ms(), step, gpu_status, gpus, ..Default::default() };
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_memory();
            sys.refresh_cpu_usage();
            s.system_memory_total_bytes = sys.total_memory();
            s.system_memory_used_bytes = sys.total_memory().saturating_sub(sys.available_memory());
            if let Some(pid) = self.pid {
                sys.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    true,
                    ProcessRefreshKind::nothing().with_memory().with_cpu(),
                );
                if let Some(p) = sys.process(pid) {
                    s.process_rss_bytes = p.memory();
                    s.process_cpu_percent = self.primed.then_some(p.cpu_usage() as f64);
                }
            }
            // CPU use is a difference between two refreshes: none on the first sample.
            s.system_cpu_percent = self.primed.then_some(sys.global_cpu_usage() as f64);
            self.primed = true;
        }
        s
    }
}

/// A thread taking a sample every interval until dropped.
pub struct TelemetryThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl TelemetryThread {
    /// Samples now, then every `interval`, calling `emit` with each sample. `step` is read for
    /// each sample (the caller updates it as steps finish); `hint` is the GPU index to mark in
    /// use when NVML cannot match our process (`u64::MAX`: none).
    pub fn spawn(
        interval: Duration,
        mut sampler: Sampler,
        step: Arc<AtomicU64>,
        hint: Arc<AtomicU64>,
        mut emit: impl FnMut(TelemetrySample) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("telemetry".into()).spawn(move || {
            loop {
                let h = hint.load(Ordering::Relaxed);
                sampler.set_gpu_hint(u32::try_from(h).ok());
                emit(sampler.sample(step.load(Ordering::Relaxed)));
                let (lock, cvar) = &*flag;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) =
                    cvar.wait_timeout_while(guard, interval, |s| !*s).unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            }
        })?;
        Ok(Self { stop, handle: Some(handle) })
    }

    /// Stops the thread and waits for it (also done on drop).
    pub fn stop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for TelemetryThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_the_machine_with_or_without_nvml() {
        let mut s = Sampler::new();
        let a = s.sample(3);
        assert_eq!(a.step, 3);
        assert!(a.ts_ms > 1_600_000_000_000);
        assert!(a.process_rss_bytes > 1 << 20, "{a:?}");
        assert!(a.system_memory_total_bytes > a.system_memory_used_bytes && a.system_memory_used_bytes > 0);
        assert!(a.system_cpu_percent.is_none(), "no CPU use before two samples");
        assert!(a.gpu_status == "ok" || a.gpu_status.starts_with("unavailable: "), "{}", a.gpu_status);
        assert_eq!(a.gpu_status == "ok", !a.gpus.is_empty());
        let b = s.sample(4);
        assert!(b.system_cpu_percent.is_some_and(|c| (0.0..=100.0).contains(&c)), "{b:?}");

        let mut none = Sampler::without_gpus("test");
        let c = none.sample(0);
        assert_eq!((c.gpu_status.as_str(), c.gpus.len()), ("unavailable: test", 0));
    }

    #[test]
    fn the_thread_samples_until_stopped() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let step = Arc::new(AtomicU64::new(7));
        let mut t = TelemetryThread::spawn(
            Duration::from_millis(20),
            Sampler::without_gpus("test"),
            step.clone(),
            Arc::new(AtomicU64::new(u64::MAX)),
            move |s| sink.lock().unwrap().push(s.step),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        step.store(9, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        t.stop();
        assert!(started.elapsed() < Duration::from_millis(500), "stop waits at most one sample");
        let steps = got.lock().unwrap().clone();
        assert!(steps.len() >= 4, "{steps:?}");
        assert_eq!((steps[0], *steps.last().unwrap()), (7, 9));
        let n = steps.len();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(got.lock().unwrap().len(), n, "no sample after stop");
    }
}
