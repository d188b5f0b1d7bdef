//! QLoRA benchmark: LoRA, LoRA with gradient checkpointing, QLoRA NF4 with and without double
//! quantization, QLoRA int8 and LoRA over a GGUF Q4_K base, on the same weight-dominated model and
//! data, each in its own process so that peak RSS is measured separately. Prints a Markdown table
//! and one JSON line per method.
//!
//! ```text
//! .venv/bin/python tools/bench/make_bench_model.py /tmp/qbench
//! RAYON_NUM_THREADS=1 cargo run --release -p finetune-engine --example quant_bench -- /tmp/qbench [STEPS] [METHODS]
//! ```
//! `METHODS` is a comma-separated subset of `lora,lora-gc,nf4-dq,nf4,int8,gguf-q4k`. The GGUF
//! file is written next to the model (projections Q4_K, embedding Q8_0, head Q6_K, norms F32,
//! q/k rows permuted as llama.cpp does) before the runs.

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use finetune_engine::config::TrainConfig;
use finetune_engine::device;
use finetune_engine::model::{SafetensorsWeights, WeightSource, unpermute_order};
use finetune_engine::train::{Interrupter, TrainEvent, train};
use finetune_engine::{DType, Device};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const METHODS: &[&str] = &["lora", "lora-gc", "nf4-dq", "nf4", "int8", "gguf-q4k"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let (method, dir, steps) = (&args[2], PathBuf::from(&args[3]), args[4].parse::<usize>()?);
        let result = run_one(method, &dir, steps)?;
        println!("RESULT {result}");
        return Ok(());
    }
    let dir = PathBuf::from(
        args.get(1).ok_or_else(|| anyhow::anyhow!("usage: quant_bench BENCH_DIR [STEPS] [METHODS]"))?,
    );
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let methods: Vec<String> = match args.get(3) {
        Some(m) => m.split(',').map(String::from).collect(),
        None => METHODS.iter().map(|s| s.to_string()).collect(),
    };
    if methods.iter().any(|m| m == "gguf-q4k") && !dir.join("model-q4k.gguf").exists() {
        write_gguf(&dir.join("model"), &dir.join("model-q4k.gguf"))?;
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for m in &methods {
        eprintln!("== {m}");
        let out =
            Command::new(&exe).args(["--one", m, &dir.to_string_lossy(), &steps.to_string()]).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            anyhow::bail!("{m} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let v: Value = serde_json::from_str(line)?;
        println!("{v}");
        rows.push(v);
    }
    print_table(&rows);
    Ok(())
}

fn mib(v: &Value) -> String {
    v.as_f64().map(|b| format!("{:.0}", b / (1 << 20) as f64)).unwrap_or_else(|| "-".into())
}

fn print_table(rows: &[Value]) {
    let lora_peak = rows.iter().find(|r| r["method"] == "lora").and_then(|r| r["peak_rss"].as_f64());
    let lora_loss = rows.iter().find(|r| r["method"] == "lora").and_then(|r| r["final_loss"].as_f64());
    println!(
        "\n| method | base MiB | peak RSS MiB | vs LoRA | load peak MiB | act. peak MiB | tok/s | final loss | vs LoRA |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let rel = |v: Option<f64>, base: Option<f64>| match (v, base) {
            (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.4} | {} |",
            r["method"].as_str().unwrap_or("?"),
            mib(&r["base_bytes"]),
            mib(&r["peak_rss"]),
            rel(r["peak_rss"].as_f64(), lora_peak),
            mib(&r["load_peak_rss"]),
            mib(&r["activation_peak"]),
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["final_loss"].as_f64().unwrap_or(f64::NAN),
            rel(r["final_loss"].as_f64(), lora_loss),
        );
    }
}

