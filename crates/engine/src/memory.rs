//! A first estimate of the memory a training run needs, per method (full, LoRA, QLoRA with NF4),
//! from the model's dimensions, the dtype, the batch size and the sequence length. The studio
//! shows it before a run starts (`POST /models/validate`) and preset cards turn it into
//! "fits / tight / won't fit" with [`fit`]. It is an estimate, not a measurement: the numbers a
//! run really uses are in its step events.
//!
//! With `P` the model's parameters, `P_lin` those in the blocks' linear layers, `T` the trainable
//! parameters, `w` the bytes of a base weight, `a` the bytes of an activation, `B` the batch,
//! `S` the sequence length, `h` hidden, `I` intermediate, `L` layers, `H` heads, `V` vocabulary:
//!
//! - **weights**: full and LoRA `P·w`; QLoRA `P_lin·bits/8 + (P − P_lin)·a`, where NF4 costs
//!   `4 + 32/block` bits per weight, or `4 + 8/block + 32/(256·block)` with double quantization;
//! - **trainable** (adapters, kept in f32): `T·4` for LoRA/QLoRA with `T = Σ r·(in + out)` over
//!   the targeted projections of every layer; 0 for full (the weights are the trainable part);
//! - **gradients**: full `P·w`; LoRA/QLoRA `T·4`;
//! - **optimizer** (AdamW, two f32 moments): `T·8` (full: `T = P`);
//! - **activations**: one block keeps about `B·S·(10h + 4I)·a` for backward (`B·S·(8h + 2I)·a`
//!   with the CPU's fused kernels, which rotate q and k inside attention, apply the gated
//!   activation inside the down projection and add the attention's output projection onto the
//!   residual stream, keeping none of those results); without gradient
//!   checkpointing all `L` blocks do, with it only the `L` block inputs `B·S·h·a` plus one block.
//!   Backward adds one block's gradients (`B·S·(10h + 4I)·a` again) and, once, the attention
//!   scores of the block it is in, `3·B·H·S²·a` (probabilities, their gradient and the scores':
//!   no path keeps a `[B, H, S, S]` tensor from forward to backward, but the GPU's backward
//!   holds three at once). The loss adds `B·S·V·(a + 8)` (logits, f32 softmax and its gradient).
//!
//! Not included: the CUDA context and allocator slack (a few hundred MB), which is why [`fit`]
//! calls anything above 85% of the available memory "tight".

use crate::config::{MethodKind, Targets, TrainConfig};
use crate::model::ModelDims;
use serde::Serialize;

/// What the estimate depends on besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryOptions {
    pub method: MethodKind,
    /// Bytes per base weight for full and LoRA (4 for f32, 2 for bf16/f16).
    pub weight_bytes: usize,
    /// Bytes per frozen projection weight for LoRA when it differs from `weight_bytes`
    /// (`model.frozen_dtype = "stored"`: the checkpoint's 16-bit values, 2).
    pub frozen_projection_bytes: Option<usize>,
    /// Bytes per activation (the compute dtype; QLoRA computes in `quant.compute_dtype`).
    pub activation_bytes: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lora_r: usize,
    /// Targeted module names (`q_proj`, `down_proj`, ...); see [`targets_for`].
    pub targets: Vec<String>,
    pub grad_checkpointing: bool,
    /// The CPU's fused kernels, which keep less per block: rotary positions applied inside
    /// attention, a gated MLP's activation inside its down projection, the attention output
    /// projection's addition onto the residual stream.
    pub cpu_kernels: bool,
    /// NF4 block size and double quantization (QLoRA only).
    pub quant_block: usize,
    pub double_quant: bool,
}

/// Bytes, by where they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub trainable: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub total: u64,
    pub trainable_params: u64,
}

/// Whether an estimate fits in the memory available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    Fits,
    Tight,
    WontFit,
}

/// `Fits` up to 85% of `available`, `Tight` up to 100%, else `WontFit`.
pub fn fit(total: u64, available: u64) -> Fit {
    if (total as f64) <= 0.85 * available as f64 {
        Fit::Fits
    } else if total <= available {
        Fit::Tight
    } else {
        Fit::WontFit
    }
}

/// Effective bits per NF4 weight, counting the block scales.
pub fn nf4_bits_per_weight(block: usize, double_quant: bool) -> f64 {
    let block = block.max(1) as f64;
    if double_quant { 4.0 + 8.0 / block + 32.0 / (256.0 * block) } else { 4.0 + 32.0 / block }
}

