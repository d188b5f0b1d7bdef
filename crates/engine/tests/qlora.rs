//! QLoRA on the tiny llama fixture against transformers + bitsandbytes + PEFT
//! (`fixtures/reference/bnb_qlora_llama.safetensors`): the model loaded 4-bit (NF4, double
//! quantization, f32 compute) and prepared with `prepare_model_for_kbit_training`, with llama's
//! adapter. Logits, loss and every LoRA gradient through the quantized base must match, and the
//! in-model quantized weights must dequantize to exactly what bitsandbytes holds.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use finetune_engine::arch;
use finetune_engine::config::MethodKind;
use finetune_engine::layers::{ForwardCtx, LayerFactory};
use finetune_engine::model::{CausalLm, HfConfig, SafetensorsWeights, WeightSource};
use finetune_engine::peft::PeftAdapter;
use finetune_engine::quant::{QuantKind, QuantSpec};
use std::sync::Arc;

const TOL: f64 = 1e-4;

fn qlora_llama(spec: QuantSpec) -> CausalLm {
    let dir = model_dir("llama");
    let cfg = HfConfig::from_dir(&dir).unwrap();
    let (spec_arch, dims) = arch::resolve(&cfg).unwrap();
    let weights: Arc<dyn WeightSource> = Arc::new(SafetensorsWeights::from_dir(&dir).unwrap());
    let plan = PeftAdapter::read(&adapter_dir("llama")).unwrap().plan(MethodKind::Qlora, 0);
    let factory = LayerFactory::new(weights, DType::F32, device(), plan).with_quant(spec);
    CausalLm::build(spec_arch, dims, &factory).unwrap()
}

