// The hf export: a Hugging Face checkpoint directory (config.json + safetensors) becomes a Graph
// that follows the generation convention of core/runtime/generate.ts, with its weights read
// lazily from the safetensors files. Llama, Qwen2 and GPT-2 decoders are understood.

import { z } from "zod";
import { join, resolve } from "node:path";
import { definePlugin, type ExportedModel, type ModelInfo } from "../../core/pipeline/plugin.ts";
import { type Graph, GraphBuilder } from "../../core/ir/graph.ts";
import { type DType, isFloat } from "../../core/ir/tensor.ts";
import { SafetensorsStore } from "../../core/ir/safetensors.ts";
import type { WeightStore } from "../../core/ir/weights.ts";
import { loadTokenizer } from "./byte_tokenizer.ts";
import { initModel, PRESETS } from "./hf_random.ts";
import { isFile } from "../../core/runtime/files.ts";

export const options = z.object({
  path: z.string().describe(
    "the checkpoint directory (config.json, safetensors), relative to the pipeline file",
  ),
  dtype: z.enum(["f32", "f16", "bf16"]).default("f32").describe(
    "the dtype the graph computes in; weights are converted to it as they are read",
  ),
  init: z.object({
    preset: z.enum(PRESETS).default("quickstart").describe("the shape of the random model"),
    seed: z.number().int().nonnegative().default(0).describe("seed of the random weights"),
  }).optional().describe(
    "when the directory has no config.json, first write a random-weight checkpoint there",
  ),
});
export type Options = z.infer<typeof options>;

export class ExportError extends Error {
  override name = "ExportError";
}

/** The decoder families this exporter builds, by HF architecture and by model_type. */
const FAMILIES = new Map<string, DecoderConfig["family"]>([
  ["LlamaForCausalLM", "llama"],
  ["Qwen2ForCausalLM", "qwen2"],
  ["GPT2LMHeadModel", "gpt2"],
  ["llama", "llama"],
  ["qwen2", "qwen2"],
  ["gpt2", "gpt2"],
]);

/** What the graph builders need from config.json, checked and with HF's defaults filled in. */
export interface DecoderConfig {
  family: "llama" | "qwen2" | "gpt2";
  architecture: string;
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  maxPositions: number;
  eps: number;
  tied: boolean;
  /** Llama/Qwen2 only. */
  ropeTheta: number;
  qkvBias: boolean;
  outputBias: boolean;
  mlpBias: boolean;
  /** GPT-2 only. */
  gelu: "tanh" | "none";
  attentionScale: (layer: number) => number;
}

export default definePlugin({
  kind: "export",
  name: "hf",
  description: "Hugging Face checkpoints (Llama, Qwen2, GPT-2) from config.json and safetensors",
  options,
  async export(opts: Options, ctx): Promise<ExportedModel> {
    const dir = resolve(ctx.baseDir, opts.path);
    if (opts.init && !isFile(join(dir, "config.json"))) {
      if (ctx.dryRun) {
        // Nothing may be written: the checkpoint the first run would write is made aside and removed.
        const aside = await Deno.makeTempDir({ prefix: "rankflow-dry-run-" });
        await initModel(join(aside, "model"), opts.init);
        const exported = exportCheckpoint(join(aside, "model"), opts.dtype);
        return {
          ...exported,
          [Symbol.dispose]() {
            exported[Symbol.dispose]();
            Deno.removeSync(aside, { recursive: true });
          },
        };
      }
      ctx.log(`hf: writing a random ${opts.init.preset} checkpoint (seed ${opts.init.seed}) to ${dir}`);
      await initModel(dir, opts.init);
    }
    return exportCheckpoint(dir, opts.dtype);
  },
});

/** Builds the graph of the checkpoint in `dir`, computing in `dtype`. */
export function exportCheckpoint(dir: string, dtype: DType = "f32"): ExportedModel {
  const config = readConfig(dir);
  const store = new SafetensorsStore(dir);
  try {
    const graph = config.family === "gpt2"
      ? buildGpt2(config, store, dtype, dir)
      : buildLlama(config, store, dtype, dir);
    const model: ModelInfo = {
      architecture: config.architecture,
      vocabSize: config.vocab,
      layers: config.layers,
      heads: config.heads,
      kvHeads: config.kvHeads,
      headDim: config.headDim,
      hidden: config.hidden,
      maxPositions: config.maxPositions,
    };
    const tokenizer = isFile(join(dir, "tokenizer.json")) ? loadTokenizer(dir) : undefined;
    return { graph, weights: store, model, tokenizer, [Symbol.dispose]: () => store[Symbol.dispose]() };
  } catch (error) {
    store[Symbol.dispose]();
    throw error;
  }
}

