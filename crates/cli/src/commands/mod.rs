//! One module per subcommand; each parses its arguments and forwards to the engine.

pub mod demo;
pub mod eval;
pub mod generate;
pub mod merge;
pub mod report;
pub mod serve;
pub mod train;
pub mod worker;

use anyhow::Context;
use finetune_engine::config::TrainConfig;
use std::path::Path;

/// The config from an optional TOML file, then `--set` overrides.
pub fn load_config(file: Option<&Path>, overrides: &[String]) -> anyhow::Result<TrainConfig> {
    let base = match file {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    base.with_overrides(overrides).context("invalid --set")
}
