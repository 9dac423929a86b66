// The IR's text form: what `rankflow graph` prints and what pass tests are written in.
// Printing and parsing are inverses: parseGraph(printGraph(g)) prints the same text again.
//
//   graph tiny {
//     input %ids: i32[batch, seq]
//     weight %wte: f32[256, 64]                          # store key = value name
//     weight %q: f32[32, 64] = "layers.0.q.weight" slice(0, 32, 64)
//     %x: f32[batch, seq, 64] = embedding(%wte, %ids)
//     %y: f32[batch, seq, 64] = rmsnorm(%x, %g) {eps: 1e-5}
//     return %y
//   }

import { type Attrs, type AttrValue, type Graph, IrError, type WeightSlice } from "./graph.ts";
import { type Dim, type DType, DTYPES, type TensorType } from "./tensor.ts";
import { getOp, OpError } from "./registry.ts";

export function printGraph(graph: Graph): string {
  const lines = [`graph ${graph.name} {`];
  for (const input of graph.inputs) lines.push(`  input %${input.name}: ${printType(input.type)}`);
  for (const weight of graph.weights) {
    let line = `  weight %${weight.name}: ${printType(weight.type)}`;
    if (weight.key !== weight.name) line += ` = ${JSON.stringify(weight.key)}`;
    for (const s of weight.slices) line += ` slice(${s.axis}, ${s.start}, ${s.end})`;
    lines.push(line);
  }
  for (const node of graph.nodes) {
    const outputs = node.outputs.map((name) => `%${name}: ${printType(typeOf(graph, name))}`).join(", ");
    const inputs = node.inputs.map((name) => `%${name}`).join(", ");
    const attrs = Object.keys(node.attrs).length ? ` ${printAttrs(node.attrs)}` : "";
    lines.push(`  ${outputs} = ${node.op}(${inputs})${attrs}`);
  }
  lines.push(`  return ${graph.outputs.map((name) => `%${name}`).join(", ")}`);
  lines.push("}");
  return lines.join("\n") + "\n";
}

function typeOf(graph: Graph, name: string): TensorType {
  const type = graph.types.get(name);
  if (!type) throw new IrError(`value %${name} has no type`);
  return type;
}

export function printType(type: TensorType): string {
  return `${type.dtype}[${type.shape.join(", ")}]`;
}

function printAttrs(attrs: Attrs): string {
  const entries = Object.keys(attrs).sort().map((key) => `${key}: ${printValue(attrs[key])}`);
  return `{${entries.join(", ")}}`;
}

function printValue(value: AttrValue): string {
  if (Array.isArray(value)) return `[${value.map((v) => printValue(v)).join(", ")}]`;
  if (typeof value === "string") return JSON.stringify(value);
  return String(value);
}

/** Parses the text form; errors name the line. Node output types are checked against the shape rules. */
export function parseGraph(text: string): Graph {
  const lines = text.split("\n");
  const graph: Graph = { name: "", inputs: [], weights: [], nodes: [], outputs: [], types: new Map() };
  let state = "before" as "before" | "body" | "after";
  lines.forEach((raw, index) => {
    const line = stripComment(raw).trim();
    if (!line) return;
    const at = new Cursor(line, index + 1);
    try {
      if (state === "before") {
        at.expectWord("graph");
        graph.name = at.name();
        at.expect("{");
        state = "body";
      } else if (state === "after") {
        at.fail("text after the closing brace");
      } else if (at.tryChar("}")) {
        state = "after";
      } else if (at.tryWord("input")) {
        const name = at.value();
        at.expect(":");
        const type = at.type();
        define(graph, name, type, at);
        graph.inputs.push({ name, type });
      } else if (at.tryWord("weight")) {
        const name = at.value();
        at.expect(":");
        const type = at.type();
        let key = name;
        if (at.tryChar("=")) key = at.string();
        const slices: WeightSlice[] = [];
        while (at.tryWord("slice")) {
          at.expect("(");
          const axis = at.integer();
          at.expect(",");
          const start = at.integer();
          at.expect(",");
          const end = at.integer();
          at.expect(")");
          slices.push({ axis, start, end });
        }
        define(graph, name, type, at);
        graph.weights.push({ name, key, type, slices });
      } else if (at.tryWord("return")) {
        do graph.outputs.push(at.value()); while (at.tryChar(","));
        for (const output of graph.outputs) {
          if (!graph.types.has(output)) at.fail(`%${output} is not defined`);
        }
      } else {
        parseNode(graph, at);
      }
      at.end();
    } catch (error) {
      if ((error instanceof IrError || error instanceof OpError) && !error.message.startsWith("line ")) {
        throw new IrError(`line ${index + 1}: ${error.message}`, { cause: error });
      }
      throw error;
    }
  });
  if (state !== "after") throw new IrError("the graph is not closed with }");
  return graph;
}

