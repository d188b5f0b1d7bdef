//! The `finetune-studio` binary as users run it: train/eval/generate/merge on fixture models,
//! the NDJSON contract of `train --json`, and errors that name the key, file and line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune-studio"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn eval_json(model: &Path, adapter: Option<&Path>, data: &Path) -> serde_json::Value {
    let mut c = bin();
    c.args(["eval", "--json", "--model"]).arg(model).arg("--data").arg(data);
    if let Some(a) = adapter {
        c.arg("--adapter").arg(a);
    }
    serde_json::from_str(ok(c.output().unwrap()).trim()).unwrap()
}

#[test]
fn train_json_eval_generate_and_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let model = fixtures().join("models/llama");
    let data = fixtures().join("data/alpaca.jsonl");
    let stdout = ok(bin()
        .args(["train", "--json", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--output")
        .arg(&out_dir)
        .args([
            "--set",
            "train.max_steps=6",
            "--set",
            "train.lr=5e-3",
            "--set",
            "lora.targets=all-linear",
            "--set",
            "data.max_len=96",
        ])
        .output()
        .unwrap());
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("every stdout line is JSON")).collect();
    let steps: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 6);
    assert!(steps.iter().all(|s| s["loss"].as_f64().is_some_and(f64::is_finite)));
    assert_eq!(events.last().unwrap()["event"], "finished");
    for f in ["adapter_config.json", "adapter_model.safetensors", "train_config.toml"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }

    let base = eval_json(&model, None, &data);
    let tuned = eval_json(&model, Some(&out_dir), &data);
    assert!(
        tuned["loss"].as_f64().unwrap() < base["loss"].as_f64().unwrap(),
        "training lowered the loss: {base} -> {tuned}"
    );
    assert!(tuned["tokens"].as_u64().unwrap() > 0);

    let merged = tmp.path().join("merged");
    ok(bin()
        .args(["merge", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(&out_dir)
        .arg("--output")
        .arg(&merged)
        .output()
        .unwrap());
    let m = eval_json(&merged, None, &data);
    assert!(
        (m["loss"].as_f64().unwrap() - tuned["loss"].as_f64().unwrap()).abs() < 1e-4,
        "merged {m} vs adapter {tuned}"
    );

    let text = ok(bin()
        .args(["generate", "--max-new-tokens", "5", "--prompt", "Hello", "--model"])
        .arg(&model)
        .output()
        .unwrap());
    assert!(!text.trim().is_empty());
}

#[test]
fn eval_of_the_reference_batch_equals_transformers_loss() {
    // The fixture batch as a tokens file; HF's `model(input_ids, labels=labels).loss` is in the reference.
    let tmp = tempfile::tempdir().unwrap();
    let r = reference_batch();
    let data = tmp.path().join("batch.jsonl");
    std::fs::write(&data, &r.0).unwrap();
    let v = eval_json(&fixtures().join("models/llama"), None, &data);
    assert!((v["loss"].as_f64().unwrap() - r.1).abs() < 1e-4, "{v} vs {}", r.1);
    assert!((v["perplexity"].as_f64().unwrap() - r.1.exp()).abs() < 1e-3);
}

/// The reference batch of the llama fixture as JSONL, and its HF loss.
fn reference_batch() -> (String, f64) {
    let path = fixtures().join("reference/llama.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read_i64 = |name: &str| -> Vec<i64> {
        st.tensor(name).unwrap().data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let ids = read_i64("input_ids");
    let labels = read_i64("labels");
    let loss = f32::from_le_bytes(st.tensor("loss").unwrap().data()[..4].try_into().unwrap()) as f64;
    let t = ids.len() / 2;
    let mut text = String::new();
    for row in 0..2 {
        text.push_str(&serde_json::json!({"input_ids": &ids[row * t..(row + 1) * t], "labels": &labels[row * t..(row + 1) * t]}).to_string());
        text.push('\n');
    }
    (text, loss)
}

#[test]
fn errors_name_the_key_the_file_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/llama");
    let run = |args: &[&str], data: &Path| {
        let out = bin()
            .args(["train", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(data)
            .arg("--output")
            .arg(tmp.path().join("o"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let good = fixtures().join("data/chat.jsonl");
    let e = run(&["--set", "train.lrr=1"], &good);
    assert!(e.contains("train.lrr"), "{e}");
    let e = run(&["--set", "train.lr=7"], &good);
    assert!(e.contains("train.lr") && e.contains("(0, 1]"), "{e}");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 3}\n").unwrap();
    let e = run(&[], &bad);
    assert!(e.contains("bad.jsonl:2") && e.contains("text"), "{e}");
    let e = run(&["--set", "lora.targets=[\"qkv\"]"], &good);
    assert!(e.contains("lora.targets") && e.contains("q_proj"), "{e}");
    let out = bin().args(["eval", "--model", "/nonexistent/model", "--data"]).arg(&good).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model/config.json"));
}
