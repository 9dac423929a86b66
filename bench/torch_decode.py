"""PyTorch baselines on the same checkpoint as rankflow's GPU benchmark (bench/gpu.ts):
eager, and torch.compile(mode="reduce-overhead", fullgraph=True) over a static KV cache, the way
gpt-fast runs Llama (decode step captured in CUDA graphs). The model is written out here in
plain PyTorch (fused qkv and gate/up weights, static caches, SDPA with GQA), reading the same
safetensors. Prints one JSON line per measurement, prefixed "torch ".

    python3 bench/torch_decode.py MODEL_DIR
"""

import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

torch.backends.cuda.matmul.allow_tf32 = True
DECODE_STEPS = 40
CACHE = 1024 + 64
BATCHES = [1, 8]
CONTEXTS = [128, 1024]


class Llama(torch.nn.Module):
    def __init__(self, config, weights, batch):
        super().__init__()
        self.c = config
        w = {k: v.cuda() for k, v in weights.items()}
        # Buffers (not plain attributes), so that compiled graphs see fixed addresses, as in gpt-fast.
        self.register_buffer("embed", w["model.embed_tokens.weight"])
        self.register_buffer("norm", w["model.norm.weight"])
        hd, kv = config["head_dim"], config["num_key_value_heads"]
        self.layers = torch.nn.ModuleList()
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}"
            layer = torch.nn.Module()
            layer.register_buffer("ln1", w[f"{p}.input_layernorm.weight"])
            layer.register_buffer("ln2", w[f"{p}.post_attention_layernorm.weight"])
            layer.register_buffer("wqkv", torch.cat([w[f"{p}.self_attn.{x}_proj.weight"] for x in "qkv"]))
            layer.register_buffer("wo", w[f"{p}.self_attn.o_proj.weight"])
            layer.register_buffer("w13", torch.cat([w[f"{p}.mlp.gate_proj.weight"], w[f"{p}.mlp.up_proj.weight"]]))
            layer.register_buffer("w2", w[f"{p}.mlp.down_proj.weight"])
            layer.register_buffer("k", torch.zeros(batch, kv, CACHE, hd, dtype=torch.bfloat16, device="cuda"))
            layer.register_buffer("v", torch.zeros(batch, kv, CACHE, hd, dtype=torch.bfloat16, device="cuda"))
            self.layers.append(layer)
        half = hd // 2
        inv = 1.0 / (config["rope_theta"] ** (torch.arange(0, half, device="cuda").float() * 2 / hd))
        angles = torch.outer(torch.arange(CACHE + 2048, device="cuda").float(), inv)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())
        self.register_buffer("mask", torch.tril(torch.ones(CACHE, CACHE, dtype=torch.bool, device="cuda")))

    def rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"])).to(x.dtype) * w

    def rope(self, x, pos):
        half = x.shape[-1] // 2
        cos = self.cos[pos][None, :, None, :]
        sin = self.sin[pos][None, :, None, :]
        a, b = x[..., :half].float(), x[..., half:].float()
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(x.dtype)

    def forward(self, ids, pos):
        c = self.c
        bsz, seq = ids.shape
        heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        x = F.embedding(ids, self.embed)
        mask = self.mask[pos][None, None]
        for layer in self.layers:
            h = self.rms(x, layer.ln1)
            q, k, v = (h @ layer.wqkv.T).split([heads * hd, kv * hd, kv * hd], -1)
            q = self.rope(q.view(bsz, seq, heads, hd), pos).transpose(1, 2)
            k = self.rope(k.view(bsz, seq, kv, hd), pos).transpose(1, 2)
            v = v.view(bsz, seq, kv, hd).transpose(1, 2)
            layer.k.index_copy_(2, pos, k)
            layer.v.index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, layer.k, layer.v, attn_mask=mask, enable_gqa=True)
            x = x + o.transpose(1, 2).reshape(bsz, seq, heads * hd) @ layer.wo.T
            h = self.rms(x, layer.ln2)
            gate, up = (h @ layer.w13.T).chunk(2, -1)
            x = x + (F.silu(gate) * up) @ layer.w2.T
        return self.rms(x[:, -1:], self.norm) @ self.embed.T


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def report(**row):
    print("torch " + json.dumps(row), flush=True)


@torch.no_grad()
def main(model_dir):
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    vocab = config["vocab_size"]
    for batch in BATCHES:
        model = Llama(config, weights, batch)
        step = lambda ids, pos: model(ids, pos).argmax(-1)  # noqa: E731
        compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
        for name, fn in [("eager", step), ("compile", compiled)]:
            for context in CONTEXTS:
                prompt = torch.randint(0, vocab, (batch, context), generator=gen, device="cuda")
                model(prompt, torch.arange(context, device="cuda"))
                token = prompt[:, -1:]
                times = []
                for n in range(DECODE_STEPS + 5):
                    pos = torch.tensor([context + n], device="cuda")
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    token = fn(token, pos).clone()
                    torch.cuda.synchronize()
                    if n >= 5:
                        times.append((time.perf_counter() - start) * 1000)
                report(mode=name, what="decode", batch=batch, context=context, ms=statistics.median(times))
        if batch == 1:
            for length in [512, 2048]:
                prompt = torch.randint(0, vocab, (1, length), generator=gen, device="cuda")
                pos = torch.arange(length, device="cuda")
                model.mask = torch.tril(torch.ones(length, CACHE if length <= CACHE else length, dtype=torch.bool,
                                                   device="cuda"))
                if length > CACHE:
                    for layer in model.layers:
                        layer.k = torch.zeros(1, config["num_key_value_heads"], length, config["head_dim"],
                                                 dtype=torch.bfloat16, device="cuda")
                        layer.v = torch.zeros_like(layer.k)
                    model.mask = torch.tril(torch.ones(length, length, dtype=torch.bool, device="cuda"))
                ms = timed(lambda: model(prompt, pos), 5)
                report(mode="eager", what="prefill", batch=1, context=length, ms=ms)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
