#!/usr/bin/env python3
"""Proves the architecture tests can fail: switches one mechanism off at a time (a textual edit
of the engine source), runs the tests that prove that mechanism, checks that they now fail, and
restores the file. A mechanism whose tests still pass is a defect in the tests.

Usage (from anywhere; needs cargo and the fixtures):

    python3 tools/ablations.py                    # every ablation (~10 min on 2 cores)
    python3 tools/ablations.py "alibi off" ...    # some, by name

Set CARGO_TARGET_DIR to share a build directory. Exits non-zero if any ablation leaves its
tests passing, or if an edit no longer applies (the table below needs updating).
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "crates/engine/src"

# (name, file under crates/engine/src, text, replacement, tests) — tests are test-name filters of
# tests/parity.rs, or "<test file>:<filter>" for another test file.
ABLATIONS = [
 ("attn softcap", "model/dims.rs", "Scalar::AttnSoftcap => self.attn_softcap = num(\"attn_logit_softcapping\")?,", "Scalar::AttnSoftcap => self.attn_softcap = None,", "gemma2_logits"),
 ("final softcap", "model/dims.rs", "Scalar::FinalSoftcap => self.final_softcap = num(\"final_logit_softcapping\")?,", "Scalar::FinalSoftcap => self.final_softcap = None,", "gemma3_text_logits"),
 ("query_pre_attn_scalar", "model/dims.rs", "self.attn_scale = 1.0 / s.sqrt();", "let _ = s;", "gemma2_logits"),
 ("granite attention multiplier", "model/dims.rs", "self.attn_scale = m;", "let _ = m;", "granite_logits"),
 ("clip_qkv", "model/attention.rs", "if let Some(clip) = c.clip {", "if let Some(clip) = None::<f64> {", "olmo_logits"),
 ("grouped qkv as fused", "model/attention.rs", "if self.cfg.layout == QkvLayout::Fused {", "if true {", "gpt_neox_logits bloom_logits"),
 ("per-layer-type rope", "model/dims.rs", "cfg.rope(spec.default_theta, kinds.as_ref().and_then(|k| k.get(i)).map(String::as_str))", "cfg.rope(spec.default_theta, kinds.as_ref().and_then(|k| k.get(i)).map(|_| \"full_attention\"))", "gemma3_text_logits"),
 ("residual multiplier", "model/blocks.rs", "Some(s) => y * s,", "Some(_) => Ok(y),", "granite_logits"),
 ("alibi off", "model/decoder.rs", "alibi: self.positions.alibi(),", "alibi: None,", "bloom_logits mpt_logits"),
 ("learned offset", "model/positions.rs", "table.tensor().narrow(0, start + offset, seq)", "table.tensor().narrow(0, start, seq)", "opt_logits"),
 ("partial rotary as full", "model/positions.rs", "let rot = ((head_dim as f64 * p.partial_factor) as usize) & !1;", "let rot = head_dim;", "phi_logits gpt_neox_logits stablelm_logits glm_logits"),
 ("interleaved as half-split", "model/decoder.rs", "Positions::rope(&dims.rope, dims.head_dim, dims.max_positions, layout, f)?", "Positions::rope(&dims.rope, dims.head_dim, dims.max_positions, crate::ops::RopeLayout::HalfSplit, f)?", "glm_logits glm4_logits"),
 ("moe renormalize", "model/mlp.rs", "if renormalize {", "if false {", "mixtral_logits qwen3_moe_logits"),
 ("qk norm per head off", "model/attention.rs", "if c.qk_norm == QkNorm::PerHead\n", "if false\n", "qwen3_logits gemma3_text_logits"),
 ("qk norm full off", "model/attention.rs", "if c.qk_norm == QkNorm::Full\n", "if false\n", "olmo2_logits"),
 ("embed scale", "model/decoder.rs", "if let Some(s) = self.dims.embed_scale {", "if let Some(s) = None::<f64> {", "gemma_logits granite_logits"),
 ("post norms", "model/blocks.rs", "let a = self.scaled(Self::apply(&self.attn_out_norm, &a)?)?;", "let a = self.scaled(a)?;", "gemma2_logits olmo2_logits glm4_logits"),
 ("parallel as sequential", "model/blocks.rs", "            Residual::Sequential => {\n", "            Residual::Sequential | Residual::Parallel => {\n", "phi_logits gpt_neox_logits falcon_logits"),
 ("logits scaling", "model/decoder.rs", "match self.dims.logit_scale {", "match None::<f64> {", "granite_logits"),
 ("head bias", "model/decoder.rs", "let logits = match &self.head_bias {", "let logits = match &None::<Param> {", "phi_logits"),
 ("embedding norm", "model/decoder.rs", "match &self.embed_norm {\n            Some(n) => n.forward(&x),", "match &self.embed_norm {\n            Some(_) => Ok(x),", "bloom_logits"),
 ("longrope always short", "model/config.rs", "let ext = if max_positions > *original_max { long_factor } else { short_factor };", "let ext = short_factor;", "positions:rope"),
 ("dynamic ntk never scales", "model/config.rs", "if max_positions > *original_max {\n                let base", "if false {\n                let base", "positions:rope"),
 ("yarn without mscale", "model/config.rs", "(Some(m), Some(a)) => get_mscale(*factor, *m) / get_mscale(*factor, *a),", "(Some(_), Some(_)) => 1.0,", "positions:rope"),
 ("mpt slopes as bloom", "model/positions.rs", "        AlibiSlopes::Bloom => {\n", "        AlibiSlopes::Bloom | AlibiSlopes::Mpt => {\n", "positions:alibi"),
 ("grouped qkv as fused (internlm2)", "model/attention.rs", "if self.cfg.layout == QkvLayout::Fused {", "if true {", "internlm2"),
 ("alibi off (baichuan-13b)", "model/decoder.rs", "alibi: self.positions.alibi(),", "alibi: None,", "baichuan_13b"),
 ("chatglm full rotary", "arch/hooks.rs", "partial_factor: 0.5,", "partial_factor: 1.0,", "chatglm"),
 ("t5 relative bias off", "model/seq2seq.rs", "let self_pos = AttnPos { bias: bias.as_ref(), key_lens, ..Default::default() };", "let self_pos = AttnPos { bias: None, key_lens, ..Default::default() };", "t5_logits"),
 ("t5 tied output scale off", "model/seq2seq.rs", "let h = match self.dims.output_scale {", "let h = match None::<f64> {", "t5_tied_logits"),
 ("bart logits bias off", "model/seq2seq.rs", "match &self.logits_bias {\n            Some(b) => logits.broadcast_add(b),", "match &self.logits_bias {\n            Some(_) => Ok(logits),", "bart_logits"),
 ("bart post-norm as pre-norm", "model/seq2seq.rs", "NormPlacement::Post => norm.forward(&(x + f(x)?)?),", "NormPlacement::Post => x + f(&norm.forward(x)?)?,", "bart_logits"),
 ("encoder key padding ignored", "model/seq2seq.rs", "self.encoder.forward(x, Some(lens), None, ctx)", "self.encoder.forward(x, None, None, ctx)", "seq2seq_training:padded"),
 ("deepseek routed scale", "model/mlp.rs", "if scale != 1.0 {", "if false {", "deepseek_v3_logits"),
 ("deepseek correction bias", "model/mlp.rs", ".map(|(s, b)| s + b)", ".map(|(s, _)| *s)", "deepseek_v3_logits"),
 ("deepseek group limit", "model/mlp.rs", "for &g in &order[*topk_group..] {", "for &g in &order[*groups..] {", "deepseek_v3_logits"),
 ("deepseek shared experts", "model/mlp.rs", "out = (out + shared.forward(&xf, ctx)?)?;", "let _ = shared;", "deepseek_v3_logits"),
 ("mla rope on the shared key", "model/attention.rs", "k_rot = ops::rope(&k_rot, rope, offset)?;", "let _ = offset;", "deepseek_v3_logits"),
 ("sliding window", "model/blocks.rs", "window: d.windows.get(layer).copied().flatten(),", "window: None,", "gemma2_logits gemma3_text_logits mistral_logits"),
]


def main():
    only = sys.argv[1:]
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    bad = []
    for name, f, old, new, tests in ABLATIONS:
        if only and name not in only:
            continue
        path = SRC / f
        text = path.read_text()
        if old not in text:
            bad.append(f"{name}: the edit no longer applies to {f}")
            continue
        path.write_text(text.replace(old, new))
        try:
            results = []
            for t in tests.split():
                binary, filt = t.split(":") if ":" in t else ("parity", t)
                r = subprocess.run(["cargo", "test", "-q", "-p", "finetune-engine", "--test", binary, filt],
                                   cwd=REPO, env=env, capture_output=True, text=True)
                results.append(f"{t}: {'fails' if r.returncode != 0 else 'STILL PASSES'}")
                if r.returncode == 0:
                    bad.append(f"{name}: {t} still passes")
            print(f"[{name}] " + " | ".join(results), flush=True)
        finally:
            path.write_text(text)
    if bad:
        print("\n".join(["", "PROBLEMS:"] + bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
