//! `eval`: the token-weighted mean next-token loss of a dataset under a model (+ adapter).

use clap::Args as ClapArgs;
use finetune_engine::{config::MethodKind, data, device, eval, layers::AdapterPlan, model, peft::PeftAdapter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// A Hugging Face model folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Print `{"loss", "perplexity", "tokens"}` as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = super::load_config(a.config.as_deref(), &a.set)?;
    cfg.data.eval_fraction = 0.0;
    cfg.data.shuffle = false;
    let dev = device::resolve_device(&cfg.model.device)?;
    let dtype = device::resolve_dtype(&cfg.model.dtype, &dev)?;
    let plan = match &a.adapter {
        Some(dir) => PeftAdapter::read(dir)?.plan(MethodKind::Lora, 0),
        None => AdapterPlan::frozen(),
    };
    let m = model::load_causal_lm(&a.model, plan, dtype, &dev)?;
    let tok = model::load_tokenizer(&a.model)?;
    let ds = data::load_dataset(&a.data, &cfg.data, &tok, cfg.train.seed)?;
    let r = eval::evaluate(&m, &ds.train, cfg.train.batch_size, tok.pad_id())?;
    if a.json {
        println!("{}", serde_json::json!({"loss": r.loss, "perplexity": r.perplexity, "tokens": r.tokens}));
    } else {
        println!("loss {:.6}  perplexity {:.4}  over {} tokens", r.loss, r.perplexity, r.tokens);
    }
    Ok(ExitCode::SUCCESS)
}