/// One method in this process: train and report.
fn run_one(method: &str, dir: &Path, steps: usize) -> anyhow::Result<Value> {
    device::init_cpu_threads();
    let model = if method == "gguf-q4k" { dir.join("model-q4k.gguf") } else { dir.join("model") };
    let mut sets = vec![
        format!("model.path=\"{}\"", model.display()),
        format!("data.path=\"{}\"", dir.join("data.jsonl").display()),
        "data.format=\"tokens\"".to_string(),
        "data.shuffle=false".into(),
        "data.max_len=128".into(),
        format!("train.max_steps={steps}"),
        "train.batch_size=4".into(),
        "train.lr=1e-3".into(),
        "train.scheduler=\"constant\"".into(),
        "lora.r=16".into(),
        "lora.alpha=32".into(),
        "lora.dropout=0.0".into(),
        "lora.targets=\"all-linear\"".into(),
    ];
    let extra: &[&str] = match method {
        "lora" => &["method.kind=\"lora\""],
        "lora-gc" | "gguf-q4k" => &["method.kind=\"lora\"", "train.grad_checkpointing=true"],
        "nf4-dq" => &[
            "method.kind=\"qlora\"",
            "quant.kind=\"nf4\"",
            "quant.double_quant=true",
            "quant.compute_dtype=\"f32\"",
        ],
        "nf4" => &[
            "method.kind=\"qlora\"",
            "quant.kind=\"nf4\"",
            "quant.double_quant=false",
            "quant.compute_dtype=\"f32\"",
        ],
        "int8" => &["method.kind=\"qlora\"", "quant.kind=\"int8\"", "quant.compute_dtype=\"f32\""],
        other => anyhow::bail!("unknown method {other}; known: {}", METHODS.join(", ")),
    };
    sets.extend(extra.iter().map(|s| s.to_string()));
    let cfg = TrainConfig::default().with_overrides(&sets)?;
    let out = dir.join(format!("out-{method}"));
    let _ = std::fs::remove_dir_all(&out);
    let start = std::time::Instant::now();
    let mut load_peak = 0u64;
    let mut load_s = 0.0;
    let mut steps_seen = Vec::new();
    let mut sink = |e: &TrainEvent| match e {
        TrainEvent::Started { .. } => {
            load_peak = device::process_memory().1;
            load_s = start.elapsed().as_secs_f64();
        }
        TrainEvent::Step { loss, tokens, elapsed_s, mem, .. } => {
            steps_seen.push((*loss, *tokens, *elapsed_s, mem.clone()))
        }
        _ => {}
    };
    train(&cfg, &out, false, &mut sink, &Interrupter::new())?;
    let n = steps_seen.len();
    anyhow::ensure!(n >= 3, "too few steps");
    // Throughput without the first step (warm-up).
    let tokens: u64 = steps_seen[1..].iter().map(|s| s.1).sum();
    let secs = steps_seen[n - 1].2 - steps_seen[0].2;
    let last = &steps_seen[n - 1].3;
    let tail = 5.min(n);
    let final_loss = steps_seen[n - tail..].iter().map(|s| s.0).sum::<f64>() / tail as f64;
    Ok(json!({
        "method": method,
        "steps": n,
        "first_loss": steps_seen[0].0,
        "final_loss": final_loss,
        "last_step_loss": steps_seen[n - 1].0,
        "tokens_per_s": tokens as f64 / secs,
        "load_s": load_s,
        "load_peak_rss": load_peak,
        "peak_rss": last.process_peak_bytes,
        "activation_peak": steps_seen.iter().filter_map(|s| s.3.activation_peak_bytes).max(),
        "base_bytes": last.base_bytes,
        "trainable_bytes": last.trainable_bytes,
        "optimizer_bytes": last.optimizer_bytes,
        "threads": candle_core::utils::get_num_threads(),
    }))
}

