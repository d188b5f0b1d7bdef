//! `worker`: runs one training job for the studio's supervisor. It prints the engine's events as
//! NDJSON on stdout (one `TrainEvent` per line, flushed), writes everything else to stderr, and
//! stops on signals: SIGUSR1 or SIGINT pause (finish the step, checkpoint, exit 0), SIGTERM
//! cancels (exit 130). With `--stop-on-stdin-eof` it also pauses when its stdin closes, which is
//! how it notices that the studio that started it has gone. With `--events-file` every event is
//! also appended to that file, so a studio that crashed can recover the steps it never read.
//! The run is monitored (`finetune_monitor::pipeline`): telemetry samples every
//! `FINETUNE_TELEMETRY_MS` (default 2000), anomaly alerts, and TensorBoard files with
//! `--tensorboard-dir`.
//! Exit status: 0 completed or paused, 130 cancelled, 1 failed (after a
//! `{"event":"failed","error":...}` line).

use anyhow::Context;
use clap::Args as ClapArgs;
use finetune_engine::config::TrainConfig;
use finetune_engine::train::{
    EventSink, Interrupter, RunOptions, StopRequest, TrainEvent, TrainStatus, train_with,
};
use finetune_monitor::pipeline::{MonitorOptions, MonitoredRun};
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
    /// With --resume: continue even though the config changed (the studio adapts a job's
    /// micro-batch after it ran out of memory).
    #[arg(long, requires = "resume")]
    force: bool,
    /// Pause (checkpoint and exit) when stdin reaches end of file.
    #[arg(long)]
    stop_on_stdin_eof: bool,
    /// Also append every event (NDJSON) to this file.
    #[arg(long)]
    events_file: Option<PathBuf>,
    /// Write TensorBoard event files into this folder.
    #[arg(long)]
    tensorboard_dir: Option<PathBuf>,
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

/// Where events go: stdout, and the events file when there is one.
struct Outputs {
    file: Option<std::fs::File>,
    stdout_broken: bool,
    stop: Interrupter,
}

impl EventSink for Outputs {
    /// One event per line; a closed stdout means the studio is gone, so the run pauses.
    fn emit(&mut self, event: &TrainEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else { return };
        line.push(b'\n');
        if let Some(f) = &mut self.file {
            // One write per line: a line is whole in the file even if the studio dies.
            if f.write_all(&line).is_err() {
                self.file = None;
            }
        }
        if self.stdout_broken {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            self.stdout_broken = true;
            self.stop.request(StopRequest::Pause);
        }
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
    let file = match &a.events_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open the events file", p.display()))?,
        ),
        None => None,
    };
    let outputs = Outputs { file, stdout_broken: false, stop: stop.clone() };
    let monitor = MonitorOptions {
        tensorboard_dir: a.tensorboard_dir.clone(),
        telemetry_interval: MonitorOptions::telemetry_from_env(),
        gpu_index: MonitorOptions::gpu_of_device(&cfg.model.device),
    };
    let run = MonitoredRun::start(outputs, monitor);
    let result =
        train_with(&cfg, &a.output, RunOptions { resume: a.resume, force: a.force }, &mut run.sink(), &stop);
    run.finish();
    match result {
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
