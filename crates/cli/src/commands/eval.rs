//! `eval`: the token-weighted mean next-token loss of a dataset under a model (+ adapter); for an
//! encoder-decoder, the mean loss of its targets.

use clap::Args as ClapArgs;
use finetune_engine::{
    config::MethodKind, data, device, eval, layers::AdapterPlan, model, peft::PeftAdapter,
};
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
    let m = model::load_model(&a.model, plan, dtype, &dev)?;
    let tok = model::load_tokenizer(&a.model)?;
    let max_positions = match &m {
        model::AnyModel::Causal(c) => c.dims.max_positions,
        model::AnyModel::Seq2Seq(s) => s.dims.max_positions,
    };
    let (data_cfg, note) = cfg.data_for_context(max_positions);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let ds = match &m {
        model::AnyModel::Causal(_) => data::load_dataset(&a.data, &data_cfg, &tok, cfg.train.seed)?,
        model::AnyModel::Seq2Seq(_) => data::load_seq2seq_dataset(&a.data, &data_cfg, &tok, cfg.train.seed)?,
    };
    let r = eval::evaluate_any(&m, &ds.train, cfg.train.batch_size, tok.pad_id())?;
    if a.json {
        println!("{}", serde_json::json!({"loss": r.loss, "perplexity": r.perplexity, "tokens": r.tokens}));
    } else {
        println!("loss {:.6}  perplexity {:.4}  over {} tokens", r.loss, r.perplexity, r.tokens);
    }
    Ok(ExitCode::SUCCESS)
}
