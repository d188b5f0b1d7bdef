//! `merge`: base model + PEFT adapter → a standalone Hugging Face folder.

use clap::Args as ClapArgs;
use finetune_engine::{config::MethodKind, device, export, model, peft::PeftAdapter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Dtype of the written weights: auto (the model's own on CPU: f32), f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dev = finetune_engine::Device::Cpu;
    let dtype = device::resolve_dtype(&a.dtype, &dev)?;
    let adapter = PeftAdapter::read(&a.adapter)?;
    let m = model::load_model(&a.model, adapter.plan(MethodKind::Lora, 0), dtype, &dev)?;
    export::write_hf_folder(m.as_dyn(), &a.model, &a.output)?;
    eprintln!("merged {} adapted modules into {}", m.adapted().len(), a.output.display());
    Ok(ExitCode::SUCCESS)
}
