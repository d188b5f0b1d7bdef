//! Hostile inputs get clear errors that name the file, tensor, key or line, and lose nothing:
//! truncated and corrupted safetensors, shape mismatches, missing files, unknown architectures,
//! an adapter trained for another model, invalid TOML, and a read-only output folder.

mod common;

use candle_core::{DType, Device};
use common::*;
use finetune_engine::config::{MethodKind, TrainConfig};
use finetune_engine::layers::AdapterPlan;
use finetune_engine::model::load_causal_lm;
use finetune_engine::peft::PeftAdapter;
use finetune_engine::train::{Interrupter, VecSink, train};
use std::path::Path;

/// A copy of a fixture model folder that a test may damage.
fn copy_model(family: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(model_dir(family)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match load_causal_lm(dir, AdapterPlan::frozen(), DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_safetensors_names_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    let f = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("tensor `") && e.contains("truncated"), "{e}");
}

#[test]
fn corrupted_safetensors_header_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    let f = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] = b'#';
    std::fs::write(&f, &bytes).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    std::fs::write(&f, b"").unwrap();
    assert!(load_err(tmp.path()).contains("model.safetensors"));
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(&cfg, text).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("mlp.gate_proj.weight") && e.contains("[128, 64]") && e.contains("[96, 64]"), "{e}");
}

#[test]
fn missing_files_and_unknown_architectures() {
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    assert!(load_err(tmp.path()).contains("no model.safetensors"));
    copy_model("llama", tmp.path());
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("LlamaForCausalLM", "FancyNetForCausalLM")
        .replace("\"llama\"", "\"fancynet\"");
    std::fs::write(&cfg, text).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("FancyNetForCausalLM") && e.contains("supported families") && e.contains("llama"),
        "{e}"
    );
    std::fs::write(&cfg, "{ not json").unwrap();
    assert!(load_err(tmp.path()).contains("config.json"));
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
}

#[test]
fn an_adapter_for_another_model_is_refused_naming_the_tensor() {
    // qwen3's adapter has llama-like module names but its own shapes (head_dim 32).
    let adapter = PeftAdapter::read(&adapter_dir("qwen3")).unwrap();
    let err = match load_causal_lm(
        &model_dir("llama"),
        adapter.plan(MethodKind::Lora, 0),
        DType::F32,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("a foreign adapter loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("adapter_model.safetensors") && err.contains("lora_"), "{err}");
}

#[test]
fn invalid_toml_names_the_file_and_position() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.toml");
    std::fs::write(&f, "[train]\nlr = \n").unwrap();
    let e = TrainConfig::from_toml_file(&f).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");
    std::fs::write(&f, "[train]\nbatch_size = -3\n").unwrap();
    let e = TrainConfig::from_toml_file(&f).unwrap_err().to_string();
    assert!(e.contains("train.batch_size"), "{e}");
}

#[test]
fn missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let cfg = TrainConfig::default()
        .with_overrides(&[
            format!("model.path=\"{}\"", tmp.path().display()),
            format!("data.path=\"{}\"", fixtures().join("data/text.jsonl").display()),
            "train.max_steps=1".into(),
        ])
        .unwrap();
    let e = train(&cfg, &tmp.path().join("out"), false, &mut VecSink::default(), &Interrupter::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn an_output_folder_that_cannot_be_created_is_named() {
    // A path below a regular file fails for root too (permission bits would not).
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("run");
    let cfg = TrainConfig::default()
        .with_overrides(&[
            format!("model.path=\"{}\"", model_dir("llama").display()),
            format!("data.path=\"{}\"", fixtures().join("data/text.jsonl").display()),
            "train.max_steps=1".into(),
        ])
        .unwrap();
    let e = train(&cfg, &out, false, &mut VecSink::default(), &Interrupter::new()).unwrap_err().to_string();
    assert!(e.contains(&out.display().to_string()), "{e}");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x", "nothing already there is touched");
}
