//! `train`: runs the engine's training loop with a progress bar, or NDJSON events with `--json`.
//! Ctrl-C pauses: the current step finishes, a checkpoint is written, and `--resume` continues.
//! The run is monitored like a studio job: telemetry, anomaly alerts and TensorBoard files
//! (`tensorboard --logdir <output>/tensorboard`).

use crate::progress::Progress;
use clap::Args as ClapArgs;
use finetune_engine::train::{EventSink, Interrupter, RunOptions, TrainEvent, TrainStatus, train_with};
use finetune_monitor::pipeline::{MonitorOptions, MonitoredRun};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// A Hugging Face model folder or a GGUF file (llama.cpp / Ollama).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The dataset (JSONL or JSON array).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder for the adapter, checkpoints and logs.
    #[arg(long)]
    output: PathBuf,
    /// A TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Print one JSON event per line instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Continue from the newest checkpoint in the output folder (with its saved config).
    #[arg(long)]
    resume: bool,
    /// With --resume: continue even if settings that change the result differ from the checkpoint's.
    #[arg(long, requires = "resume")]
    force: bool,
    /// TensorBoard event files go here (default: `<output>/tensorboard`).
    #[arg(long)]
    tensorboard_dir: Option<PathBuf>,
    /// Write no TensorBoard files.
    #[arg(long, conflicts_with = "tensorboard_dir")]
    no_tensorboard: bool,
}

/// What the command prints: NDJSON events, or the progress bar.
enum Console {
    Json,
    Bar(Progress),
}

impl EventSink for Console {
    fn emit(&mut self, e: &TrainEvent) {
        match self {
            Self::Json => {
                if let Ok(line) = serde_json::to_string(e) {
                    println!("{line}");
                }
            }
            Self::Bar(p) => p.on_event(e),
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let saved = a.output.join("train_config.toml");
    let config_file =
        if a.resume && a.config.is_none() && saved.exists() { Some(saved) } else { a.config.clone() };
    let mut overrides = a.set.clone();
    if let Some(m) = &a.model {
        overrides.push(format!("model.path={}", toml_string(m)));
    }
    if let Some(d) = &a.data {
        overrides.push(format!("data.path={}", toml_string(d)));
    }
    let cfg = super::load_config(config_file.as_deref(), &overrides)?;

    let stop = Interrupter::new();
    signal_hook::flag::register_usize(signal_hook::consts::SIGINT, stop.flag(), Interrupter::PAUSE)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, stop.flag(), Interrupter::CANCEL)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGUSR1, stop.flag(), Interrupter::PAUSE)?;

    let json = a.json;
    let console = if json { Console::Json } else { Console::Bar(Progress::new(true)) };
    let monitor = MonitorOptions {
        tensorboard_dir: (!a.no_tensorboard)
            .then(|| a.tensorboard_dir.clone().unwrap_or_else(|| a.output.join("tensorboard"))),
        telemetry_interval: MonitorOptions::telemetry_from_env(),
        gpu_index: MonitorOptions::gpu_of_device(&cfg.model.device),
    };
    let run = MonitoredRun::start(console, monitor);
    let outcome =
        train_with(&cfg, &a.output, RunOptions { resume: a.resume, force: a.force }, &mut run.sink(), &stop);
    let console = run.finish();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"event": "failed", "error": e.to_string()}));
            }
            return Err(e.into());
        }
    };
    if let Console::Bar(mut progress) = console {
        progress.finish();
    }
    if !json {
        match outcome.status {
            TrainStatus::Completed => {
                eprintln!("done: final loss {:.4}, adapter in {}", outcome.final_loss, a.output.display())
            }
            TrainStatus::Paused => eprintln!(
                "paused at step {}: continue with --resume --output {}",
                outcome.step,
                a.output.display()
            ),
            TrainStatus::Cancelled => eprintln!("cancelled at step {}", outcome.step),
        }
    }
    Ok(match outcome.status {
        TrainStatus::Completed | TrainStatus::Paused => ExitCode::SUCCESS,
        TrainStatus::Cancelled => ExitCode::from(130),
    })
}

/// A path as a TOML string literal for `--set`.
fn toml_string(p: &std::path::Path) -> String {
    toml_escape(&p.to_string_lossy())
}

fn toml_escape(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
