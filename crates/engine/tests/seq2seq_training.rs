//! Encoder-decoder models (T5, BART) through the training loop: 10 LoRA AdamW steps on `tokens`
//! rows `{"input_ids": encoder ids, "labels": decoder ids}` follow PEFT's trajectory, and alpaca
//! rows train as source → target.

mod common;

use candle_core::DType;
use common::*;
use finetune_engine::config::TrainConfig;
use finetune_engine::train::{Interrupter, TrainEvent, VecSink, train};
use std::path::{Path, PathBuf};

/// The reference batch as seq2seq `tokens` rows.
fn reference_dataset(family: &str, dir: &Path) -> PathBuf {
    let r = reference(family);
    let (b, s) = r["input_ids"].dims2().unwrap();
    let (_, t) = r["labels"].dims2().unwrap();
    let (src, labels) = (ids(&r["input_ids"]), labels(&r["labels"]));
    let mut text = String::new();
    for row in 0..b {
        let line = serde_json::json!({"input_ids": &src[row * s..(row + 1) * s], "labels": &labels[row * t..(row + 1) * t]});
        text.push_str(&format!("{line}\n"));
    }
    let p = dir.join("batch.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn config(family: &str, data: &Path, format: &str, extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = vec![
        format!("model.path=\"{}\"", model_dir(family).display()),
        format!("data.path=\"{}\"", data.display()),
        format!("data.format=\"{format}\""),
        "data.shuffle=false".into(),
        "train.lr=1e-3".into(),
        "train.scheduler=\"constant\"".into(),
        "train.batch_size=2".into(),
        "train.weight_decay=0.01".into(),
        "train.max_grad_norm=0.0".into(),
        "lora.dropout=0.0".into(),
    ];
    sets.extend(device_sets());
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::default().with_overrides(&sets).unwrap()
}

fn step_losses(cfg: &TrainConfig, out: &Path) -> Vec<f64> {
    let mut sink = VecSink::default();
    train(cfg, out, false, &mut sink, &Interrupter::new()).unwrap();
    sink.0
        .iter()
        .filter_map(|e| if let TrainEvent::Step { loss, .. } = e { Some(*loss) } else { None })
        .collect()
}

fn peft_trajectory(family: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = reference_dataset(family, tmp.path());
    let init = format!("lora.init_from=\"{}\"", adapter_dir(family).display());
    let cfg = config(family, &data, "tokens", &["train.max_steps=10", &init]);
    let ours = step_losses(&cfg, &tmp.path().join("out"));
    let theirs = reference(family)["train_losses"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (a - b).abs() < 1e-4 * b.abs().max(1.0),
            "{family}: step {i} loss {a} vs PEFT {b}\nours {ours:?}\ntheirs {theirs:?}"
        );
    }
    // The written adapter is a PEFT seq2seq adapter holding PEFT's trained weights.
    let out = tmp.path().join("out");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["task_type"], "SEQ_2_SEQ_LM");
    let r = reference(family);
    let written =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (name, t) in &written {
        let d = rel_diff(t, &r[&format!("trained.{name}")]);
        assert!(d < 1e-4, "{family}: {name} differs from PEFT's trained weight by {d}");
    }
}

#[test]
fn t5_lora_ten_adamw_steps_match_peft_trajectory() {
    peft_trajectory("t5");
}

#[test]
fn bart_lora_ten_adamw_steps_match_peft_trajectory() {
    peft_trajectory("bart");
}

#[test]
fn t5_trains_on_alpaca_rows_as_source_to_target_and_full_fine_tuning_writes_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Two alpaca rows (instruction [+ input] → output) overfit.
    let rows: Vec<String> = std::fs::read_to_string(fixtures().join("data/alpaca.jsonl"))
        .unwrap()
        .lines()
        .take(2)
        .map(String::from)
        .collect();
    let data = tmp.path().join("alpaca.jsonl");
    std::fs::write(&data, rows.join("\n")).unwrap();
    let cfg = config(
        "t5",
        &data,
        "alpaca",
        &["train.max_steps=40", "train.lr=1e-2", "lora.r=8", "lora.targets=\"all-linear\""],
    );
    let losses = step_losses(&cfg, &tmp.path().join("lora"));
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.2 * first, "loss went from {first} to {last}: {losses:?}");

    let cfg = config("t5-tied", &data, "alpaca", &["train.max_steps=2", "method.kind=\"full\""]);
    let out = tmp.path().join("full");
    step_losses(&cfg, &out);
    let m = finetune_engine::model::load_seq2seq_lm(
        &out,
        finetune_engine::layers::AdapterPlan::frozen(),
        DType::F32,
        &device(),
    )
    .unwrap();
    assert_eq!(m.dims.encoder_layers, 2);
}

#[test]
fn padded_seq2seq_batches_equal_their_rows_alone() {
    use finetune_engine::layers::{AdapterPlan, ForwardCtx};
    use finetune_engine::model::{Seq2SeqBatch, load_seq2seq_lm};
    for family in ["t5", "bart"] {
        let m = load_seq2seq_lm(&model_dir(family), AdapterPlan::frozen(), DType::F32, &device()).unwrap();
        let (long_src, short_src): (Vec<u32>, Vec<u32>) = ((3..15).collect(), (20..25).collect());
        let (long_tgt, short_tgt): (Vec<i64>, Vec<i64>) =
            ((30..36).collect(), vec![-100, 41, 42, 43, 44, 45, 46, 47]);
        let ctx = ForwardCtx::eval();
        let loss = |pairs: &[(&[u32], &[i64])]| {
            let (sum, n) = m.loss_sum(&Seq2SeqBatch::collate(pairs, 0), &ctx).unwrap();
            (sum.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), n)
        };
        let (both, n) = loss(&[(&long_src, &long_tgt), (&short_src, &short_tgt)]);
        let (a, na) = loss(&[(&long_src, &long_tgt)]);
        let (b, nb) = loss(&[(&short_src, &short_tgt)]);
        assert_eq!(n, na + nb);
        assert!(
            (both - (a + b)).abs() < 1e-4 * both.abs(),
            "{family}: padded batch {both} vs rows {}",
            a + b
        );
    }
}