function parseNode(graph: Graph, at: Cursor): void {
  const outputs: { name: string; type: TensorType }[] = [];
  do {
    const name = at.value();
    at.expect(":");
    outputs.push({ name, type: at.type() });
  } while (at.tryChar(","));
  at.expect("=");
  const op = at.name();
  at.expect("(");
  const inputs: string[] = [];
  if (!at.tryChar(")")) {
    do inputs.push(at.value()); while (at.tryChar(","));
    at.expect(")");
  }
  const attrs: Attrs = at.peek("{") ? at.attrs() : {};
  for (const input of inputs) if (!graph.types.has(input)) at.fail(`%${input} is used before it is defined`);
  const inferred = getOp(op).infer(inputs.map((input) => graph.types.get(input)!), attrs);
  if (inferred.length !== outputs.length) {
    at.fail(`${op} makes ${inferred.length} outputs, ${outputs.length} written`);
  }
  outputs.forEach((output, i) => {
    if (printType(output.type) !== printType(inferred[i])) {
      at.fail(
        `%${output.name} is written ${printType(output.type)} but ${op} gives ${printType(inferred[i])}`,
      );
    }
    define(graph, output.name, output.type, at);
  });
  graph.nodes.push({ op, inputs, outputs: outputs.map((o) => o.name), attrs });
}

function define(graph: Graph, name: string, type: TensorType, at: Cursor): void {
  if (graph.types.has(name)) at.fail(`%${name} is defined twice`);
  graph.types.set(name, type);
}

function stripComment(line: string): string {
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '"' && line[i - 1] !== "\\") inString = !inString;
    if (line[i] === "#" && !inString) return line.slice(0, i);
  }
  return line;
}

/** A position in one line of IR text, with small readers for its tokens. */
class Cursor {
  #at = 0;
  constructor(readonly text: string, readonly line: number) {}

  fail(message: string): never {
    throw new IrError(`line ${this.line}, column ${this.#at + 1}: ${message}`);
  }

  #skip(): void {
    while (this.text[this.#at] === " " || this.text[this.#at] === "\t") this.#at++;
  }

  peek(token: string): boolean {
    this.#skip();
    return this.text.startsWith(token, this.#at);
  }

  tryChar(token: string): boolean {
    if (!this.peek(token)) return false;
    this.#at += token.length;
    return true;
  }

  expect(token: string): void {
    if (!this.tryChar(token)) this.fail(`expected '${token}'`);
  }

  tryWord(word: string): boolean {
    this.#skip();
    const match = /^[A-Za-z_]\w*/.exec(this.text.slice(this.#at));
    if (match?.[0] !== word) return false;
    this.#at += word.length;
    return true;
  }

  expectWord(word: string): void {
    if (!this.tryWord(word)) this.fail(`expected '${word}'`);
  }

  #match(pattern: RegExp, what: string): string {
    this.#skip();
    const match = pattern.exec(this.text.slice(this.#at));
    if (!match) this.fail(`expected ${what}`);
    this.#at += match[0].length;
    return match[0];
  }

  name(): string {
    return this.#match(/^[A-Za-z_][\w.-]*/, "a name");
  }

  value(): string {
    return this.#match(/^%[\w.-]+/, "a value like %x").slice(1);
  }

  integer(): number {
    return Number(this.#match(/^-?\d+/, "an integer"));
  }

  string(): string {
    return JSON.parse(this.#match(/^"(?:[^"\\]|\\.)*"/, "a quoted string"));
  }

  type(): TensorType {
    const dtype = this.#match(/^[a-z0-9]+/, "a dtype") as DType;
    if (!DTYPES.includes(dtype)) this.fail(`unknown dtype ${dtype}`);
    this.expect("[");
    const shape: Dim[] = [];
    if (!this.tryChar("]")) {
      do {
        const dim = this.#match(/^[\w+*]+/, "a size");
        shape.push(/^\d+$/.test(dim) ? Number(dim) : dim);
      } while (this.tryChar(","));
      this.expect("]");
    }
    return { dtype, shape };
  }

  attrs(): Attrs {
    this.expect("{");
    const attrs: Attrs = {};
    if (this.tryChar("}")) return attrs;
    do {
      const key = this.#match(/^[A-Za-z_]\w*/, "an attribute name");
      this.expect(":");
      attrs[key] = this.attrValue();
    } while (this.tryChar(","));
    this.expect("}");
    return attrs;
  }

  attrValue(): AttrValue {
    if (this.tryChar("[")) {
      const list: Array<number | string> = [];
      if (this.tryChar("]")) return list;
      do {
        const item = this.attrValue();
        if (typeof item !== "number" && typeof item !== "string") this.fail("lists hold numbers and strings");
        list.push(item);
      } while (this.tryChar(","));
      this.expect("]");
      return list;
    }
    if (this.peek('"')) return this.string();
    if (this.tryWord("true")) return true;
    if (this.tryWord("false")) return false;
    const number = this.#match(
      /^-?(?:\d+\.?\d*(?:e[-+]?\d+)?|Infinity)/i,
      "a number, string, boolean or list",
    );
    return Number(number);
  }

  end(): void {
    this.#skip();
    if (this.#at < this.text.length) this.fail(`unexpected '${this.text.slice(this.#at)}'`);
  }
}
