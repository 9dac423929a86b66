// Random-weight Llama checkpoints in Hugging Face's own format (config.json, model.safetensors,
// a byte-level tokenizer.json), so that pipelines and tests run without downloading a model.
// Weights are drawn with a wide spread so that greedy decoding wanders over many tokens.

import { basename, dirname, join } from "node:path";
import { f32, type Tensor } from "../../core/ir/tensor.ts";
import { writeSafetensors } from "../../core/ir/safetensors.ts";
import { byteTokenizerJson } from "./byte_tokenizer.ts";

export const PRESETS = ["tiny-llama", "quickstart"] as const;
export type Preset = typeof PRESETS[number];

export interface InitOptions {
  preset: Preset;
  seed: number;
  /** Sizes that replace the preset's (tests of kernels that need real models' widths). */
  shape?: Partial<LlamaShape>;
  /** The spread of the matrices' weights, MATRIX_STD unless given. */
  matrixStd?: number;
}

export interface LlamaShape {
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  maxPositions: number;
}

const SHAPES: Record<Preset, LlamaShape> = {
  "tiny-llama": {
    vocab: 256,
    hidden: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    intermediate: 128,
    maxPositions: 128,
  },
  quickstart: {
    vocab: 256,
    hidden: 256,
    layers: 4,
    heads: 8,
    kvHeads: 4,
    intermediate: 688,
    maxPositions: 512,
  },
};

const MATRIX_STD = 0.3;
const NORM_STD = 0.2;

/**
 * Writes a random checkpoint to `dir`. Everything is written into a sibling temporary folder
 * that is renamed into place at the end, so a failure leaves no half-written checkpoint.
 */
export async function initModel(dir: string, options: InitOptions): Promise<void> {
  if (!SHAPES[options.preset]) {
    throw new RangeError(`unknown preset ${options.preset}; known are ${PRESETS.join(", ")}`);
  }
  const shape = { ...SHAPES[options.preset], ...options.shape };
  if (existsNonEmpty(dir)) {
    throw new Deno.errors.AlreadyExists(`${dir}: is not empty, so a random checkpoint is not written there`);
  }
  await Deno.mkdir(dirname(dir), { recursive: true });
  const temporary = join(dirname(dir), `.${basename(dir)}.tmp-${crypto.randomUUID().slice(0, 8)}`);
  await Deno.mkdir(temporary);
  try {
    await Deno.writeTextFile(
      join(temporary, "config.json"),
      JSON.stringify(llamaConfig(shape), null, 2) + "\n",
    );
    const weights = llamaWeights(shape, options.seed, options.matrixStd ?? MATRIX_STD);
    writeSafetensors(join(temporary, "model.safetensors"), weights, {
      format: "pt",
    });
    await Deno.writeTextFile(join(temporary, "tokenizer.json"), JSON.stringify(byteTokenizerJson()));
    // An empty folder left where the checkpoint goes is replaced; rename cannot replace it on every OS.
    try {
      await Deno.remove(dir);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    await Deno.rename(temporary, dir);
  } catch (error) {
    await Deno.remove(temporary, { recursive: true });
    throw error;
  }
}

function llamaConfig(shape: LlamaShape): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    attention_bias: false,
    bos_token_id: null,
    eos_token_id: null,
    head_dim: shape.hidden / shape.heads,
    hidden_act: "silu",
    hidden_size: shape.hidden,
    intermediate_size: shape.intermediate,
    max_position_embeddings: shape.maxPositions,
    mlp_bias: false,
    num_attention_heads: shape.heads,
    num_hidden_layers: shape.layers,
    num_key_value_heads: shape.kvHeads,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_theta: 10000.0, rope_type: "default" },
    tie_word_embeddings: false,
    dtype: "float32",
    vocab_size: shape.vocab,
  };
}

function llamaWeights(shape: LlamaShape, seed: number, matrixStd: number): Map<string, Tensor> {
  const random = gaussian(seed);
  const draw = (dims: number[], mean: number, std: number) =>
    f32(dims, Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => mean + std * random()));
  const matrix = (rows: number, columns: number) => draw([rows, columns], 0, matrixStd);
  const norm = () => draw([shape.hidden], 1, NORM_STD);
  const headDim = shape.hidden / shape.heads;
  const weights = new Map<string, Tensor>();
  weights.set("model.embed_tokens.weight", matrix(shape.vocab, shape.hidden));
  for (let layer = 0; layer < shape.layers; layer++) {
    const p = `model.layers.${layer}`;
    weights.set(`${p}.input_layernorm.weight`, norm());
    weights.set(`${p}.self_attn.q_proj.weight`, matrix(shape.heads * headDim, shape.hidden));
    weights.set(`${p}.self_attn.k_proj.weight`, matrix(shape.kvHeads * headDim, shape.hidden));
    weights.set(`${p}.self_attn.v_proj.weight`, matrix(shape.kvHeads * headDim, shape.hidden));
    weights.set(`${p}.self_attn.o_proj.weight`, matrix(shape.hidden, shape.heads * headDim));
    weights.set(`${p}.post_attention_layernorm.weight`, norm());
    weights.set(`${p}.mlp.gate_proj.weight`, matrix(shape.intermediate, shape.hidden));
    weights.set(`${p}.mlp.up_proj.weight`, matrix(shape.intermediate, shape.hidden));
    weights.set(`${p}.mlp.down_proj.weight`, matrix(shape.hidden, shape.intermediate));
  }
  weights.set("model.norm.weight", norm());
  weights.set("lm_head.weight", matrix(shape.vocab, shape.hidden));
  return weights;
}

/** Standard normal draws: mulberry32 for uniforms, Box-Muller to make them normal. */
function gaussian(seed: number): () => number {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const value = spare;
      spare = undefined;
      return value;
    }
    const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
    const angle = 2 * Math.PI * uniform();
    spare = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  };
}

function existsNonEmpty(dir: string): boolean {
  try {
    for (const _ of Deno.readDirSync(dir)) return true;
    return false;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
