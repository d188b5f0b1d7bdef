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
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
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
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LlamaForCausalLM", "FancyNetForCausalLM").replace("\"llama\"", "\"fancynet\"");
    std::fs::write(&cfg, text).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("FancyNetForCausalLM") && e.contains("supported families") && e.contains("llama"), "{e}");
    std::fs::write(&cfg, "{ not json").unwrap();
    assert!(load_err(tmp.path()).contains("config.json"));
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
}

#[test]
fn an_adapter_for_another_model_is_refused_naming_the_tensor() {
    // qwen2's fixture adapter has the same module names but llama has no q/k/v bias... and the
    // same shapes; so use mistral's adapter on a llama with a different hidden size instead.
    let tmp = tempfile::tempdir().unwrap();
    copy_model("llama", tmp.path());
    let adapter = PeftAdapter::read(&adapter_dir("qwen3")).or_else(|_| PeftAdapter::read(&adapter_dir("gemma"))).unwrap();
    let err = match load_causal_lm(&model_dir("llama"), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu) {
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
    let e = train(&cfg, &tmp.path().join("out"), false, &mut VecSink::default(), &Interrupter::new()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_read_only_output_folder_is_named_and_nothing_is_written() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc_geteuid() } == 0 {
        eprintln!("skipped: root ignores file permissions");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ro");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    let cfg = TrainConfig::default()
        .with_overrides(&[
            format!("model.path=\"{}\"", model_dir("llama").display()),
            format!("data.path=\"{}\"", fixtures().join("data/text.jsonl").display()),
            "train.max_steps=1".into(),
        ])
        .unwrap();
    let e = train(&cfg, &out, false, &mut VecSink::default(), &Interrupter::new()).unwrap_err().to_string();
    assert!(e.contains(&out.display().to_string()), "{e}");
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
