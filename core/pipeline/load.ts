// Reads a pipeline file into a YAML document that remembers where every node came from, so that
// the schema, the plugins' option schemas and plugin resolution can all report file:line:col.

import { dirname, resolve } from "node:path";
import { type Document, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import { PipelineError, type PipelineIssue, type SourceLocation } from "./errors.ts";

/** A path of keys and list indices into the document: `["lower", 1, "eps"]`. */
export type KeyPath = readonly (string | number)[];

/** An override applied from the command line, remembered so errors can say where a value came from. */
export interface AppliedOverride {
  path: KeyPath;
  /** As typed: `lower.0.factor=2`. */
  text: string;
}

/** A parsed pipeline file with its source positions. */
export class PipelineSource {
  readonly overrides: AppliedOverride[] = [];

  constructor(
    /** The file as the user named it; error messages start with it. */
    readonly file: string,
    /** The absolute folder of the file: relative paths in it resolve against this. */
    readonly baseDir: string,
    readonly document: Document,
    readonly lineCounter: LineCounter,
  ) {}

  /**
   * Where the node at `path` starts, or its nearest existing parent where the path goes past
   * what the file holds. `key` points at a mapping entry's key instead of its value.
   */
  locate(path: KeyPath, part: "value" | "key" = "value"): SourceLocation {
    let node: unknown = this.document.contents;
    let found = this.#position(node) ?? { line: 1, column: 1 };
    for (const [index, segment] of path.entries()) {
      const last = index === path.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((item) =>
          isScalar(item.key) && String(item.key.value) === String(segment)
        );
        if (!pair) break;
        const keyPosition = this.#position(pair.key);
        if (last && part === "key" && keyPosition) return this.#at(keyPosition);
        node = pair.value;
        found = this.#position(node) ?? keyPosition ?? found;
      } else if (isSeq(node)) {
        const item = node.items[Number(segment)];
        if (!Number.isInteger(Number(segment)) || item === undefined) break;
        node = item;
        found = this.#position(node) ?? found;
      } else {
        break;
      }
    }
    return this.#at(found);
  }

  /** The `--set` that wrote the value at `path` or one of its parents, if any. */
  overrideOf(path: KeyPath): AppliedOverride | undefined {
    return this.overrides.findLast((override) =>
      override.path.length <= path.length &&
      override.path.every((segment, i) => String(segment) === String(path[i]))
    );
  }

  /** An issue at `path`, saying so when the value there came from an override. */
  issue(path: KeyPath, message: string, part: "value" | "key" = "value"): PipelineIssue {
    const override = this.overrideOf(path);
    const suffix = override ? ` (set by --set ${override.text})` : "";
    return { message: `${message}${suffix}`, at: this.locate(path, part) };
  }

  /** The document as plain data. */
  toJS(): unknown {
    return this.document.toJS();
  }

  #position(node: unknown): { line: number; column: number } | undefined {
    if (!isNode(node) || !node.range) return undefined;
    const { line, col } = this.lineCounter.linePos(node.range[0]);
    return { line, column: col };
  }

  #at(position: { line: number; column: number }): SourceLocation {
    return { file: this.file, ...position };
  }
}

/** Parses pipeline text; `file` names it in messages and `baseDir` defaults to its folder. */
export function parsePipelineText(text: string, file: string, baseDir?: string): PipelineSource {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: true });
  if (document.errors.length > 0) {
    throw PipelineError.of(document.errors.map((error) => {
      const [line, column] = error.linePos ? [error.linePos[0].line, error.linePos[0].col] : [1, 1];
      return { message: `malformed YAML: ${firstLine(error.message)}`, at: { file, line, column } };
    }));
  }
  const source = new PipelineSource(file, baseDir ?? dirname(resolve(file)), document, lineCounter);
  const contents = document.contents;
  if (contents === null || (isScalar(contents) && contents.value === null)) {
    throw new PipelineError("the pipeline file is empty", { file, line: 1, column: 1 });
  }
  if (!isMap(contents)) {
    const found = isSeq(contents) ? "a list" : `${JSON.stringify(document.toJS())}`;
    throw new PipelineError(
      `expected a mapping of stages (export:, compile:, …), got ${found}`,
      source.locate([]),
    );
  }
  return source;
}

/** Reads and parses a pipeline file. */
export async function readPipeline(path: string): Promise<PipelineSource> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new PipelineError(`pipeline file ${path} does not exist`, undefined, { cause: error });
    }
    if (error instanceof Deno.errors.IsADirectory) {
      throw new PipelineError(`${path} is a folder, not a pipeline file`, undefined, { cause: error });
    }
    throw error;
  }
  return parsePipelineText(text, path);
}

/** The yaml package's message without its ` at line N, column M:` tail and code excerpt. */
function firstLine(message: string): string {
  return message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
}
