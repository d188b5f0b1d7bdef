//! Picks the device and dtype a run uses from the config's `auto`/explicit settings, and sizes
//! the CPU thread pool from physical cores.

use crate::error::{EngineError, Result};
use candle_core::{DType, Device};

/// `auto` picks CUDA or Metal when compiled in and present, else the CPU.
pub fn resolve_device(setting: &str) -> Result<Device> {
    let err = |e: candle_core::Error| EngineError::config("model.device", e.to_string());
    match setting {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(err),
        "metal" => Device::new_metal(0).map_err(err),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(err)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(err)
            } else {
                Ok(Device::Cpu)
            }
        }
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::new_cuda(n).map_err(err),
            None => Err(EngineError::config("model.device", format!("unknown device `{other}`"))),
        },
    }
}

/// `auto` is f32 on the CPU (candle's CPU bf16 matmul widens to f32 on every call) and bf16 on
/// GPUs.
pub fn resolve_dtype(setting: &str, device: &Device) -> Result<DType> {
    Ok(match setting {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "auto" => {
            if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            }
        }
        other => return Err(EngineError::config("model.dtype", format!("unknown dtype `{other}`"))),
    })
}

/// Physical CPU cores (distinct core ids per package), falling back to the logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut cores = std::collections::HashSet::new();
    let mut package = String::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => package = v.trim().to_string(),
                "core id" => {
                    cores.insert((package.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() { logical } else { cores.len().min(logical) }
}

/// Sets `RAYON_NUM_THREADS` to the physical core count unless the user chose one, and prepares
/// the BLAS's environment (kernel family, single-threaded; see [`crate::ops::blas`]). Must run
/// at start-up, before any other thread and the first candle CPU op (rayon reads it once).
pub fn init_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: called at start-up before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", physical_cores().to_string()) };
    }
    // candle's elementwise pool spins 25 000 times waiting for its next op before it sleeps;
    // between candle ops the kernels here run on rayon's pool, and the spinning thread took their
    // cores (a 2-thread LoRA step at batch 1: 300 -> 350 tokens/s with a short spin).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: as above, at start-up.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000") };
    }
    crate::ops::blas::prepare_env();
}

/// Keeps freed activation buffers in the process's heap instead of returning them to the kernel.
///
/// A training step allocates and frees the same few-megabyte activations and gradients every
/// step; glibc serves blocks that large with fresh `mmap`s and gives them back on `free`, so every
/// step page-faults its whole working set in again (10 % of a LoRA step on the benchmark model,
/// in the kernel's fault handler and in zeroing). Raising the mmap and trim thresholds lets the
/// heap reuse them. Call at start-up; a no-op outside Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; 32 MiB is glibc's largest mmap threshold
    // on 64-bit systems (a larger value is refused, and then nothing changes).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Resident and peak resident memory of this process in bytes (Linux; zeros elsewhere).
pub fn process_memory() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return (0, 0) };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the process's resident high-water mark (`VmHWM`) to its current resident size, so the
/// next [`process_memory`] reports the peak since this call. Linux only; false where unsupported.
pub fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Memory in use on a GPU and its size, in bytes, as the CUDA driver reports them for the run's
/// device (`cuMemGetInfo`: every process's allocations, candle's memory pool included). `None` on
/// the CPU, on Metal and without the `cuda` feature. A driver call, made once per step after the
/// step's host synchronisation.
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some((total.saturating_sub(free) as u64, total as u64))
        }
        _ => None,
    }
}

/// A short description of a device for events and logs.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => {
            let blas = match crate::ops::blas::status() {
                Ok(b) => b.name.clone(),
                Err(_) => "gemm crate".to_string(),
            };
            format!("cpu ({} threads, {blas})", candle_core::utils::get_num_threads())
        }
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
