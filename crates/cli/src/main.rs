//! `finetune-studio`: the command line of Finetune Studio. Training, evaluation, generation and
//! merging run the engine directly; errors are printed in full and exit with status 1.

mod commands;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "finetune-studio",
    version,
    about = "Fine-tune open LLMs on your own machine with LoRA, QLoRA or full fine-tuning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an adapter (or a full model) on a dataset.
    Train(commands::train::Args),
    /// Mean next-token loss and perplexity of a model (with an optional adapter) on a dataset.
    Eval(commands::eval::Args),
    /// Generate text from a prompt.
    Generate(commands::generate::Args),
    /// Fold an adapter into its base model and write a Hugging Face folder.
    Merge(commands::merge::Args),
    /// Run the studio: HTTP API, live events and web UI.
    Serve(commands::serve::Args),
    /// Run one job for the studio (NDJSON events on stdout); started by `serve`.
    Worker(commands::worker::Args),
    /// Write a shareable report of a studio job: charts (PNG, SVG), summary (Markdown, HTML),
    /// metric history (CSV, MLflow JSON).
    Report(commands::report::Args),
    /// Set up the demo (SmolLM2-135M learns to answer in JSON) and serve the studio on it.
    Demo(commands::demo::Args),
}

fn main() -> ExitCode {
    finetune_engine::device::init_cpu_threads();
    finetune_engine::device::tune_allocator();
    let cli = Cli::parse();
    // Backward passes recurse through the graph: run on a thread with a generous stack.
    let run = std::thread::Builder::new().stack_size(256 << 20).spawn(move || match cli.command {
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Worker(a) => commands::worker::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Demo(a) => commands::demo::run(a),
    });
    let result = match run.map(|h| h.join()) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(anyhow::anyhow!("internal error: the command panicked")),
        Err(e) => Err(anyhow::anyhow!("cannot start the command thread: {e}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
