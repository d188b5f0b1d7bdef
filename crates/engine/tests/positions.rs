//! The positional module against transformers: RoPE inverse frequencies and attention factors
//! for every scaling kind (from `ROPE_INIT_FUNCTIONS`, v5 and v4 config layouts), ALiBi slopes by
//! the BLOOM and MPT rules for power-of-two and other head counts, and T5's relative buckets.
//! Reference: `fixtures/reference/positions.json` (tools/fixtures/make_fixtures.py).

mod common;

use common::fixtures;
use finetune_engine::arch::AlibiSlopes;
use finetune_engine::model::{HfConfig, alibi_slopes, rope_inv_freq, t5_bucket};
use serde_json::Value;

fn reference() -> Value {
    let p = fixtures().join("reference/positions.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn rope_inverse_frequencies_match_transformers_for_every_scaling() {
    let r = reference();
    let cases = r["rope"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = HfConfig::from_value("config.json".into(), case["config"].clone());
        let params = cfg.rope(10000.0, None).unwrap();
        let head_dim = case["config"]["head_dim"].as_u64().unwrap() as usize;
        let rot = ((head_dim as f64 * params.partial_factor) as usize) & !1;
        let seq = case["seq_len"].as_u64().unwrap() as usize;
        let (inv, attn) = rope_inv_freq(&params, rot, seq);
        let expected = floats(&case["inv_freq"]);
        assert_eq!(inv.len(), expected.len(), "{name}: number of frequencies");
        for (i, (a, b)) in inv.iter().zip(&expected).enumerate() {
            assert!((a - b).abs() <= 2e-6 * b.abs(), "{name}: inv_freq[{i}] {a} vs transformers {b}");
        }
        let expected_attn = case["attention_factor"].as_f64().unwrap();
        assert!((attn - expected_attn).abs() < 1e-6, "{name}: attention factor {attn} vs {expected_attn}");
    }
}

#[test]
fn alibi_slopes_match_bloom_and_mpt_for_any_head_count() {
    let r = reference();
    let rows = r["alibi"].as_array().unwrap();
    let mut odd_counts = 0;
    for row in rows {
        let heads = row["heads"].as_u64().unwrap() as usize;
        let (kind, max) = match row["kind"].as_str().unwrap() {
            "bloom" => (AlibiSlopes::Bloom, 8.0),
            _ => (AlibiSlopes::Mpt, row["alibi_bias_max"].as_f64().unwrap()),
        };
        odd_counts += usize::from(!heads.is_power_of_two());
        let ours = alibi_slopes(kind, heads, max);
        let expected = floats(&row["slopes"]);
        assert_eq!(ours.len(), expected.len(), "{kind:?} {heads} heads");
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-6 * b.abs(), "{kind:?} {heads} heads: slope {i} {a} vs {b}");
        }
    }
    assert!(odd_counts >= 8, "the reference covers non-power-of-two head counts");
}

#[test]
fn t5_relative_buckets_match_transformers() {
    let r = reference();
    for grid in r["t5_buckets"].as_array().unwrap() {
        let bi = grid["bidirectional"].as_bool().unwrap();
        let nb = grid["num_buckets"].as_u64().unwrap() as usize;
        let md = grid["max_distance"].as_u64().unwrap() as usize;
        let rel = grid["relative"].as_array().unwrap();
        let buckets = grid["bucket"].as_array().unwrap();
        for (r, b) in rel.iter().zip(buckets) {
            let (r, b) = (r.as_i64().unwrap(), b.as_u64().unwrap() as usize);
            assert_eq!(
                t5_bucket(r, bi, nb, md),
                b,
                "relative {r}, bidirectional {bi}, {nb} buckets, max {md}"
            );
        }
    }
}
