//! `GET /system`: what the dashboard shows about this machine (CPU, memory, GPUs found by
//! `nvidia-smi`), the studio's version and data dir, and whether this is a first run (no job
//! yet), so the UI can offer the demo. Probing the GPU runs a process, so it is done once; a live
//! telemetry sample (memory, CPU, NVML's GPU readings) is taken on every call for the device panel.

use crate::api::monitor::TelemetrySampleView;
use crate::error::ApiResult;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use finetune_jobs::JobFilter;
use finetune_monitor::telemetry::Sampler;
use serde::Serialize;
use std::sync::{Mutex, OnceLock};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(system_info))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GpuInfo {
    pub name: String,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemInfo {
    pub version: String,
    /// The CPU model, e.g. "AMD EPYC 9454P 48-Core Processor".
    pub cpu: String,
    /// Logical CPUs.
    pub cpu_threads: usize,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    /// NVIDIA GPUs (empty when there are none or the driver tools are missing).
    pub gpus: Vec<GpuInfo>,
    pub data_dir: String,
    /// Whether the studio runs on the user's own machine (loopback), so it can open folders.
    pub local: bool,
    /// No job has ever been created: the UI offers the demo.
    pub first_run: bool,
    /// A fresh sample of the machine (memory, CPU use) and its GPUs through NVML; `gpu_status`
    /// says why GPU readings are missing.
    pub telemetry: Option<TelemetrySampleView>,
}

/// Samples the machine for the dashboard; NVML is loaded once and CPU use needs the previous
/// sample, so one sampler lives as long as the studio.
fn sample_machine() -> Option<TelemetrySampleView> {
    static SAMPLER: OnceLock<Mutex<Sampler>> = OnceLock::new();
    let sampler = SAMPLER.get_or_init(|| Mutex::new(Sampler::new()));
    let sample = sampler.lock().unwrap_or_else(|e| e.into_inner()).sample(0);
    TelemetrySampleView::from_json(serde_json::to_value(sample).ok()?)
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// `nvidia-smi --query-gpu=name,memory.total`: one `name, MiB` line per GPU.
fn parse_nvidia_smi(out: &str) -> Vec<GpuInfo> {
    out.lines()
        .filter_map(|l| {
            let (name, mib) = l.rsplit_once(',')?;
            let name = name.trim();
            (!name.is_empty()).then(|| GpuInfo {
                name: name.to_string(),
                memory_bytes: mib.trim().parse::<u64>().ok().map(|m| m << 20),
            })
        })
        .collect()
}

fn gpus() -> Vec<GpuInfo> {
    static GPUS: OnceLock<Vec<GpuInfo>> = OnceLock::new();
    GPUS.get_or_init(|| {
        std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    })
    .clone()
}

/// This machine and the studio: CPU, memory, GPUs, version, data dir, first run.
#[utoipa::path(get, path = "/system", tag = "system", responses((status = 200, body = SystemInfo)))]
async fn system_info(State(st): State<AppState>) -> ApiResult<Json<SystemInfo>> {
    let (_, total) = st.store().list_jobs(&JobFilter { limit: 1, ..Default::default() })?;
    let (gpus, telemetry) =
        tokio::task::spawn_blocking(|| (gpus(), sample_machine())).await.unwrap_or_default();
    Ok(Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpu: cpu_model(),
        cpu_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_total_bytes: meminfo("MemTotal:"),
        memory_available_bytes: meminfo("MemAvailable:"),
        gpus,
        data_dir: st.cfg.data_dir.to_string_lossy().into_owned(),
        local: st.cfg.is_loopback(),
        first_run: total == 0,
        telemetry,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nvidia_smi_lines() {
        let g = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559\nTesla T4, 15360\n\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].memory_bytes, Some(81559 << 20));
        assert_eq!(g[1].memory_bytes, Some(15360 << 20));
        assert!(parse_nvidia_smi("").is_empty());
    }
}