export function readConfig(dir: string): DecoderConfig {
  const path = join(dir, "config.json");
  if (!isFile(path)) throw new ExportError(`${path}: not found; the hf export needs a checkpoint directory`);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(Deno.readTextFileSync(path));
  } catch (error) {
    throw new ExportError(`${path}: not valid JSON (${(error as Error).message})`);
  }
  const architecture = (raw.architectures as string[] | undefined)?.[0] ?? String(raw.model_type);
  // model_type alone decides only when the config names no architecture.
  const family = FAMILIES.get(architecture) ??
    (raw.architectures ? undefined : FAMILIES.get(String(raw.model_type)));
  if (!family) {
    throw new ExportError(
      `${path}: architecture ${architecture} is not supported; the hf export knows ` +
        [...FAMILIES.keys()].filter((name) => /[A-Z]/.test(name)).join(", "),
    );
  }
  const int = (name: string, fallback?: number): number => {
    const value = raw[name] ?? fallback;
    if (!Number.isInteger(value) || (value as number) <= 0) {
      throw new ExportError(`${path}: ${name} must be a positive integer, got ${JSON.stringify(raw[name])}`);
    }
    return value as number;
  };
  const num = (name: string, fallback: number): number => {
    const value = raw[name] ?? fallback;
    if (typeof value !== "number") throw new ExportError(`${path}: ${name} must be a number`);
    return value;
  };
  if (family === "gpt2") return gpt2Config(raw, path, architecture, int, num);
  const hidden = int("hidden_size");
  const heads = int("num_attention_heads");
  const headDim = int("head_dim", hidden / heads);
  const rope = (raw.rope_scaling ?? raw.rope_parameters ?? {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? "default";
  if (ropeType !== "default" && ropeType !== "none") {
    throw new ExportError(
      `${path}: rope scaling of type ${JSON.stringify(ropeType)} is not supported (only default)`,
    );
  }
  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu") {
    throw new ExportError(
      `${path}: hidden_act ${JSON.stringify(raw.hidden_act)} is not supported (only silu)`,
    );
  }
  if (raw.use_sliding_window === true) {
    throw new ExportError(`${path}: sliding-window attention (use_sliding_window) is not supported`);
  }
  const theta = raw.rope_theta ?? (raw.rope_parameters as Record<string, unknown> | undefined)?.rope_theta ??
    10000;
  if (typeof theta !== "number") throw new ExportError(`${path}: rope_theta must be a number`);
  return {
    family,
    architecture,
    vocab: int("vocab_size"),
    hidden,
    layers: int("num_hidden_layers"),
    heads,
    kvHeads: int("num_key_value_heads", heads),
    headDim,
    intermediate: int("intermediate_size"),
    maxPositions: int("max_position_embeddings", 2048),
    eps: num("rms_norm_eps", 1e-6),
    tied: raw.tie_word_embeddings === true,
    ropeTheta: theta,
    qkvBias: family === "qwen2" || raw.attention_bias === true,
    outputBias: family !== "qwen2" && raw.attention_bias === true,
    mlpBias: raw.mlp_bias === true,
    gelu: "none",
    attentionScale: () => 1 / Math.sqrt(headDim),
  };
}

function gpt2Config(
  raw: Record<string, unknown>,
  path: string,
  architecture: string,
  int: (name: string, fallback?: number) => number,
  num: (name: string, fallback: number) => number,
): DecoderConfig {
  const hidden = int("n_embd");
  const heads = int("n_head");
  const activation = raw.activation_function ?? "gelu_new";
  const gelu = ({ gelu_new: "tanh", gelu_pytorch_tanh: "tanh", gelu: "none" } as const)[activation as string];
  if (!gelu) throw new ExportError(`${path}: activation_function ${activation} is not supported`);
  const headDim = hidden / heads;
  const scaled = raw.scale_attn_weights !== false;
  const byLayer = raw.scale_attn_by_inverse_layer_idx === true;
  return {
    family: "gpt2",
    architecture,
    vocab: int("vocab_size"),
    hidden,
    layers: int("n_layer"),
    heads,
    kvHeads: heads,
    headDim,
    intermediate: raw.n_inner == null ? 4 * hidden : int("n_inner"),
    maxPositions: int("n_positions"),
    eps: num("layer_norm_epsilon", 1e-5),
    tied: raw.tie_word_embeddings !== false,
    ropeTheta: 0,
    qkvBias: true,
    outputBias: true,
    mlpBias: true,
    gelu,
    attentionScale: (layer) => (scaled ? 1 / Math.sqrt(headDim) : 1) / (byLayer ? layer + 1 : 1),
  };
}

