"""Writes a random Llama model (weights in the exact HF layout) and a token dataset for the
speed/memory benchmarks. Nothing here is committed output: run it to regenerate.

usage: make_bench_model.py OUT_DIR [--hidden 768 --layers 12 --intermediate 2048 --vocab 8192]
"""
import argparse, json, os, random

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=max(512, a.seq), tie_word_embeddings=False, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    # The fixtures' tokenizer files would not match this vocabulary; the benchmark uses token ids.
    here = os.path.dirname(os.path.abspath(__file__))
    tok_dir = os.path.join(here, "..", "..", "fixtures", "models", "llama")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tok_dir, f)) as src, open(os.path.join(a.out, f), "w") as dst:
            dst.write(src.read())
    rng = random.Random(0)
    with open(os.path.join(a.out, "bench-data.jsonl"), "w") as f:
        for _ in range(a.rows):
            ids = [rng.randrange(3, min(a.vocab, 384)) for _ in range(a.seq)]
            f.write(json.dumps({"input_ids": ids}) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": n, "out": a.out}))


if __name__ == "__main__":
    main()
