//! Logits, losses and LoRA gradients against Hugging Face transformers + PEFT references.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use finetune_engine::config::MethodKind;
use finetune_engine::layers::{AdapterPlan, ForwardCtx};
use finetune_engine::model::load_causal_lm;
use finetune_engine::peft::PeftAdapter;

const TOL: f64 = 1e-4;

fn check_base(family: &str) {
    let r = reference(family);
    let model = load_causal_lm(&model_dir(family), AdapterPlan::frozen(), DType::F32, &Device::Cpu).unwrap();
    let input = &r["input_ids"];
    let (b, t) = input.dims2().unwrap();
    let logits = model.forward_logits(&ids(input), b, t).unwrap();
    let d = rel_diff(&logits, &r["logits"]);
    assert!(d < TOL, "{family}: logits differ from Hugging Face by {d}");
    let (loss, _) = model.loss(&ids(input), &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
    let (ours, theirs) = (scalar(&loss), scalar(&r["loss"]));
    assert!((ours - theirs).abs() < TOL * theirs.abs().max(1.0), "{family}: loss {ours} vs {theirs}");
}

fn check_lora(family: &str) {
    let r = reference(family);
    let adapter = PeftAdapter::read(&adapter_dir(family)).unwrap();
    let model = load_causal_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.adapted.len(), adapter.modules.len(), "{family}: every adapter module is wrapped");
    let input = &r["input_ids"];
    let (b, t) = input.dims2().unwrap();
    let logits = model.forward_logits(&ids(input), b, t).unwrap();
    let d = rel_diff(&logits, &r["lora_logits"]);
    assert!(d < TOL, "{family}: LoRA logits differ by {d}");
    let (loss, _) = model.loss(&ids(input), &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
    let (ours, theirs) = (scalar(&loss), scalar(&r["lora_loss"]));
    assert!((ours - theirs).abs() < TOL * theirs.abs().max(1.0), "{family}: LoRA loss {ours} vs {theirs}");
    let grads = loss.backward().unwrap();
    let trainable = model.trainable();
    assert_eq!(trainable.len(), 2 * adapter.modules.len());
    for (name, var) in &trainable {
        let key = format!("grad.base_model.model.{name}");
        let expected: &Tensor = r.get(&key).unwrap_or_else(|| panic!("{family}: no reference {key}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient reached {name}"));
        let d = rel_diff(got, expected);
        assert!(d < TOL, "{family}: gradient of {name} differs by {d} (relative)");
    }
}

#[test]
fn llama_logits_and_loss() {
    check_base("llama");
}

#[test]
fn llama_variants_bf16_sharded_v4_config_and_tied() {
    for v in ["llama-bf16", "llama-sharded", "llama-v4config", "llama-tied"] {
        check_base(v);
    }
}

#[test]
fn mistral_logits_and_loss_with_sliding_window() {
    check_base("mistral");
}

#[test]
fn qwen2_logits_and_loss() {
    check_base("qwen2");
}

#[test]
fn internlm3_logits_and_loss() {
    check_base("internlm3");
}

#[test]
fn llama_lora_gradients_match_peft() {
    check_lora("llama");
}

#[test]
fn mistral_lora_gradients_match_peft() {
    check_lora("mistral");
}

#[test]
fn qwen2_lora_gradients_match_peft() {
    check_lora("qwen2");
}

/// Adapters written by our trainer, loaded by PEFT (tools/fixtures/make_roundtrip.sh): PEFT
/// matched every tensor to a module and its logits equal ours.
#[test]
fn adapter_written_by_us_loads_in_peft() {
    for family in ["llama", "qwen2"] {
        let dir = fixtures().join("roundtrip");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{family}-peft.json"))).unwrap()).unwrap();
        assert_eq!(report["missing_adapter_keys"].as_array().map(Vec::len), Some(0), "{family}: {report}");
        assert_eq!(report["unexpected_adapter_keys"].as_array().map(Vec::len), Some(0), "{family}: {report}");
        let adapter = PeftAdapter::read(&dir.join(format!("{family}-adapter"))).unwrap();
        assert_eq!(report["adapter_tensors"].as_u64(), Some(2 * adapter.modules.len() as u64));
        let model = load_causal_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu).unwrap();
        let r = reference(family);
        let (b, t) = r["input_ids"].dims2().unwrap();
        let ours = model.forward_logits(&ids(&r["input_ids"]), b, t).unwrap();
        let peft = candle_core::safetensors::load(dir.join(format!("{family}-peft-logits.safetensors")), &Device::Cpu).unwrap();
        let d = rel_diff(&ours, &peft["logits"]);
        assert!(d < TOL, "{family}: PEFT's logits for our adapter differ from ours by {d}");
    }
}
