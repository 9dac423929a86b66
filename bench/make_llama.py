"""Writes a random-weight Llama as config.json + model.safetensors in bf16: by default with the shape
of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 KV heads, head_dim 64, intermediate 8192,
vocab 128256, tied embeddings; 2.5 GB), with --shape 8b that of Llama-3.1-8B (hidden 4096,
32 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 14336, untied embeddings; 16 GB).
The weights are drawn on the GPU. RoPE is the default kind (rankflow's hf export does not read
llama3 rope scaling yet).

    python3 bench/make_llama.py OUT_DIR [SEED] [--shape 1b|8b]
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
}


SHAPES = {
    "1b": {},
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "head_dim": 128,
        "tie_word_embeddings": False,
    },
}


def main(out, seed, shape):
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    c = {**CONFIG, **SHAPES[shape]}
    hidden, inter, heads, kv, hd = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                                    c["num_key_value_heads"], c["head_dim"])

    def normal(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32) * std).to(torch.bfloat16)

    def ones_ish(n):
        return (1.0 + 0.1 * torch.randn(n, generator=gen, device="cuda")).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": normal(c["vocab_size"], hidden), "model.norm.weight": ones_ish(hidden)}
    if not c["tie_word_embeddings"]:
        tensors["lm_head.weight"] = normal(c["vocab_size"], hidden)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = ones_ish(hidden)
        tensors[f"{p}.post_attention_layernorm.weight"] = ones_ish(hidden)
        tensors[f"{p}.self_attn.q_proj.weight"] = normal(heads * hd, hidden)
        tensors[f"{p}.self_attn.k_proj.weight"] = normal(kv * hd, hidden)
        tensors[f"{p}.self_attn.v_proj.weight"] = normal(kv * hd, hidden)
        tensors[f"{p}.self_attn.o_proj.weight"] = normal(hidden, heads * hd)
        tensors[f"{p}.mlp.gate_proj.weight"] = normal(inter, hidden)
        tensors[f"{p}.mlp.up_proj.weight"] = normal(inter, hidden)
        tensors[f"{p}.mlp.down_proj.weight"] = normal(hidden, inter)
    # config.json last: a folder without it is not taken for a finished checkpoint.
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    print(f"wrote {out}: {sum(t.numel() for t in tensors.values()) / 1e9:.3f}B parameters")


if __name__ == "__main__":
    args = sys.argv[1:]
    shape = "1b"
    if "--shape" in args:
        at = args.index("--shape")
        shape = args[at + 1]
        del args[at:at + 2]
        if shape not in SHAPES:
            sys.exit(f"--shape: expected one of {', '.join(SHAPES)}, got {shape!r}")
    main(args[0], int(args[1]) if len(args) > 1 else 0, shape)