/// Bytes of one element of a dtype name (`f32`, `bf16`, `f16`); 4 for anything else.
pub fn dtype_bytes(name: &str) -> usize {
    match name {
        "bf16" | "f16" => 2,
        _ => 4,
    }
}

/// (in, out) features of a projection, by its module name.
fn projection_shape(d: &ModelDims, name: &str) -> (usize, usize) {
    let name = name.rsplit('.').next().unwrap_or(name);
    let (h, i) = (d.hidden, d.intermediate);
    let q = d.heads * d.head_dim;
    let kv = d.kv_heads * d.head_dim;
    match name {
        "q_proj" | "query" | "q" => (h, q),
        "k_proj" | "key" | "k" | "v_proj" | "value" | "v" => (h, kv),
        "o_proj" | "out_proj" | "o" | "attn_out" => (q, h),
        "qkv_proj" | "query_key_value" | "c_attn" | "Wqkv" => (h, q + 2 * kv),
        "gate_proj" | "up_proj" | "w1" | "w3" | "fc1" | "c_fc" | "dense_h_to_4h" => (h, i),
        "gate_up_proj" => (h, 2 * i),
        "down_proj" | "w2" | "fc2" | "dense_4h_to_h" => (i, h),
        _ => (h, h),
    }
}

/// The module names a config targets: its list, the family's defaults for `default`, or every
/// block projection for `all-linear`.
pub fn targets_for(targets: &Targets, family_defaults: &[&str]) -> Vec<String> {
    match targets {
        Targets::Modules(m) => m.clone(),
        Targets::Keyword(k) if k == "all-linear" => {
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec()
        }
        Targets::Keyword(_) => family_defaults.iter().map(|s| s.to_string()).collect(),
    }
}

/// Parameters in the blocks' linear layers (what QLoRA quantizes).
fn linear_params(d: &ModelDims) -> u64 {
    let attn = d.hidden * d.head_dim * (2 * d.heads + 2 * d.kv_heads);
    let mlp = 3 * d.hidden * d.intermediate;
    (d.layers * (attn + mlp)) as u64
}

/// LoRA parameters for rank `r` on `targets` (lm_head counted once, the rest once per layer).
pub fn lora_params(d: &ModelDims, r: usize, targets: &[String]) -> u64 {
    targets
        .iter()
        .map(|t| {
            if t.rsplit('.').next() == Some("lm_head") {
                (r * (d.hidden + d.vocab)) as u64
            } else {
                let (i, o) = projection_shape(d, t);
                (d.layers * r * (i + o)) as u64
            }
        })
        .sum()
}

pub fn estimate(d: &ModelDims, o: &MemoryOptions) -> MemoryEstimate {
    let p = d.parameter_count() as u64;
    let p_lin = linear_params(d).min(p);
    let w = o.weight_bytes as u64;
    let a = o.activation_bytes as u64;
    let (b, s) = (o.batch_size.max(1) as u64, o.seq_len.max(1) as u64);
    let (h, i, l, heads, v) =
        (d.hidden as u64, d.intermediate as u64, d.layers as u64, d.heads as u64, d.vocab as u64);

    let (weights, trainable_params) = match o.method {
        MethodKind::Full => (p * w, p),
        MethodKind::Lora => {
            let frozen = o.frozen_projection_bytes.map_or(w, |b| b as u64);
            (p_lin * frozen + (p - p_lin) * w, lora_params(d, o.lora_r, &o.targets))
        }
        MethodKind::Qlora => {
            let bits = nf4_bits_per_weight(o.quant_block, o.double_quant);
            let quantized = (p_lin as f64 * bits / 8.0).ceil() as u64;
            (quantized + (p - p_lin) * a, lora_params(d, o.lora_r, &o.targets))
        }
    };
    let (trainable, gradients) = match o.method {
        MethodKind::Full => (0, p * w),
        _ => (trainable_params * 4, trainable_params * 4),
    };
    let optimizer = trainable_params * 8;
    let block = if o.cpu_kernels { b * s * (8 * h + 2 * i) * a } else { b * s * (10 * h + 4 * i) * a };
    let blocks = if o.grad_checkpointing { l * b * s * h * a + block } else { l * block };
    let backward = block + 3 * b * heads * s * s * a;
    let activations = blocks + backward + b * s * v * (a + 8);
    let total = weights + trainable + gradients + optimizer + activations;
    MemoryEstimate { weights, trainable, gradients, optimizer, activations, total, trainable_params }
}