/** A GraphBuilder that declares weights only after checking them against the checkpoint. */
class DecoderBuilder extends GraphBuilder {
  constructor(
    readonly config: DecoderConfig,
    readonly store: WeightStore,
    readonly dtype: DType,
    readonly dir: string,
  ) {
    super(config.architecture);
  }

  /** Checks that the checkpoint holds a float tensor `key` of the shape config.json implies. */
  verify(key: string, shape: number[]): void {
    if (!this.store.has(key)) {
      throw new ExportError(`${this.dir}: weight ${key} [${shape}] is missing from the checkpoint`);
    }
    const info = this.store.info(key);
    if (info.shape.join() !== shape.join()) {
      throw new ExportError(
        `${this.dir}: weight ${key} has shape [${info.shape}], config.json implies [${shape}]`,
      );
    }
    if (!isFloat(info.dtype)) {
      throw new ExportError(`${this.dir}: weight ${key} is ${info.dtype}, not a float`);
    }
  }

  /** Declares the checkpoint tensor `key`, which config.json implies has this shape. */
  checked(key: string, shape: number[]): string {
    this.verify(key, shape);
    return this.weight(key, this.dtype, shape);
  }

  /** Declares columns or rows start…end of `axis` of the checkpoint tensor `key` as its own weight. */
  checkedPart(
    key: string,
    shape: number[],
    part: { name: string; axis: number; start: number; end: number },
  ): string {
    this.verify(key, shape);
    const partShape = shape.map((size, axis) => (axis === part.axis ? part.end - part.start : size));
    return this.weight(key, this.dtype, partShape, part.name, [{
      axis: part.axis,
      start: part.start,
      end: part.end,
    }]);
  }

  /** ids, pos and every layer's past caches, as core/runtime/generate.ts expects them. */
  conventionInputs(): { ids: string; pos: string } {
    const ids = this.input("ids", "i32", ["batch", "seq"]);
    const pos = this.input("pos", "i32", ["seq"]);
    const { layers, kvHeads, headDim } = this.config;
    for (let layer = 0; layer < layers; layer++) {
      this.input(`past_k.${layer}`, this.dtype, ["batch", kvHeads, "past", headDim]);
      this.input(`past_v.${layer}`, this.dtype, ["batch", kvHeads, "past", headDim]);
    }
    return { ids, pos };
  }

  /** [batch, seq, heads*hd] → [batch, heads, seq, hd], rotated at `pos` when given. */
  heads(x: string, heads: number, pos?: string): string {
    let y = this.op1("reshape", [x], { shape: ["batch", "seq", heads, this.config.headDim] });
    if (pos) y = this.op1("rope", [y, pos], { theta: this.config.ropeTheta });
    return this.op1("transpose", [y], { perm: [0, 2, 1, 3] });
  }

  /** Attention through the KV cache of `layer`, the heads merged back into [batch, seq, width]. */
  attention(layer: number, q: string, k: string, v: string): string {
    const [out] = this.op(
      "sdpa",
      [q, k, v, `past_k.${layer}`, `past_v.${layer}`],
      { scale: this.config.attentionScale(layer) },
      [this.fresh("attn"), `present_k.${layer}`, `present_v.${layer}`],
    );
    const merged = this.op1("transpose", [out], { perm: [0, 2, 1, 3] });
    return this.op1("reshape", [merged], {
      shape: ["batch", "seq", this.config.heads * this.config.headDim],
    });
  }

  finishWithCaches(logits: string): Graph {
    this.output(logits);
    for (let layer = 0; layer < this.config.layers; layer++) {
      this.output(`present_k.${layer}`);
      this.output(`present_v.${layer}`);
    }
    return this.finish();
  }
}

