//! Merging adapters into the base writes each family's own file layout: reloading the merged
//! folder gives PEFT's adapted logits (GPT-2 Conv1D weights go back to `[in, out]`, fused and
//! grouped projections keep their row order, encoder-decoders keep both stacks).

mod common;

use candle_core::{DType, Device};
use common::*;
use finetune_engine::config::MethodKind;
use finetune_engine::export::write_hf_folder;
use finetune_engine::layers::AdapterPlan;
use finetune_engine::model::{load_causal_lm, load_seq2seq_lm};
use finetune_engine::peft::PeftAdapter;

fn merged_causal(family: &str) {
    let r = reference(family);
    let adapter = PeftAdapter::read(&adapter_dir(family)).unwrap();
    let m = load_causal_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_hf_folder(&m, &model_dir(family), tmp.path()).unwrap();
    let merged = load_causal_lm(tmp.path(), AdapterPlan::frozen(), DType::F32, &Device::Cpu).unwrap();
    let (b, t) = r["input_ids"].dims2().unwrap();
    let d = rel_diff(&merged.forward_logits(&ids(&r["input_ids"]), b, t).unwrap(), &r["lora_logits"]);
    assert!(d < 1e-4, "{family}: merged logits differ from PEFT's adapted logits by {d}");
}

fn merged_seq2seq(family: &str) {
    let r = reference(family);
    let adapter = PeftAdapter::read(&adapter_dir(family)).unwrap();
    let m = load_seq2seq_lm(&model_dir(family), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_hf_folder(&m, &model_dir(family), tmp.path()).unwrap();
    let merged = load_seq2seq_lm(tmp.path(), AdapterPlan::frozen(), DType::F32, &Device::Cpu).unwrap();
    let (b, s) = r["input_ids"].dims2().unwrap();
    let (_, t) = r["decoder_input_ids"].dims2().unwrap();
    let logits =
        merged.forward_logits(&ids(&r["input_ids"]), b, s, &ids(&r["decoder_input_ids"]), t).unwrap();
    let d = rel_diff(&logits, &r["lora_logits"]);
    assert!(d < 1e-4, "{family}: merged logits differ from PEFT's adapted logits by {d}");
}

#[test]
fn merged_gpt2_writes_conv1d_weights_back_as_in_out() {
    merged_causal("gpt2");
}

#[test]
fn merged_fused_and_grouped_projections_keep_their_layout() {
    for f in ["gpt_neox", "phi3", "falcon", "bloom", "glm"] {
        merged_causal(f);
    }
}

#[test]
fn merged_encoder_decoders_reload_with_adapted_logits() {
    for f in ["t5", "t5-tied", "bart"] {
        merged_seq2seq(f);
    }
}
