//! GGUF bases: tiny llama GGUF files (Q4_0/Q4_1/Q8_0/F16 tensors, q/k permuted as llama.cpp
//! writes them, tokenizer and chat template in the metadata) written by
//! `tools/fixtures/make_fixtures.py --only gguf`, against transformers' own GGUF loader. Also:
//! training LoRA on a GGUF base writes a PEFT adapter with Hugging Face module names, and broken
//! files are errors that name the file and the tensor.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use finetune_engine::config::{MethodKind, TrainConfig};
use finetune_engine::data::ChatMessage;
use finetune_engine::layers::{AdapterPlan, ForwardCtx};
use finetune_engine::model::{ModelSource, load_causal_lm, load_tokenizer};
use finetune_engine::peft::PeftAdapter;
use finetune_engine::train::{Interrupter, TrainEvent, VecSink, train};
use std::collections::HashMap;
use std::path::PathBuf;

fn gguf(label: &str) -> PathBuf {
    fixtures().join(format!("gguf/tiny-llama-{label}.gguf"))
}

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference/gguf_llama.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn tiny_gguf_logits_and_loss_match_transformers_gguf_loader() {
    let r = refs();
    let (b, t) = r["input_ids"].dims2().unwrap();
    let input = ids(&r["input_ids"]);
    for label in ["untied", "tied"] {
        let source = ModelSource::open(&gguf(label)).unwrap();
        assert!(source.is_gguf());
        let dims = source.dims().unwrap();
        assert_eq!((dims.layers, dims.heads, dims.kv_heads, dims.hidden, dims.vocab), (2, 4, 2, 64, 384));
        assert_eq!(dims.tie_embeddings, label == "tied");
        // q/k come back un-permuted: the dense view of q_proj is transformers' weight.
        let q = source.weights.load("model.layers.0.self_attn.q_proj.weight", DType::F32, &Device::Cpu).unwrap();
        assert!(rel_diff(&q, &r[&format!("{label}.layers.0.q_proj")]) < 1e-6, "{label}: q_proj permutation");
        let k = source.weights.load("model.layers.1.self_attn.k_proj.weight", DType::F32, &Device::Cpu).unwrap();
        assert!(rel_diff(&k, &r[&format!("{label}.layers.1.k_proj")]) < 1e-6, "{label}: k_proj permutation");

        let model = source.build(AdapterPlan::frozen(), None, DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward_logits(&input, b, t).unwrap();
        let d = rel_diff(&logits, &r[&format!("{label}.logits")]);
        assert!(d < 1e-4, "{label}: logits differ from transformers by {d}");
        let (loss, _) = model.loss(&input, &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
        let (ours, theirs) = (scalar(&loss), scalar(&r[&format!("{label}.loss")]));
        assert!((ours - theirs).abs() < 1e-4 * theirs.abs(), "{label}: loss {ours} vs {theirs}");

        // Block-quantized projections stay quantized; the F16 ffn_down is dense.
        let bytes: HashMap<String, usize> = model.linears().into_iter().map(|(p, l)| (p, l.base_bytes())).collect();
        assert_eq!(bytes["model.layers.0.self_attn.q_proj"], 64 * 64 / 32 * 18, "Q4_0 q_proj kept as blocks");
        assert_eq!(bytes["model.layers.0.self_attn.k_proj"], 32 * 64 / 32 * 20, "Q4_1 k_proj kept as blocks");
        assert_eq!(bytes["model.layers.0.mlp.down_proj"], 64 * 128 * 4, "F16 weights load dense (f32)");
    }
}

#[test]
fn tokenizer_and_chat_template_come_from_gguf_metadata() {
    let r = refs();
    let tok = load_tokenizer(&gguf("untied")).unwrap();
    let text = tok.render_chat(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    assert!(text.starts_with("<|im_start|>system\n") && text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    assert_eq!(tok.encode(&text, false).unwrap(), ids(&r["chat_ids"]), "chat ids as transformers encodes them");
    let plain = "Hello world! The quick brown fox, 12345 café";
    assert_eq!(tok.encode(plain, true).unwrap(), ids(&r["plain_ids"]));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.decode(&tok.encode(plain, false).unwrap(), false).unwrap(), plain);
}

fn tokens_dataset(dir: &std::path::Path) -> PathBuf {
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
fn lora_trains_on_a_gguf_base_and_saves_a_peft_adapter_with_hf_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tokens_dataset(tmp.path());
    let sets = [
        format!("model.path=\"{}\"", gguf("untied").display()),
        format!("data.path=\"{}\"", data.display()),
        "data.format=\"tokens\"".into(),
        "train.max_steps=8".into(),
        "train.lr=3e-3".into(),
        "train.batch_size=2".into(),
        "lora.targets=\"all-linear\"".into(),
        "lora.dropout=0.0".into(),
    ];
    let cfg = TrainConfig::default().with_overrides(&sets).unwrap();
    let out = tmp.path().join("out");
    let mut sink = VecSink::default();
    train(&cfg, &out, false, &mut sink, &Interrupter::new()).unwrap();
    let losses: Vec<f64> =
        sink.0.iter().filter_map(|e| if let TrainEvent::Step { loss, .. } = e { Some(*loss) } else { None }).collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < losses[0] - 0.1, "LoRA on a GGUF base learns: {losses:?}");

    let adapter = PeftAdapter::read(&out).unwrap();
    assert_eq!(adapter.modules.len(), 14);
    assert!(adapter.modules.iter().all(|m| m.starts_with("model.layers.")), "{:?}", adapter.modules);
    assert!(adapter.modules.contains(&"model.layers.1.self_attn.q_proj".to_string()));
    // The adapter reloads on the same base and reproduces the trained model's loss.
    let model = load_causal_lm(&gguf("untied"), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu).unwrap();
    let r = reference("llama");
    let (b, t) = r["input_ids"].dims2().unwrap();
    let (loss, _) = model.loss(&ids(&r["input_ids"]), &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
    assert!(scalar(&loss) < losses[7], "reloaded adapter keeps the learning: {} vs {}", scalar(&loss), losses[7]);
}

#[test]
fn truncated_or_corrupt_gguf_names_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf("untied")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 5000]).unwrap();
    let err = ModelSource::open(&cut).err().expect("truncated file must fail").to_string();
    assert!(err.contains("cut.gguf") && err.contains("tensor `") && err.contains("truncated"), "{err}");

    let header = tmp.path().join("header.gguf");
    std::fs::write(&header, &bytes[..300]).unwrap();
    let err = ModelSource::open(&header).err().expect("header cut short must fail").to_string();
    assert!(err.contains("header.gguf") && err.contains("GGUF"), "{err}");

    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\x00\x00\x00not really a model").unwrap();
    let err = ModelSource::open(&garbage).err().expect("garbage must fail").to_string();
    assert!(err.contains("garbage.gguf"), "{err}");
}
