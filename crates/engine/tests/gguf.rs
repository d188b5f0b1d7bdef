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
        let (_, dims) = source.resolve().unwrap();
        assert_eq!((dims.layers, dims.heads, dims.kv_heads, dims.hidden, dims.vocab), (2, 4, 2, 64, 384));
        assert_eq!(dims.tie_embeddings, label == "tied");
        // q/k come back un-permuted: the dense view of q_proj is transformers' weight.
        let q =
            source.weights.load("model.layers.0.self_attn.q_proj.weight", DType::F32, &Device::Cpu).unwrap();
        assert!(rel_diff(&q, &r[&format!("{label}.layers.0.q_proj")]) < 1e-6, "{label}: q_proj permutation");
        let k =
            source.weights.load("model.layers.1.self_attn.k_proj.weight", DType::F32, &Device::Cpu).unwrap();
        assert!(rel_diff(&k, &r[&format!("{label}.layers.1.k_proj")]) < 1e-6, "{label}: k_proj permutation");

        let model = source.build(AdapterPlan::frozen(), None, DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward_logits(&input, b, t).unwrap();
        let d = rel_diff(&logits, &r[&format!("{label}.logits")]);
        assert!(d < 1e-4, "{label}: logits differ from transformers by {d}");
        let (loss, _) = model.loss(&input, &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
        let (ours, theirs) = (scalar(&loss), scalar(&r[&format!("{label}.loss")]));
        assert!((ours - theirs).abs() < 1e-4 * theirs.abs(), "{label}: loss {ours} vs {theirs}");

        // Block-quantized projections stay quantized; the F16 ffn_down is dense.
        let bytes: HashMap<String, usize> =
            model.linears().into_iter().map(|(p, l)| (p, l.base_bytes())).collect();
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
    assert!(
        text.starts_with("<|im_start|>system\n") && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );
    assert_eq!(
        tok.encode(&text, false).unwrap(),
        ids(&r["chat_ids"]),
        "chat ids as transformers encodes them"
    );
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
    let losses: Vec<f64> = sink
        .0
        .iter()
        .filter_map(|e| if let TrainEvent::Step { loss, .. } = e { Some(*loss) } else { None })
        .collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < losses[0] - 0.1, "LoRA on a GGUF base learns: {losses:?}");

    let adapter = PeftAdapter::read(&out).unwrap();
    assert_eq!(adapter.modules.len(), 14);
    assert!(adapter.modules.iter().all(|m| m.starts_with("model.layers.")), "{:?}", adapter.modules);
    assert!(adapter.modules.contains(&"model.layers.1.self_attn.q_proj".to_string()));
    // The adapter reloads on the same base and reproduces the trained model's loss.
    let model =
        load_causal_lm(&gguf("untied"), adapter.plan(MethodKind::Lora, 0), DType::F32, &Device::Cpu).unwrap();
    let r = reference("llama");
    let (b, t) = r["input_ids"].dims2().unwrap();
    let (loss, _) =
        model.loss(&ids(&r["input_ids"]), &labels(&r["labels"]), b, t, &ForwardCtx::eval()).unwrap();
    assert!(
        scalar(&loss) < losses[7],
        "reloaded adapter keeps the learning: {} vs {}",
        scalar(&loss),
        losses[7]
    );
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

/// A llama GGUF with k-quant projections (Q4_K, Q5_K, Q6_K; q/k permuted as llama.cpp stores
/// them) against the same model as an HF folder holding the dequantized weights.
#[test]
fn k_quant_gguf_computes_like_its_dequantized_weights() {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    use finetune_engine::model::unpermute_order;
    let tmp = tempfile::tempdir().unwrap();
    let (hidden, inter, heads, kv, vocab) = (256usize, 512usize, 4usize, 2usize, 384usize);
    let dev = Device::Cpu;
    let mut rng = 7u64;
    let mut rand = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut gguf_tensors: Vec<(String, QTensor)> = Vec::new();
    let mut hf: HashMap<String, Tensor> = HashMap::new();
    let mut add = |hf_name: &str, g_name: &str, t: Tensor, dtype: GgmlDType, permute: Option<usize>| {
        let stored = match permute {
            Some(h) => {
                let order = unpermute_order(t.dim(0).unwrap(), h).unwrap();
                let mut inverse = vec![0u32; order.len()];
                for (o, &s) in order.iter().enumerate() {
                    inverse[s] = o as u32;
                }
                t.index_select(&Tensor::new(inverse, &dev).unwrap(), 0).unwrap()
            }
            None => t.clone(),
        };
        let q = QTensor::quantize(&stored, dtype).unwrap();
        // The HF copy holds exactly what the quantized tensor decodes to, in HF row order.
        let deq = QTensor::quantize(&t, dtype).unwrap().dequantize(&dev).unwrap();
        hf.insert(hf_name.to_string(), deq);
        gguf_tensors.push((g_name.to_string(), q));
    };
    add("model.embed_tokens.weight", "token_embd.weight", rand(&[vocab, hidden], 0.5), GgmlDType::F32, None);
    add("lm_head.weight", "output.weight", rand(&[vocab, hidden], 0.5), GgmlDType::Q6K, None);
    add(
        "model.norm.weight",
        "output_norm.weight",
        (rand(&[hidden], 0.2) + 1.0).unwrap(),
        GgmlDType::F32,
        None,
    );
    let p = "model.layers.0";
    add(
        &format!("{p}.input_layernorm.weight"),
        "blk.0.attn_norm.weight",
        (rand(&[hidden], 0.2) + 1.0).unwrap(),
        GgmlDType::F32,
        None,
    );
    add(
        &format!("{p}.post_attention_layernorm.weight"),
        "blk.0.ffn_norm.weight",
        (rand(&[hidden], 0.2) + 1.0).unwrap(),
        GgmlDType::F32,
        None,
    );
    add(
        &format!("{p}.self_attn.q_proj.weight"),
        "blk.0.attn_q.weight",
        rand(&[hidden, hidden], 0.3),
        GgmlDType::Q4K,
        Some(heads),
    );
    add(
        &format!("{p}.self_attn.k_proj.weight"),
        "blk.0.attn_k.weight",
        rand(&[hidden / 2, hidden], 0.3),
        GgmlDType::Q5K,
        Some(kv),
    );
    add(
        &format!("{p}.self_attn.v_proj.weight"),
        "blk.0.attn_v.weight",
        rand(&[hidden / 2, hidden], 0.3),
        GgmlDType::Q6K,
        None,
    );
    add(
        &format!("{p}.self_attn.o_proj.weight"),
        "blk.0.attn_output.weight",
        rand(&[hidden, hidden], 0.3),
        GgmlDType::Q4K,
        None,
    );
    add(
        &format!("{p}.mlp.gate_proj.weight"),
        "blk.0.ffn_gate.weight",
        rand(&[inter, hidden], 0.3),
        GgmlDType::Q5K,
        None,
    );
    add(
        &format!("{p}.mlp.up_proj.weight"),
        "blk.0.ffn_up.weight",
        rand(&[inter, hidden], 0.3),
        GgmlDType::Q4K,
        None,
    );
    add(
        &format!("{p}.mlp.down_proj.weight"),
        "blk.0.ffn_down.weight",
        rand(&[hidden, inter], 0.3),
        GgmlDType::Q6K,
        None,
    );

    // The tokenizer metadata comes from the tiny GGUF fixture.
    let fixture = std::fs::File::open(gguf("untied")).unwrap();
    let content = gguf_file::Content::read(&mut std::io::BufReader::new(fixture)).unwrap();
    use gguf_file::Value as V;
    let mut meta: Vec<(String, V)> =
        content.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
    for (k, v) in [
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(1)),
        ("llama.embedding_length", V::U32(hidden as u32)),
        ("llama.feed_forward_length", V::U32(inter as u32)),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv as u32)),
        ("llama.context_length", V::U32(128)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
    ] {
        meta.push((k.to_string(), v));
    }
    let path = tmp.path().join("kquant.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = gguf_tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    drop(f);

    let dir = tmp.path().join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    candle_core::safetensors::save(&hf, dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": 1, "num_attention_heads": heads,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "vocab_size": vocab, "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();

    let input: Vec<u32> = (0..24).map(|i| (i * 37 % 380 + 3) as u32).collect();
    let q = ModelSource::open(&path).unwrap();
    let model = q.build(AdapterPlan::frozen(), None, DType::F32, &Device::Cpu).unwrap();
    let block_bytes = |m: &finetune_engine::model::CausalLm| -> usize {
        m.linears().iter().filter(|(p, _)| p.starts_with("model.layers.")).map(|(_, l)| l.base_bytes()).sum()
    };
    let quantized = block_bytes(&model);
    let dense_model = load_causal_lm(&dir, AdapterPlan::frozen(), DType::F32, &Device::Cpu).unwrap();
    let dense = block_bytes(&dense_model);
    assert!(quantized * 4 < dense, "k-quant projections stay quantized: {quantized} vs {dense} bytes");
    let a = model.forward_logits(&input, 2, 12).unwrap();
    let b = dense_model.forward_logits(&input, 2, 12).unwrap();
    let d = rel_diff(&a, &b);
    assert!(d < 1e-5, "k-quant GGUF logits differ from the dequantized model by {d}");
}

/// The gguf fuzz target's findings (fuzz/findings/gguf/make.py): tensor shapes whose element
/// count or byte length overflows, a 4-billion-layer `block_count`, a hidden size whose
/// parameter count overflows, a zero-dimensional embedding. Read the way the studio describes a
/// model, each is an error naming the file and what is wrong, never a panic or a huge allocation.
#[test]
fn hostile_gguf_headers_are_errors_not_panics() {
    let cases = [
        ("overflow-dims.gguf", "too large"),
        ("overflow-length.gguf", "too large"),
        ("huge-block-count.gguf", "num_hidden_layers"),
        ("huge-hidden.gguf", "hidden_size"),
        ("scalar-embedding.gguf", "2 dimensions"),
    ];
    for (file, expect) in cases {
        let path = fixtures().join("gguf/hostile").join(file);
        let err = match ModelSource::open(&path) {
            Err(e) => e.to_string(),
            Ok(src) => match src.resolve() {
                Err(e) => e.to_string(),
                Ok((_, dims)) => panic!("{file} was accepted with {} parameters", dims.parameter_count()),
            },
        };
        assert!(err.contains(file) && err.contains(expect), "{file}: {err}");
    }
}
