//! `train`: runs the engine's training loop with a progress bar, or NDJSON events with `--json`.
//! Ctrl-C pauses: the current step finishes, a checkpoint is written, and `--resume` continues.

use crate::progress::Progress;
use clap::Args as ClapArgs;
use finetune_engine::train::{Interrupter, RunOptions, TrainEvent, TrainStatus, train_with};
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
    let mut progress = Progress::new(!json);
    let mut sink = |e: &TrainEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(e) {
                println!("{line}");
            }
        } else {
            progress.on_event(e);
        }
    };
    let outcome =
        train_with(&cfg, &a.output, RunOptions { resume: a.resume, force: a.force }, &mut sink, &stop);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"event": "failed", "error": e.to_string()}));
            }
            return Err(e.into());
        }
    };
    drop(sink);
    progress.finish();
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
