// Helpers shared by the pipeline tests: catching the PipelineError a call throws, and writing a
// pipeline file into a fresh temporary folder.

import { ok } from "node:assert";
import { join } from "node:path";
import { PipelineError } from "../../../core/pipeline/errors.ts";

/** The PipelineError `work` throws or rejects with; fails the test if there is none. */
export async function pipelineErrorOf(work: () => unknown): Promise<PipelineError> {
  try {
    await work();
  } catch (error) {
    ok(error instanceof PipelineError, `expected a PipelineError, got ${error}`);
    return error;
  }
  throw new Error("expected a PipelineError, but nothing was thrown");
}

const temporaryDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of temporaryDirs) Deno.removeSync(dir, { recursive: true });
});

/** Writes `text` as pipeline.yaml in a new temporary folder (removed when the tests end); returns its path. */
export async function writePipeline(text: string, name = "pipeline.yaml"): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-pipeline-" });
  temporaryDirs.push(dir);
  const path = join(dir, name);
  await Deno.writeTextFile(path, text);
  return path;
}

/** The absolute path of a test plugin in fixtures/. */
export function fixture(name: string): string {
  return new URL(`./fixtures/${name}`, import.meta.url).pathname;
}

/** The absolute path of a folder under the repository's test/fixtures/. */
export function modelFixture(name: string): string {
  return new URL(`../../fixtures/${name}`, import.meta.url).pathname;
}
