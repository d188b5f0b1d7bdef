//! Logits, losses and LoRA gradients against Hugging Face transformers + PEFT references.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use finetune_engine::config::MethodKind;
use finetune_engine::layers::{AdapterPlan, ForwardCtx};
use finetune_engine::model::{LanguageModel, Seq2SeqBatch, load_causal_lm, load_seq2seq_lm, shift_right};
use finetune_engine::peft::PeftAdapter;

const TOL: f64 = 1e-4;

fn check_base(family: &str) {
    let r = reference(family);
    let model = load_causal_lm(&model_dir(family), AdapterPlan::frozen(), DType::F32, &device()).unwrap();
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
    let model =
        load_causal_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &device()).unwrap();
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
        let got =
            grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient reached {name}"));
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

// Every other decoder-only family against Hugging Face: logits and loss, then PEFT LoRA logits,
// loss and every adapter gradient.

#[test]
fn qwen3_logits_and_loss() {
    check_base("qwen3");
}

#[test]
fn qwen3_lora_gradients_match_peft() {
    check_lora("qwen3");
}

#[test]
fn gemma_logits_and_loss() {
    check_base("gemma");
}

#[test]
fn gemma_lora_gradients_match_peft() {
    check_lora("gemma");
}

#[test]
fn gemma2_logits_and_loss() {
    check_base("gemma2");
}

#[test]
fn gemma2_lora_gradients_match_peft() {
    check_lora("gemma2");
}

#[test]
fn gemma3_text_logits_and_loss() {
    check_base("gemma3_text");
}

#[test]
fn gemma3_text_lora_gradients_match_peft() {
    check_lora("gemma3_text");
}

#[test]
fn phi_logits_and_loss() {
    check_base("phi");
}

#[test]
fn phi_lora_gradients_match_peft() {
    check_lora("phi");
}

#[test]
fn phi3_logits_and_loss() {
    check_base("phi3");
}

#[test]
fn phi3_lora_gradients_match_peft() {
    check_lora("phi3");
}

#[test]
fn gpt2_logits_and_loss() {
    check_base("gpt2");
}

#[test]
fn gpt2_lora_gradients_match_peft() {
    check_lora("gpt2");
}

#[test]
fn gpt_neox_logits_and_loss() {
    check_base("gpt_neox");
}

#[test]
fn gpt_neox_lora_gradients_match_peft() {
    check_lora("gpt_neox");
}

#[test]
fn falcon_logits_and_loss() {
    check_base("falcon");
}

#[test]
fn falcon_lora_gradients_match_peft() {
    check_lora("falcon");
}

#[test]
fn bloom_logits_and_loss() {
    check_base("bloom");
}

#[test]
fn bloom_lora_gradients_match_peft() {
    check_lora("bloom");
}

#[test]
fn mpt_logits_and_loss() {
    check_base("mpt");
}

#[test]
fn mpt_lora_gradients_match_peft() {
    check_lora("mpt");
}

#[test]
fn starcoder2_logits_and_loss() {
    check_base("starcoder2");
}

#[test]
fn starcoder2_lora_gradients_match_peft() {
    check_lora("starcoder2");
}

#[test]
fn olmo_logits_and_loss() {
    check_base("olmo");
}

#[test]
fn olmo_lora_gradients_match_peft() {
    check_lora("olmo");
}

#[test]
fn olmo2_logits_and_loss() {
    check_base("olmo2");
}

#[test]
fn olmo2_lora_gradients_match_peft() {
    check_lora("olmo2");
}

#[test]
fn glm_logits_and_loss() {
    check_base("glm");
}

#[test]
fn glm_lora_gradients_match_peft() {
    check_lora("glm");
}

#[test]
fn glm4_logits_and_loss() {
    check_base("glm4");
}

#[test]
fn glm4_lora_gradients_match_peft() {
    check_lora("glm4");
}

#[test]
fn stablelm_logits_and_loss() {
    check_base("stablelm");
}

#[test]
fn stablelm_lora_gradients_match_peft() {
    check_lora("stablelm");
}

#[test]
fn granite_logits_and_loss() {
    check_base("granite");
}

#[test]
fn granite_lora_gradients_match_peft() {
    check_lora("granite");
}

#[test]
fn opt_logits_and_loss() {
    check_base("opt");
}

#[test]
fn opt_lora_gradients_match_peft() {
    check_lora("opt");
}

#[test]
fn gpt_bigcode_logits_and_loss() {
    check_base("gpt_bigcode");
}

#[test]
fn gpt_bigcode_lora_gradients_match_peft() {
    check_lora("gpt_bigcode");
}

#[test]
fn mixtral_logits_and_loss() {
    check_base("mixtral");
}

#[test]
fn mixtral_lora_gradients_match_peft() {
    check_lora("mixtral");
}

#[test]
fn qwen3_moe_logits_and_loss() {
    check_base("qwen3_moe");
}

#[test]
fn qwen3_moe_lora_gradients_match_peft() {
    check_lora("qwen3_moe");
}

#[test]
fn internlm3_lora_gradients_match_peft() {
    check_lora("internlm3");
}

// Encoder-decoder families: logits and loss from encoder ids and shifted labels, then PEFT LoRA.

