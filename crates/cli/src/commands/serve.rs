//! `serve`: runs the studio (API, live events, web UI) until Ctrl-C. The first line on stdout is
//! `listening on http://HOST:PORT`; with a non-loopback host a bearer token is required and the
//! second line is `token: ...` (unless it was read from `--token-file`).

use anyhow::Context;
use clap::Args as ClapArgs;
use finetune_server::{Server, ServerConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(ClapArgs)]
pub struct Args {
    /// Address to listen on. Anything but loopback requires a bearer token.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks any free port.
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// Where the job history (SQLite), outputs, datasets and presets live
    /// (default: $FINETUNE_STUDIO_HOME, else ~/.local/share/finetune-studio).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Read the bearer token from this file instead of generating one.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The built web UI (default: ui/dist when it exists).
    #[arg(long)]
    ui_dir: Option<PathBuf>,
    /// Jobs running at once per device.
    #[arg(long, default_value_t = 1)]
    max_concurrent: usize,
    /// Seconds a cancelled worker gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    cancel_grace_s: u64,
    /// Largest dataset upload in MiB.
    #[arg(long, default_value_t = 512)]
    max_upload_mib: u64,
}

pub(crate) fn default_data_dir() -> PathBuf {
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

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this executable to run workers")?;
    let mut cfg = ServerConfig::new(a.data_dir.clone().unwrap_or_else(default_data_dir), exe);
    cfg.host = a.host.clone();
    cfg.port = a.port;
    cfg.max_concurrent_per_device = a.max_concurrent.max(1);
    cfg.cancel_grace = Duration::from_secs(a.cancel_grace_s);
    cfg.max_upload_bytes = a.max_upload_mib.saturating_mul(1 << 20);
    cfg.ui_dir = a
        .ui_dir
        .clone()
        .or_else(|| Some(PathBuf::from("ui/dist")).filter(|d| d.join("index.html").is_file()));
    let token_from_file = a.token_file.is_some();
    if let Some(f) = &a.token_file {
        let t =
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read the token", f.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(!t.is_empty(), "{}: the token file is empty", f.display());
        cfg.token = Some(t);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = Server::bind(cfg).await?;
        let shown_host = if a.host.contains(':') { format!("[{}]", a.host) } else { a.host.clone() };
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{shown_host}:{}", server.addr().port())?;
        if let (Some(t), false) = (server.token(), token_from_file) {
            writeln!(out, "token: {t}")?;
        }
        out.flush()?;
        drop(out);
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("shutting down; running jobs keep going and pause when their worker notices");
            })
            .await
            .context("the server stopped")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
