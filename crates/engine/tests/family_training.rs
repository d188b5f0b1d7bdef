//! Every decoder-only family through the training loop: 10 LoRA AdamW steps from the fixture
//! adapter, with gradient checkpointing on, follow PEFT's loss trajectory, and the adapter we
//! write holds PEFT's trained weights.

mod common;

use candle_core::{DType, Device};
use common::*;
use finetune_engine::config::TrainConfig;
use finetune_engine::train::{Interrupter, TrainEvent, VecSink, train};
use std::path::Path;

const FAMILIES: &[&str] = &[
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "gpt2",
    "gpt_neox",
    "falcon",
    "bloom",
    "mpt",
    "starcoder2",
    "olmo",
    "olmo2",
    "glm",
    "glm4",
    "internlm3",
    "stablelm",
    "granite",
    "opt",
    "gpt_bigcode",
    "mixtral",
    "qwen3_moe",
    "deepseek_v3",
];

fn trajectory(family: &str, dir: &Path) -> Result<(), String> {
    let r = reference(family);
    let (b, t) = r["input_ids"].dims2().unwrap();
    let (ids, labels) = (ids(&r["input_ids"]), labels(&r["labels"]));
    let rows: Vec<String> = (0..b)
        .map(|i| {
            serde_json::json!({"input_ids": &ids[i * t..(i + 1) * t], "labels": &labels[i * t..(i + 1) * t]})
                .to_string()
        })
        .collect();
    let data = dir.join(format!("{family}.jsonl"));
    std::fs::write(&data, rows.join("\n")).unwrap();
    let sets: Vec<String> = [
        format!("model.path=\"{}\"", model_dir(family).display()),
        format!("data.path=\"{}\"", data.display()),
        "data.format=\"tokens\"".into(),
        "data.shuffle=false".into(),
        "train.lr=1e-3".into(),
        "train.scheduler=\"constant\"".into(),
        "train.batch_size=2".into(),
        "train.weight_decay=0.01".into(),
        "train.max_grad_norm=0.0".into(),
        "train.max_steps=10".into(),
        "train.grad_checkpointing=true".into(),
        "lora.dropout=0.0".into(),
        format!("lora.init_from=\"{}\"", adapter_dir(family).display()),
    ]
    .into_iter()
    .chain(device_sets())
    .collect();
    let cfg = TrainConfig::default().with_overrides(&sets).unwrap();
    let out = dir.join(family);
    let mut sink = VecSink::default();
    train(&cfg, &out, false, &mut sink, &Interrupter::new()).map_err(|e| format!("{family}: {e}"))?;
    let ours: Vec<f64> = sink
        .0
        .iter()
        .filter_map(|e| if let TrainEvent::Step { loss, .. } = e { Some(*loss) } else { None })
        .collect();
    let theirs = r["train_losses"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if (a - b).abs() > 1e-4 * b.abs().max(1.0) {
            return Err(format!("{family}: step {i} loss {a} vs PEFT {b}"));
        }
    }
    let written =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in &written {
        let d = rel_diff(t, &r[&format!("trained.{name}")]);
        if d > 1e-4 {
            return Err(format!("{family}: {name} differs from PEFT's trained weight by {d}"));
        }
    }
    Ok(())
}

#[test]
fn every_family_trains_like_peft_with_gradient_checkpointing() {
    let tmp = tempfile::tempdir().unwrap();
    let failures: Vec<String> = FAMILIES.iter().filter_map(|f| trajectory(f, tmp.path()).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
