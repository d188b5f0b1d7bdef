//! What every handler shares: the supervisor (and through it the store), the server's settings
//! and where the data dir keeps datasets and user presets.

use finetune_jobs::{Store, Supervisor};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the studio's server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to bind (default 127.0.0.1).
    pub host: String,
    /// 0 picks any free port.
    pub port: u16,
    /// `studio.db`, `jobs/`, `datasets/` and `presets/` live here.
    pub data_dir: PathBuf,
    /// The `finetune-studio` executable that runs workers.
    pub worker_exe: PathBuf,
    /// Arguments before the per-job ones (default `["worker"]`).
    pub worker_args: Vec<String>,
    /// Required from clients when set; [`crate::Server::bind`] generates one for a non-loopback
    /// host when none is given.
    pub token: Option<String>,
    /// The built web UI (`ui/dist`); a placeholder page is served when absent.
    pub ui_dir: Option<PathBuf>,
    /// Largest dataset upload, in bytes.
    pub max_upload_bytes: u64,
    pub max_concurrent_per_device: usize,
    pub cancel_grace: Duration,
    /// Where the Hugging Face hub cache is (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub hf_cache: Option<PathBuf>,
    /// Extra host names accepted in the Host header besides loopback names and `host`.
    pub allowed_hosts: Vec<String>,
    /// Where the demo's model comes from (`POST /demo`).
    pub demo: crate::demo::DemoSettings,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, worker_exe: impl Into<PathBuf>) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            data_dir: data_dir.into(),
            worker_exe: worker_exe.into(),
            worker_args: vec!["worker".into()],
            token: None,
            ui_dir: None,
            max_upload_bytes: 512 << 20,
            max_concurrent_per_device: 1,
            cancel_grace: Duration::from_secs(10),
            hf_cache: default_hf_cache(),
            allowed_hosts: Vec::new(),
            demo: crate::demo::DemoSettings::from_env(),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("studio.db")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.data_dir.join("jobs")
    }

    /// TensorBoard event files, one folder per job: `tensorboard --logdir <data dir>/runs`.
    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    pub fn datasets_dir(&self) -> PathBuf {
        self.data_dir.join("datasets")
    }

    pub fn presets_dir(&self) -> PathBuf {
        self.data_dir.join("presets")
    }

    /// Whether the bind address only accepts local connections.
    pub fn is_loopback(&self) -> bool {
        is_loopback_name(&self.host)
    }
}

/// The studio's data dir when none is given: `$FINETUNE_STUDIO_HOME`, else
/// `$XDG_DATA_HOME/finetune-studio`, else `~/.local/share/finetune-studio`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FINETUNE_STUDIO_HOME") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("finetune-studio");
    }
    match std::env::var_os("HOME").or_else(|| std::env::var_os("APPDATA")) {
        Some(h) => PathBuf::from(h).join(".local").join("share").join("finetune-studio"),
        None => PathBuf::from("finetune-studio-data"),
    }
}

pub fn is_loopback_name(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

fn default_hf_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(p.into());
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".cache").join("huggingface").join("hub"))
}

#[derive(Clone)]
pub struct AppState {
    pub sup: Supervisor,
    pub cfg: Arc<ServerConfig>,
}

impl AppState {
    pub fn store(&self) -> &Arc<Store> {
        self.sup.store()
    }
}
