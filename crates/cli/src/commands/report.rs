//! `report`: a shareable report of a studio job, read from the studio's database: the chart of
//! loss, eval loss, learning rate and memory (PNG and SVG), the summary (Markdown and one
//! self-contained HTML page) and the metric history (CSV, MLflow JSON), written to a folder.

use anyhow::Context;
use clap::Args as ClapArgs;
use finetune_jobs::{JobFilter, Store};
use finetune_monitor::export;
use finetune_monitor::report::{ReportFormat, RunRecord, render};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// The job: its id, or its name (the newest job of that name).
    job: String,
    /// The studio's data folder (default: as `serve`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the files (default: `<data dir>/jobs/<id>/report`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let data_dir = a.data_dir.unwrap_or_else(super::serve::default_data_dir);
    let db = data_dir.join("studio.db");
    anyhow::ensure!(db.exists(), "{}: no studio database here (pass --data-dir)", db.display());
    let store = Store::open(&db).with_context(|| format!("{}", db.display()))?;
    let id = match store.job(&a.job)? {
        Some(j) => j.id,
        None => {
            let filter = JobFilter { search: Some(a.job.clone()), limit: 1000, ..Default::default() };
            let (jobs, _) = store.list_jobs(&filter)?;
            let named = jobs.into_iter().filter(|j| j.name == a.job).max_by_key(|j| j.created_at);
            named.with_context(|| format!("no job with the id or name {:?} in {}", a.job, db.display()))?.id
        }
    };
    let run = RunRecord::load(&store, &id)?;
    let out = a.out.unwrap_or_else(|| data_dir.join("jobs").join(&id).join("report"));
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create the folder", out.display()))?;
    let mut files = Vec::new();
    for format in ReportFormat::ALL {
        let bytes = render(&run, format).map_err(anyhow::Error::msg)?;
        files.push((format!("report.{}", format.extension()), bytes));
    }
    files.push(("metrics.csv".into(), export::csv(&run).into_bytes()));
    files.push(("metrics.mlflow.json".into(), format!("{:#}\n", export::mlflow_json(&run)).into_bytes()));
    for (name, bytes) in files {
        let path = out.join(&name);
        std::fs::write(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
