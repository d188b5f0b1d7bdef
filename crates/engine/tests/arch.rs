//! The family table: every fixture is detected as its family (by `architectures`, or by
//! `model_type` alone), an unknown architecture is an error that lists every supported family,
//! config variants no fixture proves are refused naming their key, and docs/architectures.md
//! documents every family.

mod common;

use common::*;
use finetune_engine::arch::{self, FAMILIES, SEQ2SEQ_FAMILIES, detect};
use finetune_engine::model::HfConfig;
use serde_json::{Value, json};

fn config_of(dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(model_dir(dir).join("config.json")).unwrap()).unwrap()
}

fn family_of(raw: Value) -> Result<String, String> {
    detect(&HfConfig::from_value("config.json".into(), raw))
        .map(|f| f.name().to_string())
        .map_err(|e| e.to_string())
}

const FIXTURES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("internlm3", "llama"),
    ("mistral", "mistral"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma", "gemma"),
    ("gemma2", "gemma2"),
    ("gemma3_text", "gemma3_text"),
    ("phi", "phi"),
    ("phi3", "phi3"),
    ("gpt2", "gpt2"),
    ("gpt_neox", "gpt_neox"),
    ("falcon", "falcon"),
    ("bloom", "bloom"),
    ("mpt", "mpt"),
    ("starcoder2", "starcoder2"),
    ("olmo", "olmo"),
    ("olmo2", "olmo2"),
    ("glm", "glm"),
    ("glm4", "glm4"),
    ("stablelm", "stablelm"),
    ("granite", "granite"),
    ("opt", "opt"),
    ("gpt_bigcode", "gpt_bigcode"),
    ("mixtral", "mixtral"),
    ("qwen3_moe", "qwen3_moe"),
    ("deepseek_v3", "deepseek_v3"),
    ("chatglm", "chatglm"),
    ("baichuan", "baichuan"),
    ("baichuan-13b", "baichuan-13b"),
    ("internlm2", "internlm2"),
    ("t5", "t5"),
    ("t5-tied", "t5"),
    ("bart", "bart"),
];

#[test]
fn every_fixture_is_detected_by_architecture_and_by_model_type() {
    for (dir, family) in FIXTURES {
        let raw = config_of(dir);
        assert_eq!(family_of(raw.clone()).as_deref(), Ok(*family), "{dir} by architectures");
        let mut by_type = raw.clone();
        by_type.as_object_mut().unwrap().remove("architectures");
        let expected = match *family {
            "baichuan-13b" => "baichuan", // `model_type` alone cannot tell 13B from 7B
            f => f,
        };
        assert_eq!(family_of(by_type).as_deref(), Ok(expected), "{dir} by model_type");
    }
}

#[test]
fn an_unknown_architecture_lists_every_supported_family() {
    let e = family_of(json!({"architectures": ["MambaForCausalLM"], "model_type": "mamba"})).unwrap_err();
    assert!(e.contains("unsupported architecture `MambaForCausalLM"), "{e}");
    for f in FAMILIES.iter().map(|f| f.family).chain(SEQ2SEQ_FAMILIES.iter().map(|f| f.family)) {
        assert!(e.contains(f), "{f} missing from: {e}");
    }
    let e = family_of(json!({})).unwrap_err();
    assert!(e.contains("(none given)"), "{e}");
}

#[test]
fn unproven_config_variants_are_refused_naming_the_key() {
    let cases: &[(&str, Value, &str)] = &[
        ("falcon", json!({"alibi": true}), "`alibi`"),
        ("opt", json!({"do_layer_norm_before": false}), "`do_layer_norm_before`"),
        ("opt", json!({"word_embed_proj_dim": 32}), "`word_embed_proj_dim`"),
        (
            "bloom",
            json!({"apply_residual_connection_post_layernorm": true}),
            "`apply_residual_connection_post_layernorm`",
        ),
        ("stablelm", json!({"qk_layernorm": true}), "`qk_layernorm`"),
        ("gpt2", json!({"scale_attn_by_inverse_layer_idx": true}), "`scale_attn_by_inverse_layer_idx`"),
        ("chatglm", json!({"position_encoding_2d": true}), "`position_encoding_2d`"),
        ("mpt", json!({"attn_config": {"alibi": false}}), "`attn_config.alibi`"),
    ];
    for (dir, patch, key) in cases {
        let mut raw = config_of(dir);
        for (k, v) in patch.as_object().unwrap() {
            raw[k] = v.clone();
        }
        let e = arch::resolve(&HfConfig::from_value("x/config.json".into(), raw)).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("not supported") && e.contains("x/config.json"), "{dir}: {e}");
    }
}

#[test]
fn structure_follows_the_config() {
    // Falcon: 7B (multi-query, one shared norm), 40B (grouped qkv, two norms) and sequential.
    let mut raw = config_of("falcon");
    let (spec, dims) = arch::resolve(&HfConfig::from_value("c".into(), raw.clone())).unwrap();
    assert_eq!((dims.kv_heads, spec.names.mlp_norm), (1, ""));
    raw["new_decoder_architecture"] = json!(true);
    raw["num_kv_heads"] = json!(2);
    let (spec, dims) = arch::resolve(&HfConfig::from_value("c".into(), raw.clone())).unwrap();
    assert_eq!((dims.kv_heads, spec.names.attn_norm, spec.names.mlp_norm), (2, "ln_attn", "ln_mlp"));
    raw["new_decoder_architecture"] = json!(false);
    raw["parallel_attn"] = json!(false);
    let (spec, _) = arch::resolve(&HfConfig::from_value("c".into(), raw)).unwrap();
    assert_eq!(spec.residual, arch::Residual::Sequential);
    // Baichuan2-7B (hidden 4096) uses RoPE under the 13B class name.
    let mut raw = config_of("baichuan-13b");
    assert!(matches!(
        arch::resolve(&HfConfig::from_value("c".into(), raw.clone())).unwrap().0.position,
        arch::PositionKind::Alibi(_)
    ));
    raw["hidden_size"] = json!(4096);
    raw["num_attention_heads"] = json!(32);
    assert!(arch::resolve(&HfConfig::from_value("c".into(), raw)).unwrap().0.is_rope());
}

#[test]
fn docs_document_every_family() {
    let doc = std::fs::read_to_string(fixtures().join("../docs/architectures.md")).unwrap();
    for f in FAMILIES.iter().map(|f| f.family).chain(SEQ2SEQ_FAMILIES.iter().map(|f| f.family)) {
        assert!(doc.contains(&format!("| `{f}` |")), "docs/architectures.md has no row for `{f}`");
    }
}
