#!/usr/bin/env python3
"""Writes the QLoRA benchmark's model and data (nothing here is committed; run it before the
benchmark):

    .venv/bin/python tools/bench/make_bench_model.py OUT_DIR [large]

OUT_DIR/model        a random llama (transformers' own init, torch seed 0) in the Hugging Face
                     layout: hidden 1024, MLP 2816, 10 layers, 16 heads / 4 KV heads, vocab 384
                     (the fixture tokenizer's), bf16 safetensors. 113.5 M parameters, 99.3 % of them
                     in the projections: a weight-dominated model.
OUT_DIR/data.jsonl   256 sequences of 128 tokens (`tokens` format) drawn from a sparse bigram
                     chain (every token has 4 likely successors), so the loss has room to fall.

`large` (for GPUs): hidden 2048, MLP 5632, 16 layers, 32 heads / 8 KV heads (0.72 B parameters),
and 256 sequences of 512 tokens.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "models" / "llama"


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["large"]):
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    large = sys.argv[2:] == ["large"]
    model_dir = out / "model"
    torch.manual_seed(0)
    size = (
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
        if large
        else dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=10, num_attention_heads=16, num_key_value_heads=4)
    )
    seq_len = 512 if large else 128
    cfg = LlamaConfig(
        vocab_size=384, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=None, eos_token_id=2, **size,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    proj = sum(p.numel() for name, p in model.named_parameters() if name.endswith("proj.weight"))
    model.save_pretrained(str(model_dir))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / f, model_dir / f)

    rng = np.random.default_rng(0)
    ids = np.arange(3, 384)
    successors = {int(t): rng.choice(ids, size=4, replace=False) for t in ids}
    probs = np.array([0.55, 0.25, 0.12, 0.08])
    with open(out / "data.jsonl", "w") as f:
        for _ in range(256):
            seq = [int(rng.choice(ids))]
            while len(seq) < seq_len:
                seq.append(int(rng.choice(successors[seq[-1]], p=probs)))
            f.write(json.dumps({"input_ids": seq, "labels": seq}) + "\n")
    print(f"{model_dir}: {n / 1e6:.1f} M parameters, {100 * proj / n:.1f} % in projections")


if __name__ == "__main__":
    main()
