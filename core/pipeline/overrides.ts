// Command-line overrides: `--set lower.0.factor=2` writes one value into the parsed pipeline
// document before it is validated, so an overridden value is checked like any other.

import { isMap, isScalar, isSeq, parseDocument } from "yaml";
import { PipelineError } from "./errors.ts";
import type { KeyPath, PipelineSource } from "./load.ts";

export interface Override {
  /** Dotted segments as typed; whether one indexes a list is decided against the document. */
  segments: string[];
  value: unknown;
  /** As typed: `lower.0.factor=2`. */
  text: string;
}

/** Parses `key.path=value`; the value is read as a YAML scalar (number, boolean, string) or flow list or mapping. */
export function parseOverride(text: string): Override {
  const equals = text.indexOf("=");
  if (equals <= 0) {
    throw new PipelineError(`--set ${text}: expected key.path=value, e.g. --set compile.dtype=f16`);
  }
  const key = text.slice(0, equals).trim();
  const segments = key.split(".");
  if (segments.some((segment) => segment.trim() === "")) {
    throw new PipelineError(`--set ${text}: '${key}' has an empty segment`);
  }
  return {
    segments: segments.map((segment) => segment.trim()),
    value: parseScalar(text.slice(equals + 1)),
    text,
  };
}

/** Writes each override into the source's document in order, creating missing mappings on the way. */
export function applyOverrides(source: PipelineSource, overrides: readonly (string | Override)[]): void {
  for (const entry of overrides) {
    const override = typeof entry === "string" ? parseOverride(entry) : entry;
    const path = fitPath(source, override);
    setAt(source, path, override.value);
    source.overrides.push({ path, text: override.text });
  }
}

/** The key path the override's segments name, checked against what the document holds. */
function fitPath(source: PipelineSource, override: Override): KeyPath {
  const path: (string | number)[] = [];
  let node: unknown = source.document.contents;
  for (const [index, segment] of override.segments.entries()) {
    const here = path.length === 0 ? "the top level" : path.join(".");
    const fail = (why: string): never => {
      throw new PipelineError(`--set ${override.text}: ${why}`, source.locate(path));
    };
    if (isSeq(node)) {
      const position = Number(segment);
      if (!/^\d+$/.test(segment)) fail(`${here} is a list; '${segment}' is not an index`);
      if (position >= node.items.length) {
        const items = node.items.length === 1 ? "1 item" : `${node.items.length} items`;
        fail(`${here} has ${items}; index ${position} is out of range`);
      }
      path.push(position);
      node = node.items[position];
    } else if (isMap(node) || node === undefined || (isScalar(node) && node.value === null)) {
      // A missing or empty entry becomes a mapping when the value is written.
      path.push(segment);
      node = isMap(node) ? node.get(segment, true) : undefined;
    } else {
      const found = isScalar(node) ? `the value ${JSON.stringify(node.value)}` : "not a mapping";
      fail(`${here} is ${found}, so it has no '${override.segments.slice(index).join(".")}'`);
    }
  }
  return path;
}

/** Writes `value` at a path `fitPath` accepted; missing or empty entries on the way become mappings. */
function setAt(source: PipelineSource, path: KeyPath, value: unknown): void {
  const { document } = source;
  let collection: unknown = document.contents;
  for (const [index, key] of path.entries()) {
    if (!isMap(collection) && !isSeq(collection)) throw new RangeError(`no collection at ${path.join(".")}`);
    if (index === path.length - 1) {
      collection.set(key, document.createNode(value));
      return;
    }
    const child = collection.get(key, true);
    if (!isMap(child) && !isSeq(child)) {
      const rest = path.slice(index + 1).reduceRight<unknown>(
        (inner, segment) => ({ [segment]: inner }),
        value,
      );
      collection.set(key, document.createNode(rest));
      return;
    }
    collection = child;
  }
}

function parseScalar(text: string): unknown {
  if (text.trim() === "") return "";
  const document = parseDocument(text);
  if (document.errors.length > 0) return text;
  if (isScalar(document.contents)) return document.contents.value;
  // A flow list or mapping (`[1, 64, 512]`, `{seq: [1, 8, 64]}`) is read as one; anything else
  // (`a: b`) is taken as the string typed.
  return /^\s*[[{]/.test(text) ? document.toJS() : text;
}
