//! `demo`: the studio on the demo in one command. It fetches what is missing (SmolLM2-135M-
//! Instruct, once, into `~/.cache/finetune-studio/`), registers it with the demo dataset, then
//! serves the studio and prints the address of the new-job wizard pre-filled with the demo
//! preset. `--prepare-only` stops after the setup (scripts/studio.sh does that before opening
//! the desktop app). The setup itself is `finetune_server::demo`, shared with `POST /demo`.

use anyhow::Context;
use clap::Args as ClapArgs;
use finetune_server::demo::{self, DemoSettings, DemoSetup};
use finetune_server::state::default_data_dir;
use finetune_server::{Server, ServerConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// Address to listen on (loopback unless you mean to share it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks any free port.
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// The studio's data dir (default: $FINETUNE_STUDIO_HOME, else ~/.local/share/finetune-studio).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The built web UI (default: ui/dist when it exists).
    #[arg(long)]
    ui_dir: Option<PathBuf>,
    /// Train this model folder instead of the downloaded SmolLM2 GGUF (e.g. the Hugging Face
    /// copy of SmolLM2-135M-Instruct); also $FINETUNE_STUDIO_DEMO_MODEL.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Set up the demo and exit without serving.
    #[arg(long)]
    prepare_only: bool,
    /// Also open the wizard in the default browser.
    #[arg(long)]
    open: bool,
}

fn describe(setup: &DemoSetup) -> String {
    format!(
        "demo ready: model {} ({}), dataset {}, preset {}{}",
        setup.model_id,
        setup.model_path,
        setup.dataset_id,
        setup.preset_id,
        if setup.downloaded { " (model downloaded)" } else { "" }
    )
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut settings = DemoSettings::from_env();
    if let Some(m) = &a.model {
        settings.model_override = Some(m.clone());
    }
    if a.prepare_only {
        eprintln!("setting up the demo (the first time, the model is downloaded: about 100 MB)");
        let setup = demo::prepare_data_dir(&settings, &data_dir).context("the demo could not be set up")?;
        println!("{}", describe(&setup));
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("cannot find this executable to run workers")?;
    let mut cfg = ServerConfig::new(data_dir.clone(), exe);
    cfg.host = a.host.clone();
    cfg.port = a.port;
    cfg.demo = settings.clone();
    cfg.ui_dir = a
        .ui_dir
        .clone()
        .or_else(|| Some(PathBuf::from("ui/dist")).filter(|d| d.join("index.html").is_file()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = Server::bind(cfg).await?;
        let shown_host = if a.host.contains(':') { format!("[{}]", a.host) } else { a.host.clone() };
        let base = format!("http://{shown_host}:{}", server.addr().port());
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {base}")?;
        out.flush()?;
        drop(out);
        let store = server.state().store().clone();
        let setup = tokio::task::spawn_blocking(move || demo::prepare(&settings, &store, &data_dir))
            .await?
            .context("the demo could not be set up")?;
        let token = server.token().map(|t| format!("?token={t}")).unwrap_or_default();
        let wizard = format!("{base}/{token}#/new?demo=1");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", describe(&setup))?;
        writeln!(out, "open {wizard}")?;
        out.flush()?;
        drop(out);
        if a.open {
            let _ = std::process::Command::new("xdg-open").arg(&wizard).spawn();
        }
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the server stopped")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