#[test]
fn lora_gradients_through_an_nf4_base_match_peft_and_bitsandbytes() {
    let p = fixtures().join("reference/bnb_qlora_llama.safetensors");
    let r = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let spec = QuantSpec { kind: QuantKind::Nf4, double_quant: true, block_size: 64, compute: DType::F32 };
    let model = qlora_llama(spec);
    assert_eq!(model.adapted.len(), 14, "every projection carries the adapter");

    // The quantized base holds exactly bitsandbytes' weights.
    let (_, q) = model.linears().into_iter().find(|(p, _)| p == "model.layers.0.self_attn.q_proj").unwrap();
    let base = q.as_lora().expect("adapted").base.merged_weight().unwrap();
    let d = rel_diff(&base, &r["nf4.layers.0.q_proj.dequant"]);
    assert_eq!(d, 0.0, "dequantized q_proj differs from bitsandbytes");
    let blocks: Vec<_> =
        model.linears().into_iter().filter(|(p, _)| p.starts_with("model.layers.")).collect();
    let params: usize = blocks.iter().map(|(_, l)| l.dims().0 * l.dims().1).sum();
    let bytes: usize = blocks.iter().map(|(_, l)| l.base_bytes()).sum();
    assert!((bytes as f64) < 0.55 * params as f64, "NF4 + double quant: {bytes} bytes for {params} weights");

    let (b, t) = r["input_ids"].dims2().unwrap();
    let ids = ids(&r["input_ids"]);
    let logits = model.forward_logits(&ids, b, t).unwrap();
    let d = rel_diff(&logits, &r["nf4.logits"]);
    assert!(d < TOL, "QLoRA logits differ from PEFT + bitsandbytes by {d}");
    let (loss, _) = model.loss(&ids, &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
    let (ours, theirs) = (scalar(&loss), scalar(&r["nf4.loss"]));
    assert!((ours - theirs).abs() < TOL * theirs.abs().max(1.0), "QLoRA loss {ours} vs {theirs}");
    let grads = loss.backward().unwrap();
    let trainable = model.trainable();
    assert_eq!(trainable.len(), 28);
    for (name, var) in &trainable {
        let key = format!("nf4.grad.base_model.model.{name}");
        let expected: &Tensor = r.get(&key).unwrap_or_else(|| panic!("no reference {key}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient reached {name}"));
        let d = rel_diff(got, expected);
        assert!(d < TOL, "gradient of {name} differs from PEFT + bitsandbytes by {d}");
    }
}

#[test]
fn every_quantization_kind_deviates_from_the_dense_model_as_much_as_bitsandbytes_nf4_does() {
    let dense = finetune_engine::model::load_causal_lm(
        &model_dir("llama"),
        PeftAdapter::read(&adapter_dir("llama")).unwrap().plan(MethodKind::Lora, 0),
        DType::F32,
        &device(),
    )
    .unwrap();
    let r = reference("llama");
    let bnb = candle_core::safetensors::load(
        fixtures().join("reference/bnb_qlora_llama.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (b, t) = r["input_ids"].dims2().unwrap();
    let input = ids(&r["input_ids"]);
    let dense_logits = dense.forward_logits(&input, b, t).unwrap();
    // How far bitsandbytes' NF4 + double quant moves these random tiny weights' logits.
    let bnb_dev = rel_diff(&bnb["nf4.logits"], &dense_logits);
    let logits = |kind, dq, compute| {
        let m = qlora_llama(QuantSpec { kind, double_quant: dq, block_size: 64, compute });
        m.forward_logits(&input, b, t).unwrap()
    };
    for (kind, dq, lo, hi) in [
        (QuantKind::Nf4, false, 0.5, 1.5),
        (QuantKind::Fp4, true, 0.5, 1.5),
        (QuantKind::Int8, false, 0.0, 0.2),
    ] {
        let d = rel_diff(&logits(kind, dq, DType::F32), &dense_logits) / bnb_dev;
        assert!(d > lo && d < hi, "{kind:?} (dq {dq}): deviation {d} x bitsandbytes NF4's");
    }
    // bf16 compute rounds operands: close to, but not exactly, the f32 computation.
    let d = rel_diff(&logits(QuantKind::Nf4, true, DType::BF16), &logits(QuantKind::Nf4, true, DType::F32));
    assert!(d > 0.0 && d < 0.05, "bf16 compute moves logits by {d}");
}

/// Writes the reference batch as a `tokens` dataset.
fn tokens_dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let r = reference("llama");
    let (b, t) = r["input_ids"].dims2().unwrap();
    let (ids, labels) = (ids(&r["input_ids"]), labels(&r["labels"]));
    let mut text = String::new();
    for row in 0..b {
        let line = serde_json::json!({"input_ids": &ids[row * t..(row + 1) * t], "labels": &labels[row * t..(row + 1) * t]});
        text.push_str(&format!("{line}\n"));
    }
    let p = dir.join("batch.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn qlora_training_reports_where_memory_goes_and_learns() {
    use finetune_engine::config::TrainConfig;
    use finetune_engine::train::{Interrupter, MemoryStats, TrainEvent, VecSink, train};
    let tmp = tempfile::tempdir().unwrap();
    let data = tokens_dataset(tmp.path());
    let run = |method: &str, extra: &[&str]| -> (Vec<f64>, MemoryStats) {
        let mut sets = vec![
            format!("model.path=\"{}\"", model_dir("llama").display()),
            format!("data.path=\"{}\"", data.display()),
            "data.format=\"tokens\"".to_string(),
            "train.max_steps=6".into(),
            "train.lr=3e-3".into(),
            "train.batch_size=2".into(),
            "lora.targets=\"all-linear\"".into(),
            "lora.dropout=0.0".into(),
            format!("method.kind=\"{method}\""),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        let cfg = TrainConfig::default().with_overrides(&sets).unwrap();
        let mut sink = VecSink::default();
        train(&cfg, &tmp.path().join(method), false, &mut sink, &Interrupter::new()).unwrap();
        let steps: Vec<(f64, MemoryStats)> = sink
            .0
            .into_iter()
            .filter_map(|e| if let TrainEvent::Step { loss, mem, .. } = e { Some((loss, mem)) } else { None })
            .collect();
        let mem = steps.last().unwrap().1.clone();
        (steps.into_iter().map(|s| s.0).collect(), mem)
    };
    let (lora_losses, lora) = run("lora", &[]);
    let (qlora_losses, qlora) = run("qlora", &["quant.compute_dtype=\"f32\""]);
    assert!(qlora_losses[5] < qlora_losses[0] - 0.1, "QLoRA learns: {qlora_losses:?}");
    assert!(
        (qlora_losses[5] - lora_losses[5]).abs() < 0.05 * lora_losses[5],
        "{qlora_losses:?} vs {lora_losses:?}"
    );
    assert!(
        qlora.base_bytes * 10 < lora.base_bytes * 6,
        "base: QLoRA {} vs LoRA {}",
        qlora.base_bytes,
        lora.base_bytes
    );
    assert_eq!(qlora.trainable_bytes, lora.trainable_bytes);
    assert_eq!(qlora.optimizer_bytes, 2 * qlora.trainable_bytes, "AdamW keeps two f32 moments");
    assert!(qlora.process_peak_bytes >= qlora.process_rss_bytes && qlora.process_rss_bytes > 0);
    if cfg!(target_os = "linux") {
        let step_peak = qlora.step_peak_bytes.expect("Linux reports the step's peak");
        assert!(step_peak <= qlora.process_peak_bytes);
        assert!(qlora.activation_peak_bytes.is_some());
    }
}
