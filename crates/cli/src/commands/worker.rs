//! `worker`: runs one training job for the studio's supervisor. It prints the engine's events as
//! NDJSON on stdout (one `TrainEvent` per line, flushed), writes everything else to stderr, and
//! stops on signals: SIGUSR1 or SIGINT pause (finish the step, checkpoint, exit 0), SIGTERM
//! cancels (exit 130). With `--stop-on-stdin-eof` it also pauses when its stdin closes, which is
//! how it notices that the studio that started it has gone. Exit status: 0 completed or paused,
//! 130 cancelled, 1 failed (after a `{"event":"failed","error":...}` line).

use anyhow::Context;
use clap::Args as ClapArgs;
use finetune_engine::config::TrainConfig;
use finetune_engine::train::{Interrupter, StopRequest, TrainEvent, TrainStatus, train};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// The training config: a `.json` file (the studio's job config) or a TOML file.
    #[arg(long)]
    config: PathBuf,
    /// Output folder for the adapter, checkpoints and logs.
    #[arg(long)]
    output: PathBuf,
    /// Continue from the newest checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Pause (checkpoint and exit) when stdin reaches end of file.
    #[arg(long)]
    stop_on_stdin_eof: bool,
}

fn load(path: &Path) -> anyhow::Result<TrainConfig> {
    if path.extension().is_some_and(|e| e == "json") {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Ok(TrainConfig::from_json(value).with_context(|| format!("{}", path.display()))?)
    } else {
        Ok(TrainConfig::from_toml_file(path)?)
    }
}

/// One event per line; a closed stdout means the studio is gone, so the run pauses.
fn emit(event: &TrainEvent, stop: &Interrupter, broken: &mut bool) {
    if *broken {
        return;
    }
    let mut out = std::io::stdout().lock();
    let ok =
        serde_json::to_writer(&mut out, event).is_ok() && out.write_all(b"\n").is_ok() && out.flush().is_ok();
    if !ok {
        *broken = true;
        stop.request(StopRequest::Pause);
    }
}

fn fail(error: &str) {
    let line = serde_json::json!({"event": "failed", "error": error});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = match load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            fail(&format!("{e:#}"));
            return Err(e);
        }
    };
    let stop = Interrupter::new();
    signal_hook::flag::register_usize(signal_hook::consts::SIGINT, stop.flag(), Interrupter::PAUSE)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGUSR1, stop.flag(), Interrupter::PAUSE)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, stop.flag(), Interrupter::CANCEL)?;
    if a.stop_on_stdin_eof {
        let stop = stop.clone();
        std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            stop.request(StopRequest::Pause);
        })?;
    }
    let mut broken = false;
    let mut sink = |e: &TrainEvent| emit(e, &stop, &mut broken);
    match train(&cfg, &a.output, a.resume, &mut sink, &stop) {
        Ok(outcome) => Ok(match outcome.status {
            TrainStatus::Completed | TrainStatus::Paused => ExitCode::SUCCESS,
            TrainStatus::Cancelled => ExitCode::from(130),
        }),
        Err(e) => {
            fail(&e.to_string());
            Err(e.into())
        }
    }
}