/// The options a training config implies, for `method` (so one config can be compared across
/// methods). `default_targets` are the family's LoRA defaults.
pub fn options_for(cfg: &TrainConfig, method: MethodKind, default_targets: &[&str]) -> MemoryOptions {
    let weight_bytes = match cfg.model.dtype.as_str() {
        "auto" => {
            if cfg.model.device == "cpu" {
                4
            } else {
                2
            }
        }
        other => dtype_bytes(other),
    };
    // bf16 on the CPU: activations f32; LoRA and QLoRA hold their frozen projections in bf16
    // and everything else in f32, full fine-tuning trains projections and embeddings in bf16.
    let cpu_bf16 = cfg.model.device == "cpu" && cfg.model.dtype == "bf16";
    let cpu_bf16_products = cpu_bf16 && method != MethodKind::Full;
    let weight_bytes = if cpu_bf16_products { 4 } else { weight_bytes };
    let activation_bytes = if cpu_bf16 {
        4
    } else if method == MethodKind::Qlora {
        dtype_bytes(&cfg.quant.compute_dtype)
    } else {
        weight_bytes
    };
    // `stored` (and `auto` where it means stored) keeps 16-bit checkpoints as they are (the usual
    // case; an f32 checkpoint stays f32).
    // bf16 products on this machine's AMX tile unit hold each weight twice (as stored, and laid
    // out for the input gradient) unless `stored` asks for the stored values only: 4 bytes;
    // elsewhere 2.
    let stored = match cfg.model.frozen_dtype.as_str() {
        "stored" => true,
        _ => cfg.model.device == "cpu" && cfg.model.keeps_stored_dtype(),
    };
    let frozen_projection_bytes = match (cpu_bf16_products, stored) {
        (true, false) if method == MethodKind::Lora && crate::ops::amx::available() => Some(4),
        (true, _) | (false, true) if weight_bytes > 2 => Some(2),
        _ => None,
    };
    MemoryOptions {
        method,
        weight_bytes,
        frozen_projection_bytes,
        activation_bytes,
        batch_size: cfg.train.batch_size,
        seq_len: cfg.data.max_len,
        lora_r: cfg.lora.r,
        targets: targets_for(&cfg.lora.targets, default_targets),
        grad_checkpointing: cfg.train.grad_checkpointing.unwrap_or(method == MethodKind::Qlora),
        cpu_kernels: cfg.model.device == "cpu" && crate::ops::cpu_kernels_enabled(),
        quant_block: cfg.quant.block_size,
        double_quant: cfg.quant.double_quant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HfConfig;

    fn llama_7b() -> ModelDims {
        let cfg = HfConfig::from_value(
            "config.json".into(),
            serde_json::json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096
            }),
        );
        crate::arch::resolve(&cfg).unwrap().1
    }

    fn opts(method: MethodKind, batch: usize, seq: usize) -> MemoryOptions {
        MemoryOptions {
            method,
            weight_bytes: 2,
            frozen_projection_bytes: None,
            activation_bytes: 2,
            batch_size: batch,
            seq_len: seq,
            lora_r: 16,
            targets: vec!["q_proj".into(), "v_proj".into()],
            grad_checkpointing: method == MethodKind::Qlora,
            cpu_kernels: false,
            quant_block: 64,
            double_quant: true,
        }
    }

    const GB: f64 = 1e9;

    #[test]
    fn llama_7b_matches_the_usual_rules_of_thumb() {
        let d = llama_7b();
        assert!((d.parameter_count() as f64 / 1e9 - 6.74).abs() < 0.01);
        let full = estimate(&d, &opts(MethodKind::Full, 1, 512));
        // bf16 weights + bf16 gradients + f32 Adam moments: 16 bytes per parameter.
        assert!((full.weights as f64 / GB - 13.48).abs() < 0.05, "{full:?}");
        assert!((full.optimizer as f64 / GB - 53.9).abs() < 0.2, "{full:?}");
        let lora = estimate(&d, &opts(MethodKind::Lora, 1, 512));
        // r=16 on q and v: 32 layers x 2 x 16 x (4096 + 4096).
        assert_eq!(lora.trainable_params, 32 * 2 * 16 * 8192);
        let qlora = estimate(&d, &opts(MethodKind::Qlora, 1, 512));
        // NF4 with double quantization: about 4.13 bits per linear weight; embeddings stay bf16.
        assert!((qlora.weights as f64 / GB - 3.87).abs() < 0.05, "{qlora:?}");
        assert!(qlora.total < 6 * 1_000_000_000, "QLoRA 7B fits an 8 GB GPU at batch 1: {qlora:?}");
        assert!(full.total > 80 * 1_000_000_000, "full 7B does not fit an 80 GB GPU: {full:?}");
    }

    /// Attention scores are counted once (the block in backward), not per layer: doubling the
    /// layers adds exactly one block's kept activations per layer, however long the sequence.
    #[test]
    fn attention_scores_count_once_not_per_layer() {
        let d = llama_7b();
        let deeper = ModelDims { layers: 2 * d.layers, ..d.clone() };
        for s in [512usize, 4096] {
            let o = MemoryOptions { grad_checkpointing: false, ..opts(MethodKind::Lora, 2, s) };
            let added = estimate(&deeper, &o).activations - estimate(&d, &o).activations;
            let block = 2 * s as u64 * (10 * 4096 + 4 * 11008) * 2;
            assert_eq!(added, d.layers as u64 * block, "seq {s}");
        }
    }

    #[test]
    fn qlora_below_lora_below_full() {
        let d = llama_7b();
        for (b, s) in [(1, 256), (4, 512), (8, 2048)] {
            let full = estimate(&d, &opts(MethodKind::Full, b, s)).total;
            let lora = estimate(&d, &opts(MethodKind::Lora, b, s)).total;
            let qlora = estimate(&d, &opts(MethodKind::Qlora, b, s)).total;
            assert!(qlora < lora && lora < full, "b={b} s={s}: {qlora} {lora} {full}");
        }
        // The story's targets at a small batch: LoRA saves >= 70% of full, QLoRA >= 50% of LoRA.
        let full = estimate(&d, &opts(MethodKind::Full, 1, 512)).total as f64;
        let lora = estimate(&d, &opts(MethodKind::Lora, 1, 512)).total as f64;
        let qlora = estimate(&d, &opts(MethodKind::Qlora, 1, 512)).total as f64;
        assert!(lora <= 0.3 * full, "{lora} vs {full}");
        assert!(qlora <= 0.5 * lora, "{qlora} vs {lora}");
    }

    #[test]
    fn grows_with_batch_and_length_and_checkpointing_saves() {
        let d = llama_7b();
        for m in [MethodKind::Full, MethodKind::Lora, MethodKind::Qlora] {
            let mut last = 0;
            for b in [1, 2, 4, 8] {
                let t = estimate(&d, &opts(m, b, 512)).total;
                assert!(t > last, "{m:?} batch {b}");
                last = t;
            }
            let mut last = 0;
            for s in [64, 128, 512, 2048] {
                let t = estimate(&d, &opts(m, 2, s)).total;
                assert!(t > last, "{m:?} length {s}");
                last = t;
            }
            let mut o = opts(m, 4, 1024);
            o.grad_checkpointing = false;
            let without = estimate(&d, &o).activations;
            o.grad_checkpointing = true;
            assert!(estimate(&d, &o).activations < without / 4, "{m:?}");
            // The CPU's fused kernels keep 8h + 2I per token and block instead of 10h + 4I.
            o.grad_checkpointing = false;
            o.cpu_kernels = true;
            let fused = estimate(&d, &o).activations;
            let block = |per_token: u64| 4 * 1024 * per_token * 2;
            assert_eq!(
                without - fused,
                33 * (block(10 * 4096 + 4 * 11008) - block(8 * 4096 + 2 * 11008)),
                "{m:?}"
            );
        }
    }

    #[test]
    fn parts_add_up_and_targets_expand() {
        let d = llama_7b();
        let e = estimate(&d, &opts(MethodKind::Lora, 2, 128));
        assert_eq!(e.total, e.weights + e.trainable + e.gradients + e.optimizer + e.activations);
        assert_eq!(
            targets_for(&Targets::Keyword("default".into()), &["q_proj", "v_proj"]),
            vec!["q_proj", "v_proj"]
        );
        assert_eq!(targets_for(&Targets::Keyword("all-linear".into()), &[]).len(), 7);
        assert!((nf4_bits_per_weight(64, false) - 4.5).abs() < 1e-12);
        assert!(nf4_bits_per_weight(64, true) < 4.13);
        assert_eq!(fit(80, 100), Fit::Fits);
        assert_eq!(fit(95, 100), Fit::Tight);
        assert_eq!(fit(101, 100), Fit::WontFit);
    }

    #[test]
    fn options_follow_the_config() {
        let mut cfg = TrainConfig::default();
        cfg.model.dtype = "bf16".into();
        cfg.train.batch_size = 3;
        cfg.data.max_len = 256;
        let o = options_for(&cfg, MethodKind::Qlora, &["q_proj", "v_proj"]);
        assert_eq!((o.weight_bytes, o.activation_bytes, o.batch_size, o.seq_len), (2, 2, 3, 256));
        assert!(o.grad_checkpointing, "QLoRA checkpoints by default");
        assert!(!options_for(&cfg, MethodKind::Lora, &[]).grad_checkpointing);
    }

    #[test]
    fn bf16_on_the_cpu_counts_bf16_projections_and_f32_activations() {
        let mut cfg = TrainConfig::default();
        cfg.model.device = "cpu".into();
        cfg.model.dtype = "bf16".into();
        let lora = options_for(&cfg, MethodKind::Lora, &["q_proj", "v_proj"]);
        let projection = if crate::ops::amx::available() { 4 } else { 2 };
        assert_eq!(
            (lora.weight_bytes, lora.frozen_projection_bytes, lora.activation_bytes),
            (4, Some(projection), 4)
        );
        let qlora = options_for(&cfg, MethodKind::Qlora, &["q_proj", "v_proj"]);
        assert_eq!(qlora.activation_bytes, 4);
        cfg.model.frozen_dtype = "stored".into();
        assert_eq!(options_for(&cfg, MethodKind::Lora, &[]).frozen_projection_bytes, Some(2));
        cfg.model.frozen_dtype = "compute".into();
        // Full fine-tuning on the CPU in bf16 trains bf16 weights under f32 activations.
        let full = options_for(&cfg, MethodKind::Full, &[]);
        assert_eq!((full.weight_bytes, full.frozen_projection_bytes, full.activation_bytes), (2, None, 4));
        // On a GPU bf16 is bf16 throughout.
        cfg.model.device = "cuda".into();
        let full = options_for(&cfg, MethodKind::Full, &[]);
        assert_eq!((full.weight_bytes, full.activation_bytes), (2, 2));
    }

    #[test]
    fn a_stored_frozen_base_counts_its_projections_at_two_bytes() {
        let mut cfg = TrainConfig::default();
        cfg.model.device = "cpu".into(); // auto dtype: f32 compute
        cfg.model.frozen_dtype = "compute".into();
        let compute = options_for(&cfg, MethodKind::Lora, &["q_proj", "v_proj"]);
        cfg.model.frozen_dtype = "stored".into();
        let stored = options_for(&cfg, MethodKind::Lora, &["q_proj", "v_proj"]);
        assert_eq!((compute.frozen_projection_bytes, stored.frozen_projection_bytes), (None, Some(2)));
        let d = llama_7b();
        let (a, b) = (estimate(&d, &compute), estimate(&d, &stored));
        let projections = linear_params(&d);
        assert_eq!(a.weights - b.weights, 2 * projections, "projections at 2 bytes instead of 4");
        assert_eq!(a.activations, b.activations, "activations stay f32");
        // Full fine-tuning trains f32 weights whatever the setting.
        assert_eq!(
            estimate(&d, &options_for(&cfg, MethodKind::Full, &[])).weights,
            4 * d.parameter_count() as u64
        );
    }

    #[test]
    fn auto_counts_the_base_as_stored_where_the_cpu_multiplies_it_as_stored() {
        let mut cfg = TrainConfig::default();
        assert_eq!(cfg.model.frozen_dtype, "auto");
        cfg.model.device = "cpu".into();
        let fused = crate::quant::fused_half_products() && crate::ops::cpu_kernels_enabled();
        let bytes =
            |cfg: &TrainConfig| options_for(cfg, MethodKind::Lora, &["q_proj"]).frozen_projection_bytes;
        assert_eq!(bytes(&cfg), if fused { Some(2) } else { None }, "f32 compute on the CPU");
        // bf16 compute keeps its layout for the tile unit; a GPU holds what it computes in.
        cfg.model.dtype = "bf16".into();
        let mut compute = cfg.clone();
        compute.model.frozen_dtype = "compute".into();
        assert_eq!(bytes(&cfg), bytes(&compute));
        cfg.model.dtype = "f32".into();
        cfg.model.device = "cuda".into();
        assert_eq!(bytes(&cfg), None);
    }
}
