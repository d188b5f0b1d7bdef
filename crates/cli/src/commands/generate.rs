//! `generate`: continue a prompt. By default the prompt is wrapped as a user message with the
//! model's chat template (when it has one); `--raw` feeds it as plain text.

use clap::Args as ClapArgs;
use finetune_engine::data::ChatMessage;
use finetune_engine::generate::{GenerateOptions, generate};
use finetune_engine::{config::MethodKind, device, layers::AdapterPlan, model, peft::PeftAdapter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(ClapArgs)]
pub struct Args {
    /// A Hugging Face model folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not apply the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dev = device::resolve_device(&a.device)?;
    let dtype = device::resolve_dtype("auto", &dev)?;
    let plan = match &a.adapter {
        Some(dir) => PeftAdapter::read(dir)?.plan(MethodKind::Lora, 0),
        None => AdapterPlan::frozen(),
    };
    let m = model::load_causal_lm(&a.model, plan, dtype, &dev)?;
    let tok = model::load_tokenizer(&a.model)?;
    let ids = if !a.raw && tok.has_chat_template() {
        let text = tok.render_chat(&[ChatMessage::new("user", a.prompt.clone())], true)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&a.prompt, true)?
    };
    let mut stop_ids: Vec<u32> = tok.eos_id().into_iter().collect();
    stop_ids.extend(m.dims.eos_token_id);
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids,
    };
    let out = generate(&m, &ids, &opts)?;
    println!("{}", tok.decode(&out, true)?);
    Ok(ExitCode::SUCCESS)
}
