import { strictEqual, throws } from "node:assert";
import { MetricsRegistry } from "../../../core/serve/metrics.ts";

Deno.test("metrics: counters, gauges and histograms print in the Prometheus text format", () => {
  const registry = new MetricsRegistry();
  const requests = registry.counter("requests_total", "requests answered");
  const depth = registry.gauge("queue_depth", "waiting requests");
  const latency = registry.histogram("step_seconds", "step time", [0.1, 1]);
  requests.inc({ route: "/v1/completions", status: "200" });
  requests.inc({ route: "/v1/completions", status: "200" });
  requests.inc({ route: 'a"b', status: "400" });
  depth.set(3);
  for (const value of [0.05, 0.5, 2]) latency.observe(value);
  strictEqual(
    registry.text(),
    [
      "# HELP requests_total requests answered",
      "# TYPE requests_total counter",
      'requests_total{route="/v1/completions",status="200"} 2',
      'requests_total{route="a\\"b",status="400"} 1',
      "# HELP queue_depth waiting requests",
      "# TYPE queue_depth gauge",
      "queue_depth 3",
      "# HELP step_seconds step time",
      "# TYPE step_seconds histogram",
      'step_seconds_bucket{le="0.1"} 1',
      'step_seconds_bucket{le="1"} 2',
      'step_seconds_bucket{le="+Inf"} 3',
      "step_seconds_sum 2.55",
      "step_seconds_count 3",
      "",
    ].join("\n"),
  );
  throws(() => registry.gauge("queue_depth", "again"), /registered twice/);
});
