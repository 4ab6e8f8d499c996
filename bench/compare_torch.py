#!/usr/bin/env python3
"""Side-by-side with PyTorch + transformers on the same Mixtral configurations and machine.

Times full-parameter forward+backward (f32) and greedy KV-cache generation for the `tiny` and
`small` presets (same dimensions as worker/src/model/config.rs, vocab 2048, random weights),
and, given the Rust bench's JSON, prints the Rust/PyTorch throughput ratio.

  cargo run --release -p sapllm-worker --bin bench_model -- --json /tmp/rust.json [--quick]
  python bench/compare_torch.py --rust-json /tmp/rust.json --threads 2 [--quick]
"""

import argparse
import json
import time

import torch
from transformers import MixtralConfig, MixtralForCausalLM

VOCAB = 2048
PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, num_local_experts=4, rope_theta=10000.0),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, num_local_experts=8, rope_theta=1e6),
}
TRAIN_CASES = [("tiny", 4, 64), ("tiny", 4, 256), ("tiny", 2, 1024), ("small", 1, 128), ("small", 1, 512)]
QUICK_CASES = [("tiny", 4, 128), ("small", 1, 128)]  # bench_model --quick


def build(preset):
    cfg = MixtralConfig(vocab_size=VOCAB, max_position_embeddings=4096, num_experts_per_tok=2,
                        sliding_window=None, tie_word_embeddings=False, **PRESETS[preset])
    cfg._attn_implementation = "eager"
    return MixtralForCausalLM(cfg).to(torch.float32)


def ids(b, t):
    return (torch.arange(b * t, dtype=torch.int64) * 2654435761 % VOCAB).reshape(b, t)


def time_train(model, b, t, reps):
    x = ids(b, t)
    model.train()

    def step():
        start = time.perf_counter()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    times = sorted(step() for _ in range(reps))
    return times[len(times) // 2]


def time_generate(model, b):
    model.eval()
    prompts = torch.stack([torch.tensor([(j * 31 + i * 7) % VOCAB for j in range(32)]) for i in range(b)])
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=64, min_new_tokens=64,
                             do_sample=False, pad_token_id=0)
        s = time.perf_counter() - start
    return (out.shape[1] - 32) * b / s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the cases of bench_model --quick, 1 rep")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rust = json.load(open(a.rust_json)) if a.rust_json else []

    def rust_tps(kind, **kw):
        for r in rust:
            if r["kind"] == kind and all(r.get(k) == v for k, v in kw.items()):
                return r["tokens_per_s"]
        return None

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| preset | batch x seq | torch tokens/s | rust tokens/s | rust/torch |")
    print("|---|---|---|---|---|")
    models = {}
    if a.quick:
        a.reps = 1
    for preset, b, t in QUICK_CASES if a.quick else TRAIN_CASES:
        m = models.setdefault(preset, build(preset))
        s = time_train(m, b, t, a.reps)
        tps = b * t / s
        r = rust_tps("train", preset=preset, qlora=False, batch=b, seq=t)
        ratio = f"{r / tps:.2f}" if r else "-"
        rs = "-" if r is None else f"{r:.0f}"
        print(f"| {preset} full f32 fwd+bwd | {b} x {t} | {tps:.0f} | {rs} | {ratio} |")
    print()
    print("| preset | batch | torch gen tokens/s | rust gen tokens/s (f32) | rust/torch |")
    print("|---|---|---|---|---|")
    for preset in ["tiny", "small"]:
        m = models.setdefault(preset, build(preset))
        for b in [1, 4]:
            tps = time_generate(m, b)
            r = rust_tps("generate", preset=preset, precision="f32", batch=b)
            ratio = f"{r / tps:.2f}" if r else "-"
            print(f"| {preset} | {b} | {tps:.1f} | {'-' if r is None else f'{r:.1f}'} | {ratio} |")


if __name__ == "__main__":
    main()