/// llama.cpp's name for a Hugging Face tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    const BLOCK: &[(&str, &str)] = &[
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ];
    let base = hf.strip_suffix(".weight")?;
    Some(match base {
        "model.embed_tokens" => "token_embd.weight".into(),
        "model.norm" => "output_norm.weight".into(),
        "lm_head" => "output.weight".into(),
        _ => {
            let rest = base.strip_prefix("model.layers.")?;
            let (i, module) = rest.split_once('.')?;
            let (_, g) = BLOCK.iter().find(|(h, _)| *h == module)?;
            format!("blk.{i}.{g}.weight")
        }
    })
}

/// Writes a GGUF copy of an HF llama folder: projections Q4_K, embedding Q8_0, head Q6_K.
fn write_gguf(model: &Path, out: &Path) -> anyhow::Result<()> {
    eprintln!("writing {}", out.display());
    let cfg: Value = serde_json::from_slice(&std::fs::read(model.join("config.json"))?)?;
    let tok: Value = serde_json::from_slice(&std::fs::read(model.join("tokenizer.json"))?)?;
    let st = SafetensorsWeights::from_dir(model)?;
    let u = |k: &str| cfg[k].as_u64().unwrap_or(0) as u32;
    let (heads, kv) = (u("num_attention_heads") as usize, u("num_key_value_heads") as usize);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in st.names() {
        let Some(g) = gguf_name(&name) else { continue };
        let mut t = st.load(&name, DType::F32, &Device::Cpu)?;
        let permute = if name.ends_with("q_proj.weight") {
            Some(heads)
        } else if name.ends_with("k_proj.weight") {
            Some(kv)
        } else {
            None
        };
        if let Some(h) = permute {
            // llama.cpp stores original row o at row order[o]: invert the loader's un-permutation.
            let order = unpermute_order(t.dim(0)?, h)
                .ok_or_else(|| anyhow::anyhow!("{name}: rows do not split into heads"))?;
            let mut inverse = vec![0u32; order.len()];
            for (o, &s) in order.iter().enumerate() {
                inverse[s] = o as u32;
            }
            t = t.index_select(&candle_core::Tensor::new(inverse, &Device::Cpu)?, 0)?;
        }
        let dtype = match g.as_str() {
            _ if t.rank() == 1 => GgmlDType::F32,
            "token_embd.weight" => GgmlDType::Q8_0,
            "output.weight" => GgmlDType::Q6K,
            _ => GgmlDType::Q4K,
        };
        tensors.push((g, QTensor::quantize(&t, dtype)?));
    }
    let mut vocab: Vec<(String, u64)> = tok["model"]["vocab"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    vocab.sort_by_key(|(_, id)| *id);
    let special: Vec<u64> = tok["added_tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["id"].as_u64()).collect())
        .unwrap_or_default();
    let merges: Vec<gguf_file::Value> = tok["model"]["merges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| match m {
                    Value::Array(p) => p.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
                    v => v.as_str().unwrap_or_default().to_string(),
                })
                .map(gguf_file::Value::String)
                .collect()
        })
        .unwrap_or_default();
    use gguf_file::Value as V;
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(u("num_hidden_layers"))),
        ("llama.context_length", V::U32(u("max_position_embeddings"))),
        ("llama.embedding_length", V::U32(u("hidden_size"))),
        ("llama.feed_forward_length", V::U32(u("intermediate_size"))),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv as u32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            V::F32(cfg["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32),
        ),
        (
            "llama.rope.freq_base",
            V::F32(
                cfg["rope_parameters"]["rope_theta"].as_f64().or(cfg["rope_theta"].as_f64()).unwrap_or(1e4)
                    as f32,
            ),
        ),
        ("llama.vocab_size", V::U32(u("vocab_size"))),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.tokens", V::Array(vocab.iter().map(|(t, _)| V::String(t.clone())).collect())),
        (
            "tokenizer.ggml.token_type",
            V::Array(vocab.iter().map(|(_, id)| V::I32(if special.contains(id) { 3 } else { 1 })).collect()),
        ),
        ("tokenizer.ggml.merges", V::Array(merges)),
        ("tokenizer.ggml.eos_token_id", V::U32(u("eos_token_id"))),
    ];
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}
