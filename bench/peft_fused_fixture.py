#!/usr/bin/env python3
"""PEFT's fused-expert adapter layout (transformers 5, PEFT >= 0.18) for the tiny Mixtral fixture.

Written and checked with torch 2.15.0, transformers 5.25.0, peft 0.21.2 (CPU, float32):
  pip install torch==2.15.0 transformers==5.25.0 peft==0.21.2 safetensors

On transformers 5 Mixtral's experts are two 3-D parameters per layer, `mlp.experts.gate_up_proj`
[E, 2I, H] (w1 rows, then w3 rows) and `mlp.experts.down_proj` [E, H, I], and the router is the
parameter `mlp.gate.weight` [E, H]. PEFT adapts them with `target_parameters` (lora.ParamWrapper).
This script writes, next to the base model of bench/golden_mixtral.py,

  worker/model/tests/fixtures/tiny_mixtral/peft_fused/
    fused/            a native fused adapter: get_peft_model with target_modules q/k/v/o and
                      target_parameters experts.gate_up_proj, experts.down_proj, gate.weight
                      (random A and B), saved by save_pretrained
    per_expert/       the same kind of adapter as sapllm writes in its per-expert layout
                      (block_sparse_moe.experts.E.w1/w2/w3, router `gate`), random A and B
    converted/        per_expert/ loaded by PeftModel.from_pretrained on the transformers 5 model
                      (PEFT converts it: gate_up rank 2r, block-diagonal B) and saved again by
                      save_pretrained: what sapllm's `--adapter-layout fused` must write
    golden.safetensors  input_ids [2, T]; logits_fused (base + fused/), logits_per_expert
                      (base + per_expert/ as PEFT applies it after conversion)

worker/model/tests/model_peft_fused.rs checks the Rust side against it.
Usage: python bench/peft_fused_fixture.py (after bench/golden_mixtral.py wrote the base).
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import MixtralForCausalLM

BASE = os.path.join(os.path.dirname(__file__), "..", "worker", "model", "tests", "fixtures", "tiny_mixtral")
OUT = os.path.join(BASE, "peft_fused")
R, ALPHA = 4, 8


def base_model() -> MixtralForCausalLM:
    return MixtralForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def write_per_expert(path: str, cfg) -> None:
    """An adapter in sapllm's per-expert layout (what `sapllm-worker sft` writes by default)."""
    gen = torch.Generator().manual_seed(3)
    h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    tensors = {}

    def lora(name: str, out_f: int, in_f: int) -> None:
        tensors[f"base_model.model.{name}.lora_A.weight"] = 0.3 * torch.randn(R, in_f, generator=gen)
        tensors[f"base_model.model.{name}.lora_B.weight"] = 0.3 * torch.randn(out_f, R, generator=gen)

    for layer in range(cfg.num_hidden_layers):
        a = f"model.layers.{layer}.self_attn"
        lora(f"{a}.q_proj", q, h)
        lora(f"{a}.k_proj", kv, h)
        lora(f"{a}.v_proj", kv, h)
        lora(f"{a}.o_proj", h, q)
        m = f"model.layers.{layer}.block_sparse_moe"
        lora(f"{m}.gate", e, h)
        for x in range(e):
            lora(f"{m}.experts.{x}.w1", i, h)
            lora(f"{m}.experts.{x}.w2", h, i)
            lora(f"{m}.experts.{x}.w3", i, h)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": R,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate"],
        "base_model_name_or_path": None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def main() -> None:
    torch.manual_seed(0)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    gen = torch.Generator().manual_seed(1)
    model = base_model()
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=gen)

    # 1. A native fused adapter, as a PEFT user on transformers 5 trains it.
    lcfg = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        lora_dropout=0.0,  # ParamWrapper refuses dropout
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["experts.gate_up_proj", "experts.down_proj", "gate.weight"],
        init_lora_weights=False,  # random A and B (nn.Linear's init): the adapter changes the output
        task_type="CAUSAL_LM",
    )
    fused = get_peft_model(model, lcfg).eval()
    with torch.no_grad():
        logits_fused = fused(input_ids=ids).logits
    fused.save_pretrained(os.path.join(OUT, "fused"))

    # 2. sapllm's per-expert layout, and PEFT's own conversion of it to the fused layout.
    write_per_expert(os.path.join(OUT, "per_expert"), cfg)
    conv = PeftModel.from_pretrained(base_model(), os.path.join(OUT, "per_expert")).eval()
    with torch.no_grad():
        logits_per_expert = conv(input_ids=ids).logits
    conv.save_pretrained(os.path.join(OUT, "converted"))

    # The per-expert adapter, applied by hand on the per-expert math, must give the same logits:
    # otherwise the conversion (and so the fixture) would be wrong.
    check_per_expert(os.path.join(OUT, "per_expert"), ids, logits_per_expert)

    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "logits_fused": logits_fused.contiguous(),
            "logits_per_expert": logits_per_expert.contiguous(),
        },
        os.path.join(OUT, "golden.safetensors"),
        metadata={"transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__},
    )
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "Generated by bench/peft_fused_fixture.py with transformers %s, peft %s, torch %s; checked by "
            "worker/model/tests/model_peft_fused.rs.\n" % (transformers.__version__, peft.__version__, torch.__version__)
        )
    for d in ("fused", "converted"):
        p = os.path.join(OUT, d, "README.md")
        if os.path.exists(p):
            os.remove(p)  # PEFT's model card template: kilobytes of nothing
    print("wrote", OUT, file=sys.stderr)


@torch.no_grad()
def check_per_expert(path: str, ids: torch.Tensor, expected: torch.Tensor) -> None:
    """Merges the per-expert adapter into the fused base weights by the per-expert math."""
    from safetensors.torch import load_file

    t = load_file(os.path.join(path, "adapter_model.safetensors"))
    s = ALPHA / R
    model = base_model()
    cfg = model.config
    i = cfg.intermediate_size

    def delta(name: str) -> torch.Tensor:
        p = f"base_model.model.{name}"
        return s * t[f"{p}.lora_B.weight"] @ t[f"{p}.lora_A.weight"]

    for layer, block in enumerate(model.model.layers):
        a = f"model.layers.{layer}.self_attn"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(block.self_attn, proj).weight += delta(f"{a}.{proj}")
        m = f"model.layers.{layer}.block_sparse_moe"
        block.mlp.gate.weight += delta(f"{m}.gate")
        for x in range(cfg.num_local_experts):
            block.mlp.experts.gate_up_proj[x, :i] += delta(f"{m}.experts.{x}.w1")
            block.mlp.experts.gate_up_proj[x, i:] += delta(f"{m}.experts.{x}.w3")
            block.mlp.experts.down_proj[x] += delta(f"{m}.experts.{x}.w2")
    got = model(input_ids=ids).logits
    diff = (got - expected).abs().max().item()
    assert diff < 1e-4, f"PEFT's conversion of the per-expert adapter differs from the per-expert math: {diff}"


if __name__ == "__main__":
    main()