fn seq2seq_batch(r: &std::collections::HashMap<String, Tensor>) -> Seq2SeqBatch {
    let src = ids(&r["input_ids"]);
    let labels = labels(&r["labels"]);
    let (b, s) = r["input_ids"].dims2().unwrap();
    let (_, t) = r["labels"].dims2().unwrap();
    let pairs: Vec<(&[u32], &[i64])> =
        (0..b).map(|i| (&src[i * s..(i + 1) * s], &labels[i * t..(i + 1) * t])).collect();
    Seq2SeqBatch::collate(&pairs, 0)
}

fn check_seq2seq(family: &str, lora: bool) {
    let r = reference(family);
    let (plan, adapter) = if lora {
        let a = PeftAdapter::read(&adapter_dir(family)).unwrap();
        (a.plan(MethodKind::Lora, 0), Some(a))
    } else {
        (AdapterPlan::frozen(), None)
    };
    let model = load_seq2seq_lm(&model_dir(family), plan, DType::F32, &device()).unwrap();
    let batch = seq2seq_batch(&r);
    let dec = ids(&r["decoder_input_ids"]);
    let d = &model.dims;
    assert_eq!(
        shift_right(&batch.labels, batch.batch, batch.tgt_len, d.decoder_start_token_id, d.pad_token_id),
        dec
    );
    let logits =
        model.forward_logits(&batch.input_ids, batch.batch, batch.src_len, &dec, batch.tgt_len).unwrap();
    let (lk, sk) = if lora { ("lora_logits", "lora_loss") } else { ("logits", "loss") };
    let diff = rel_diff(&logits, &r[lk]);
    assert!(diff < TOL, "{family}: {lk} differ from Hugging Face by {diff}");
    let (loss, _) = model.loss(&batch, &ForwardCtx::eval()).unwrap();
    let (ours, theirs) = (scalar(&loss), scalar(&r[sk]));
    assert!((ours - theirs).abs() < TOL * theirs.abs().max(1.0), "{family}: {sk} {ours} vs {theirs}");
    let Some(adapter) = adapter else { return };
    assert_eq!(model.adapted.len(), adapter.modules.len(), "{family}: every adapter module is wrapped");
    let grads = loss.backward().unwrap();
    let trainable = LanguageModel::trainable(&model);
    assert_eq!(trainable.len(), 2 * adapter.modules.len());
    for (name, var) in &trainable {
        let key = format!("grad.base_model.model.{name}");
        let expected: &Tensor = r.get(&key).unwrap_or_else(|| panic!("{family}: no reference {key}"));
        let got =
            grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient reached {name}"));
        let d = rel_diff(got, expected);
        assert!(d < TOL, "{family}: gradient of {name} differs by {d} (relative)");
    }
}

#[test]
fn t5_logits_and_loss() {
    check_seq2seq("t5", false);
}

#[test]
fn t5_tied_logits_and_loss() {
    check_seq2seq("t5-tied", false);
}

#[test]
fn bart_logits_and_loss() {
    check_seq2seq("bart", false);
}

#[test]
fn t5_lora_gradients_match_peft() {
    check_seq2seq("t5", true);
}

#[test]
fn t5_tied_lora_gradients_match_peft() {
    check_seq2seq("t5-tied", true);
}

#[test]
fn bart_lora_gradients_match_peft() {
    check_seq2seq("bart", true);
}

// Remote-code layouts: a native model's weights repacked into the layout (and config.json) of a
// `trust_remote_code` checkpoint must give the native model's logits.

#[test]
fn chatglm_layout_reproduces_glm() {
    check_base("chatglm");
    assert_eq!(scalar(&reference("chatglm")["loss"]), scalar(&reference("glm")["loss"]));
}

#[test]
fn baichuan_w_pack_layout_reproduces_llama_mha() {
    check_base("baichuan");
}

#[test]
fn baichuan_13b_w_pack_with_alibi_reproduces_llama_with_alibi() {
    check_base("baichuan-13b");
}

#[test]
fn internlm2_wqkv_layout_reproduces_llama() {
    check_base("internlm2");
    assert_eq!(scalar(&reference("internlm2")["loss"]), scalar(&reference("llama")["loss"]));
}

#[test]
fn deepseek_v3_logits_and_loss() {
    check_base("deepseek_v3");
}

#[test]
fn deepseek_v3_lora_gradients_match_peft() {
    check_lora("deepseek_v3");
}

/// Adapters written by our trainer, loaded by PEFT (tools/fixtures/make_roundtrip.sh): PEFT
/// matched every tensor to a module and its logits equal ours.
#[test]
fn adapter_written_by_us_loads_in_peft() {
    for family in ["llama", "qwen2"] {
        let dir = fixtures().join("roundtrip");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{family}-peft.json"))).unwrap())
                .unwrap();
        assert_eq!(report["missing_adapter_keys"].as_array().map(Vec::len), Some(0), "{family}: {report}");
        assert_eq!(report["unexpected_adapter_keys"].as_array().map(Vec::len), Some(0), "{family}: {report}");
        let adapter = PeftAdapter::read(&dir.join(format!("{family}-adapter"))).unwrap();
        assert_eq!(report["adapter_tensors"].as_u64(), Some(2 * adapter.modules.len() as u64));
        let model =
            load_causal_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &device())
                .unwrap();
        let r = reference(family);
        let (b, t) = r["input_ids"].dims2().unwrap();
        let ours = model.forward_logits(&ids(&r["input_ids"]), b, t).unwrap();
        let peft = candle_core::safetensors::load(
            dir.join(format!("{family}-peft-logits.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let d = rel_diff(&ours, &peft["logits"]);
        assert!(d < TOL, "{family}: PEFT's logits for our adapter differ from ours by {d}");
    }
}