function buildLlama(config: DecoderConfig, store: WeightStore, dtype: DType, dir: string): Graph {
  const b = new DecoderBuilder(config, store, dtype, dir);
  const { hidden, heads, kvHeads, headDim, intermediate, vocab, eps } = config;
  const linear = (x: string, prefix: string, rows: number, columns: number, bias: boolean) => {
    const w = b.checked(`${prefix}.weight`, [rows, columns]);
    return b.op1("linear", bias ? [x, w, b.checked(`${prefix}.bias`, [rows])] : [x, w]);
  };
  const { ids, pos } = b.conventionInputs();
  const embed = b.checked("model.embed_tokens.weight", [vocab, hidden]);
  let x = b.op1("embedding", [embed, ids]);
  for (let layer = 0; layer < config.layers; layer++) {
    const p = `model.layers.${layer}`;
    let h = b.op1("rmsnorm", [x, b.checked(`${p}.input_layernorm.weight`, [hidden])], { eps });
    const q = b.heads(
      linear(h, `${p}.self_attn.q_proj`, heads * headDim, hidden, config.qkvBias),
      heads,
      pos,
    );
    const k = b.heads(
      linear(h, `${p}.self_attn.k_proj`, kvHeads * headDim, hidden, config.qkvBias),
      kvHeads,
      pos,
    );
    const v = b.heads(linear(h, `${p}.self_attn.v_proj`, kvHeads * headDim, hidden, config.qkvBias), kvHeads);
    const attn = b.attention(layer, q, k, v);
    x = b.op1("add", [x, linear(attn, `${p}.self_attn.o_proj`, hidden, heads * headDim, config.outputBias)]);
    h = b.op1("rmsnorm", [x, b.checked(`${p}.post_attention_layernorm.weight`, [hidden])], { eps });
    const gate = b.op1("silu", [linear(h, `${p}.mlp.gate_proj`, intermediate, hidden, config.mlpBias)]);
    const up = linear(h, `${p}.mlp.up_proj`, intermediate, hidden, config.mlpBias);
    x = b.op1("add", [
      x,
      linear(b.op1("mul", [gate, up]), `${p}.mlp.down_proj`, hidden, intermediate, config.mlpBias),
    ]);
  }
  x = b.op1("rmsnorm", [x, b.checked("model.norm.weight", [hidden])], { eps });
  const head = config.tied ? embed : b.checked("lm_head.weight", [vocab, hidden]);
  return b.finishWithCaches(b.op1("linear", [x, head], {}, "logits"));
}

function buildGpt2(config: DecoderConfig, store: WeightStore, dtype: DType, dir: string): Graph {
  const b = new DecoderBuilder(config, store, dtype, dir);
  const { hidden, heads, headDim, intermediate, vocab, eps } = config;
  // Checkpoints saved from GPT2LMHeadModel prefix every key with "transformer."; the originals do not.
  const root = store.has("transformer.wte.weight") ? "transformer." : "";
  // GPT-2's Conv1D stores its weight as [in, out]: a matmul, then the bias.
  const conv = (x: string, prefix: string, inputs: number, outputs: number) =>
    b.op1("add", [
      b.op1("matmul", [x, b.checked(`${prefix}.weight`, [inputs, outputs])]),
      b.checked(`${prefix}.bias`, [outputs]),
    ]);
  const norm = (x: string, prefix: string) =>
    b.op1("layernorm", [x, b.checked(`${prefix}.weight`, [hidden]), b.checked(`${prefix}.bias`, [hidden])], {
      eps,
    });
  const { ids, pos } = b.conventionInputs();
  const wte = b.checked(`${root}wte.weight`, [vocab, hidden]);
  const wpe = b.checked(`${root}wpe.weight`, [config.maxPositions, hidden]);
  let x = b.op1("add", [b.op1("embedding", [wte, ids]), b.op1("embedding", [wpe, pos])]);
  for (let layer = 0; layer < config.layers; layer++) {
    const p = `${root}h.${layer}`;
    // The fused c_attn is declared as three lazy views (q, k, v), so that tensor parallelism can
    // split each of them by heads like any other projection.
    const h = norm(x, `${p}.ln_1`);
    const [q, k, v] = ["q", "k", "v"].map((part, i) => {
      const range = { start: i * hidden, end: (i + 1) * hidden };
      const w = b.checkedPart(`${p}.attn.c_attn.weight`, [hidden, 3 * hidden], {
        name: `${p}.attn.c_attn.${part}.weight`,
        axis: 1,
        ...range,
      });
      const bias = b.checkedPart(`${p}.attn.c_attn.bias`, [3 * hidden], {
        name: `${p}.attn.c_attn.${part}.bias`,
        axis: 0,
        ...range,
      });
      return b.heads(b.op1("add", [b.op1("matmul", [h, w]), bias]), heads);
    });
    x = b.op1("add", [x, conv(b.attention(layer, q, k, v), `${p}.attn.c_proj`, heads * headDim, hidden)]);
    const inner = b.op1("gelu", [conv(norm(x, `${p}.ln_2`), `${p}.mlp.c_fc`, hidden, intermediate)], {
      approximate: config.gelu,
    });
    x = b.op1("add", [x, conv(inner, `${p}.mlp.c_proj`, intermediate, hidden)]);
  }
  x = norm(x, `${root}ln_f`);
  const head = config.tied ? wte : b.checked("lm_head.weight", [vocab, hidden]);
  return b.finishWithCaches(b.op1("linear", [x, head], {}, "logits"));
}
