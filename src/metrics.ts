/**
 * Prometheus metrics: counters, gauges and histograms with labels, the
 * text exposition format (version 0.0.4), and a small HTTP endpoint that
 * serves it at `/metrics` (docs/architecture.md#metrics).
 *
 * Recording is meant for hot paths: a caller resolves the label values of
 * a series once (`labels(...)`) and keeps the child, whose `inc`/`observe`
 * only add numbers. Children for a label combination are created on first
 * use and kept for the life of the process, so labels must come from small
 * fixed sets (methods, routes, status codes), never from request data.
 *
 * prom-client runs under Deno's Node compatibility, but costs ~80 ms to
 * load and hashes a label object on every record; this module is the small
 * part of it we need.
 *
 * @module
 */
import { parseListenAddress } from "./listen_address.ts";
import { log } from "./log.ts";

/** The Content-Type of the text exposition format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Latency buckets in seconds (Prometheus client defaults, plus finer and coarser ends). */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
];

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the text format quotes it: `\`, `"` and newlines escaped. */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : "\\" + c));
}

/** A `# HELP` text as the format wants it: `\` and newlines escaped. */
function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

/** A sample value: integers plainly, `+Inf`/`-Inf`/`NaN` spelt as the format wants. */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** One metric family: a name, help, type, label names, and its series by label values. */
abstract class Family<Child> {
  readonly #children = new Map<string, { values: readonly string[]; child: Child }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!NAME_RE.test(name)) throw new Error(`invalid metric name ${JSON.stringify(name)}`);
    for (const l of labelNames) {
      if (!LABEL_RE.test(l) || l.startsWith("__") || l === "le") {
        throw new Error(`invalid label name ${JSON.stringify(l)} of ${name}`);
      }
    }
  }

  abstract readonly type: string;
  protected abstract create(): Child;
  protected abstract renderChild(child: Child, labels: string, out: string[]): void;

  /** The series for these label values (in `labelNames` order), created on first use. */
  labels(...values: string[]): Child {
    if (values.length !== this.labelNames.length) {
      throw new Error(`${this.name} takes ${this.labelNames.length} label values`);
    }
    const key = values.join("\u0000");
    let entry = this.#children.get(key);
    if (!entry) {
      entry = { values, child: this.create() };
      this.#children.set(key, entry);
    }
    return entry.child;
  }

  /** Appends this family's lines (HELP, TYPE, samples) to `out`. */
  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`);
    out.push(`# TYPE ${this.name} ${this.type}`);
    for (const { values, child } of this.#children.values()) {
      const labels = values.map((v, i) => `${this.labelNames[i]}="${escapeLabelValue(v)}"`);
      this.renderChild(child, labels.join(","), out);
    }
  }
}

/** A counter series: only goes up. */
export class CounterChild {
  /** The current total. */
  value = 0;
  /** Adds `n` (default 1; must not be negative). */
  inc(n = 1): void {
    this.value += n;
  }
}

/** A monotonically increasing count (`_total` by convention). */
export class Counter extends Family<CounterChild> {
  readonly type = "counter";
  protected create(): CounterChild {
    return new CounterChild();
  }
  protected renderChild(c: CounterChild, labels: string, out: string[]): void {
    out.push(`${this.name}${labels ? `{${labels}}` : ""} ${formatValue(c.value)}`);
  }
}

/** A gauge series: a value that goes up and down. */
export class GaugeChild {
  /** The current value. */
  value = 0;
  /** Sets the value. */
  set(v: number): void {
    this.value = v;
  }
  /** Adds `n` (default 1). */
  inc(n = 1): void {
    this.value += n;
  }
  /** Subtracts `n` (default 1). */
  dec(n = 1): void {
    this.value -= n;
  }
}

/** A value that goes up and down. */
export class Gauge extends Family<GaugeChild> {
  readonly type = "gauge";
  protected create(): GaugeChild {
    return new GaugeChild();
  }
  protected renderChild(c: GaugeChild, labels: string, out: string[]): void {
    out.push(`${this.name}${labels ? `{${labels}}` : ""} ${formatValue(c.value)}`);
  }
}

