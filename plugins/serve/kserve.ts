// The serve plugin "kserve": the KServe v2 inference protocol over HTTP for graphs that map tensors
// to tensors (GET /v2/health/live, /v2/health/ready, /v2/models/{name}, POST /v2/models/{name}/infer
// with JSON tensors), with concurrent requests stacked into one engine run where the graph has a
// leading batch size, and /metrics for Prometheus.

import { z } from "zod";
import { definePlugin, replicaPort, type ServeContext } from "../../core/pipeline/plugin.ts";
import type { Engine } from "../../core/runtime/engine.ts";
import { asServeError, ServeError } from "../../core/serve/errors.ts";
import {
  jsonResponse,
  listen,
  readJsonBody,
  type RunningServer,
  serverOptionFields,
  serveUntilStopped,
} from "../../core/serve/http.ts";
import { InferBatcher } from "../../core/serve/infer_batcher.ts";
import { decodeInputs, encodeOutput, v2Signature } from "../../core/serve/kserve_tensors.ts";
import { METRICS_CONTENT_TYPE, MetricsRegistry } from "../../core/serve/metrics.ts";

export const options = z.object({
  ...serverOptionFields({ timeoutSeconds: 60, maxBodyBytes: 64 << 20 }),
  model: z.string().regex(/^[\w.-]+$/).default("rankflow").describe("the model name in /v2/models/{name}"),
  max_batch: z.number().int().positive().default(32)
    .describe("most rows stacked into one engine run, where the graph has a leading batch size"),
}).strict();
export type Options = z.infer<typeof options>;

export default definePlugin({
  kind: "serve",
  name: "kserve",
  description: "the KServe v2 inference protocol over HTTP, for graphs from tensors to tensors",
  options,
  serve: serveKServe,
});

async function serveKServe(engine: Engine, opts: Options, ctx: ServeContext): Promise<void> {
  const server = startKServeServer(engine, { ...opts, port: replicaPort(opts.port, ctx) }, ctx);
  ctx.log(`kserve: serving ${opts.model} on ${server.url}/v2/models/${opts.model} (Ctrl-C stops)`);
  await serveUntilStopped("kserve", server, ctx.log);
}

/** Starts the server; options not given take their defaults. */
export function startKServeServer(
  engine: Engine,
  opts: Partial<Options>,
  ctx: Pick<ServeContext, "log">,
): RunningServer & {
  metrics: MetricsRegistry;
  batcher: InferBatcher;
  engineFailure(): ServeError | undefined;
} {
  const config = options.parse(opts);
  const metrics = new MetricsRegistry();
  const requests = metrics.counter("rankflow_requests_total", "HTTP requests answered, by route and status");
  const batcher = new InferBatcher(engine, {
    maxBatch: config.max_batch,
    maxQueue: config.max_queue,
    timeoutMs: config.timeout_s * 1000,
    onEngineError: stopOnEngineError,
  }, metrics);
  let ready = true;
  const metadata = {
    name: config.model,
    versions: ["1"],
    platform: `rankflow-${engine.backend}`,
    inputs: engine.inputs.map(v2Signature),
    outputs: engine.outputs.map(v2Signature),
  };

  const infer = async (request: Request): Promise<Response> => {
    const body = await readJsonBody(request, config.max_body_bytes);
    const inputs = decodeInputs(body.inputs, engine.inputs);
    let wanted = engine.outputs.map((output) => output.name);
    if (body.outputs !== undefined) {
      if (!Array.isArray(body.outputs)) throw new ServeError(400, "outputs: expected a list of {name}");
      wanted = body.outputs.map((output: { name?: unknown }, index) => {
        const name = output?.name;
        if (typeof name !== "string" || !wanted.includes(name)) {
          throw new ServeError(
            400,
            `outputs.${index}: ${JSON.stringify(name)} is not an output; the model has ${wanted.join(", ")}`,
          );
        }
        return name;
      });
    }
    const outputs = await batcher.infer(inputs);
    return jsonResponse({
      model_name: config.model,
      model_version: "1",
      ...(typeof body.id === "string" ? { id: body.id } : {}),
      outputs: wanted.map((name) => encodeOutput(name, outputs[name])),
    });
  };

  const route = (request: Request, path: string): Promise<Response> | Response => {
    const get = request.method === "GET";
    if (path === "/v2" && get) return jsonResponse({ name: "rankflow", version: "0.1.0", extensions: [] });
    if (path === "/v2/health/live" && get) return jsonResponse({ live: true });
    if (path === "/v2/health/ready" && get) return jsonResponse({ ready }, ready ? 200 : 503);
    if (path === "/metrics" && get) {
      return new Response(metrics.text(), { headers: { "content-type": METRICS_CONTENT_TYPE } });
    }
    const match = path.match(/^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer)?$/);
    if (!match) throw new ServeError(404, `no route for ${request.method} ${path}`);
    const [, name, version, action] = match;
    if (decodeURIComponent(name) !== config.model) {
      throw new ServeError(
        404,
        `the model '${decodeURIComponent(name)}' does not exist; this server serves '${config.model}'`,
      );
    }
    if (version !== undefined && version !== "1") {
      throw new ServeError(404, `model ${config.model} has no version ${version}; it has version 1`);
    }
    if (action === undefined && get) return jsonResponse(metadata);
    if (action === "/ready" && get) return jsonResponse({ name: config.model, ready }, ready ? 200 : 503);
    if (action === "/infer" && request.method === "POST") return infer(request);
    throw new ServeError(405, `${request.method} is not allowed on ${path}`);
  };

  const handler = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    let response: Response;
    try {
      response = await route(request, path);
    } catch (thrown) {
      const error = asServeError(thrown);
      if (error.status >= 500) ctx.log(`kserve: ${request.method} ${path}: ${error.message}`);
      response = jsonResponse({ error: error.message }, error.status);
    }
    const label = path.startsWith("/v2/models/")
      ? `/v2/models/{name}${path.endsWith("/infer") ? "/infer" : ""}`
      : path;
    requests.inc({ route: label, status: String(response.status) });
    return response;
  };
  const server = listen(handler, { port: config.port, hostname: config.host }, async () => {
    ready = false;
    await batcher.close();
  });
  let failure: ServeError | undefined;
  function stopOnEngineError(error: ServeError): void {
    if (config.on_engine_error === "continue" || failure) return;
    failure = error;
    ctx.log(`kserve: stopping the server, since ${error.message}`);
    void server.shutdown();
  }
  return Object.assign(server, { metrics, batcher, engineFailure: () => failure });
}
