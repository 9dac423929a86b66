// Metrics in the Prometheus text format (version 0.0.4): counters, gauges and histograms with
// labels, kept in one registry that /metrics prints. Only what the servers need; no client library.

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  const escape = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
  return `{${entries.map(([name, value]) => `${name}="${escape(value)}"`).join(",")}}`;
}

function numberText(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return Number.isNaN(value) ? "NaN" : String(value);
}

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  lines(): string[];
}

export class Counter implements Metric {
  readonly type = "counter";
  #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels)) ?? 0;
  }

  lines(): string[] {
    if (this.#values.size === 0) return [`${this.name} 0`];
    return [...this.#values].map(([labels, value]) => `${this.name}${labels} ${numberText(value)}`);
  }
}

export class Gauge implements Metric {
  readonly type = "gauge";
  #value = 0;
  constructor(readonly name: string, readonly help: string) {}

  set(value: number): void {
    this.#value = value;
  }

  get(): number {
    return this.#value;
  }

  lines(): string[] {
    return [`${this.name} ${numberText(this.#value)}`];
  }
}

export class Histogram implements Metric {
  readonly type = "histogram";
  #counts: number[];
  #sum = 0;
  #count = 0;
  #max = -Infinity;

  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {
    this.#counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.buckets.forEach((bound, index) => {
      if (value <= bound) this.#counts[index]++;
    });
    this.#sum += value;
    this.#count++;
    this.#max = Math.max(this.#max, value);
  }

  get count(): number {
    return this.#count;
  }

  /** The largest value observed (-Infinity before any). */
  get max(): number {
    return this.#max;
  }

  lines(): string[] {
    return [
      ...this.buckets.map((bound, index) => `${this.name}_bucket{le="${bound}"} ${this.#counts[index]}`),
      `${this.name}_bucket{le="+Inf"} ${this.#count}`,
      `${this.name}_sum ${numberText(this.#sum)}`,
      `${this.name}_count ${this.#count}`,
    ];
  }
}

/** The metrics of one server, printed in registration order. */
export class MetricsRegistry {
  #metrics: Metric[] = [];

  counter(name: string, help: string): Counter {
    return this.#add(new Counter(name, help));
  }

  gauge(name: string, help: string): Gauge {
    return this.#add(new Gauge(name, help));
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.#add(new Histogram(name, help, buckets));
  }

  /** The Prometheus text exposition of every metric. */
  text(): string {
    return this.#metrics.map((metric) =>
      [`# HELP ${metric.name} ${metric.help}`, `# TYPE ${metric.name} ${metric.type}`, ...metric.lines()]
        .join("\n")
    ).join("\n") + "\n";
  }

  #add<M extends Metric>(metric: M): M {
    if (this.#metrics.some((known) => known.name === metric.name)) {
      throw new Error(`metric ${metric.name} is registered twice`);
    }
    this.#metrics.push(metric);
    return metric;
  }
}

/** The Content-Type of the text format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