/** A histogram series: counts per bucket (not cumulative until rendered), sum and count. */
export class HistogramChild {
  readonly #bounds: readonly number[];
  /** Observations per bucket; the last one is `+Inf`. */
  readonly counts: Float64Array;
  /** Sum of all observations. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  /** An empty series over these bucket bounds. */
  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one observation. */
  observe(v: number): void {
    const b = this.#bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** A distribution of observations (latencies in seconds) over fixed buckets. */
export class Histogram extends Family<HistogramChild> {
  readonly type = "histogram";
  /** Upper bounds of the buckets, increasing (`+Inf` is implied). */
  readonly buckets: readonly number[];

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    buckets: readonly number[] = LATENCY_BUCKETS,
  ) {
    super(name, help, labelNames);
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i] > buckets[i - 1])) throw new Error(`${name}: buckets must increase`);
    }
    this.buckets = buckets;
  }

  protected create(): HistogramChild {
    return new HistogramChild(this.buckets);
  }

  protected renderChild(h: HistogramChild, labels: string, out: string[]): void {
    const sep = labels ? "," : "";
    let cumulative = 0;
    for (let i = 0; i <= this.buckets.length; i++) {
      cumulative += h.counts[i];
      const le = i < this.buckets.length ? formatValue(this.buckets[i]) : "+Inf";
      out.push(`${this.name}_bucket{${labels}${sep}le="${le}"} ${cumulative}`);
    }
    const braces = labels ? `{${labels}}` : "";
    out.push(`${this.name}_sum${braces} ${formatValue(h.sum)}`);
    out.push(`${this.name}_count${braces} ${h.count}`);
  }
}

/** A set of metric families, rendered together. */
export class Registry {
  readonly #families = new Map<string, Family<unknown>>();

  #add<F extends Family<unknown>>(family: F): F {
    if (this.#families.has(family.name)) throw new Error(`metric ${family.name} registered twice`);
    this.#families.set(family.name, family);
    return family;
  }

  /** Registers a counter. */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labelNames));
  }

  /** Registers a gauge. */
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, labelNames));
  }

  /** Registers a histogram (latency buckets unless given). */
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets?: readonly number[],
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /** Every family in the text exposition format, version 0.0.4. */
  render(): string {
    const out: string[] = [];
    for (const f of this.#families.values()) f.render(out);
    return out.join("\n") + "\n";
  }
}

/** The process-wide registry that the daemon's and the bridge's metrics live in. */
export const metrics: Registry = new Registry();

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  /** The bound `host:port` (`[v6]:port`). */
  address: string;
  /** Stops serving. */
  close(): Promise<void>;
}

/**
 * Serves `registry` at `GET /metrics` on `listenAddress` (`host:port`,
 * `[v6]:port`); everything else is 404. Logs `serving metrics address=…`.
 */
export async function serveMetrics(
  listenAddress: string,
  registry: Registry = metrics,
): Promise<MetricsServer> {
  const addr = parseListenAddress(listenAddress);
  if (addr.kind !== "tcp") {
    throw new Error(
      `invalid --metrics-listen-address ${JSON.stringify(listenAddress)}: use host:port`,
    );
  }
  const hostname = addr.host.replace(/^\[(.*)\]$/, "$1");
  const { promise: listening, resolve } = Promise.withResolvers<Deno.NetAddr>();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port: addr.port,
      onListen: (a) => resolve(a),
    }, (req) => {
      const path = new URL(req.url).pathname;
      if (path !== "/metrics") return new Response("not found\n", { status: 404 });
      if (req.method !== "GET" && req.method !== "HEAD") {
        return new Response("method not allowed\n", { status: 405 });
      }
      return new Response(req.method === "HEAD" ? null : registry.render(), {
        headers: { "content-type": METRICS_CONTENT_TYPE },
      });
    });
  } catch (err) {
    throw new Error(`cannot listen on ${listenAddress} for metrics: ${(err as Error).message}`);
  }
  const bound = await listening;
  const address = bound.hostname.includes(":")
    ? `[${bound.hostname}]:${bound.port}`
    : `${bound.hostname}:${bound.port}`;
  log.info("serving metrics", { address });
  return { address, close: () => server.shutdown() };
}
